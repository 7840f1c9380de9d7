#!/usr/bin/env bash
# The GPU part of a session, run on the GPU machine from the repository root over the carried
# packs (.device/native from scripts/gpu-pack-native.sh, .device/junit from scripts/gpu-pack.sh).
# Writes logs and results into OUT_DIR. Steps:
#   tests  every native test (the CUDA ones run, not skip), compute-sanitizer memcheck on the CUDA
#          tests and racecheck on the stream / merge tests, then the JUnit suite twice: on CPU and
#          with ATTN4J_TEST_DEVICE=cuda:0
#   bench  BF16 decode (bench_cuda_decode) with PyTorch SDPA on the same shapes in the same run
#          (benchmarks/peers/torch_sdpa_decode.py), then the quantized decode with diagnostics
#          (bench_cuda_quant_decode --diag 1: default vs per-kv-head kernel per format)
#   prefill CUDA prefill (bench_cuda_prefill) with PyTorch SDPA flash / cuDNN on the same shapes in
#          the same run (benchmarks/peers/torch_sdpa_prefill.py)
# Usage: scripts/gpu-session.sh tests|bench|prefill OUT_DIR
set -uo pipefail
step="${1:?usage: gpu-session.sh tests|bench|prefill OUT_DIR}"
out="${2:?usage: gpu-session.sh tests|bench|prefill OUT_DIR}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
native="$root/.device/native"
mkdir -p "$out"
export LD_LIBRARY_PATH="$native/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>&1
echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || cat "$root/.device/commit" 2>/dev/null)" >> "$out/device.txt"
status=0
run() {  # run NAME LOG CMD...: appends to LOG, records failures
    local name="$1" log="$2"
    shift 2
    echo "=== $name" >> "$log"
    local t0=$SECONDS
    if "$@" >> "$log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"; else echo "FAIL $name ($((SECONDS - t0)) s)"; status=1; fi
}
case "$step" in
tests)
    for t in "$native"/bin/test_*; do run "$(basename "$t")" "$out/native-tests.log" "$t"; done
    sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
    for t in "$native"/bin/test_cuda_*; do
        run "memcheck $(basename "$t")" "$out/sanitizer.log" "$sanitizer" --tool memcheck --error-exitcode 1 "$t"
    done
    for t in test_cuda_stream test_cuda_merge test_cuda_prefill; do
        [[ -x "$native/bin/$t" ]] && run "racecheck $t" "$out/sanitizer.log" "$sanitizer" --tool racecheck --error-exitcode 1 "$native/bin/$t"
    done
    if [[ -d "$root/.device/junit" ]]; then
        run "junit cpu" "$out/junit-cpu.log" env JUNIT_REPORTS="$out/junit-cpu" "$root/.device/junit/gpu-junit.sh" "$root/.device/junit"
        run "junit cuda:0" "$out/junit-cuda.log" env ATTN4J_TEST_DEVICE=cuda:0 JUNIT_REPORTS="$out/junit-cuda" \
            "$root/.device/junit/gpu-junit.sh" "$root/.device/junit"
        tail -15 "$out/junit-cpu.log" "$out/junit-cuda.log"
    fi
    ;;
bench)
    run "bench_cuda_decode" "$out/bench.log" "$native/bin/bench_cuda_decode" --json "$out/cuda-decode.json"
    run "torch sdpa" "$out/bench.log" python3 "$root/benchmarks/peers/torch_sdpa_decode.py" \
        --attn4j "$out/cuda-decode.json" --out-json "$out/cuda-decode-vs-torch.json" --out-md "$out/cuda-decode-vs-torch.md"
    run "bench_cuda_quant_decode" "$out/bench.log" "$native/bin/bench_cuda_quant_decode" --diag 1 --json "$out/cuda-quant-decode.json"
    ;;
prefill)
    run "bench_cuda_prefill" "$out/bench.log" "$native/bin/bench_cuda_prefill" --json "$out/cuda-prefill.json"
    run "torch sdpa prefill" "$out/bench.log" python3 "$root/benchmarks/peers/torch_sdpa_prefill.py" \
        --attn4j "$out/cuda-prefill.json" --out-json "$out/cuda-prefill-vs-torch.json" --out-md "$out/cuda-prefill-vs-torch.md"
    ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac
exit $status
