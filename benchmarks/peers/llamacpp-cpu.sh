#!/usr/bin/env bash
# Peer benchmark: llama.cpp / ggml CPU flash attention (GGML_OP_FLASH_ATTN_EXT), measured with
# ggml's own tests/test-backend-ops in "perf" mode, on the shapes attn4j's CPU benchmarks use:
#
#   head_dim 128 (hsk = hsv = 128), 8 KV heads, GQA ratio 4 -> 32 query heads, mask on,
#   decode : q_len 1,   kv_len 16384 and 65536, mask all-visible
#   prefill: q_len 512, kv_len 4096, causal mask, bottom-right aligned
#            (query i of n sees keys j <= kv_len - q_len + i)
#   KV types: f16, bf16, q8_0, q4_0 (types the CPU backend does not support are recorded as such)
#
# Nothing of ggml lives in this repository. The stock test-backend-ops has neither these shapes
# nor a thread-count option, so it is built out of tree from a ggml checkout with a small patch
# (kept outside the repository, default /work/tools/ggml-attn4j-shapes.patch) that
#   * adds perf cases tagged "a4j_mask=none|causal" (selected here with -p 'a4j_mask='), with
#     deterministic masks instead of the stock random -inf blocks,
#   * reads the thread count from GGML_TEST_N_THREADS (stock: std::thread::hardware_concurrency()),
#   * reads optional shape / type lists from GGML_A4J_FA_SHAPES ("nb:kv[:c],...") and
#     GGML_A4J_FA_TYPES ("f16,bf16,q8_0,q4_0").
#
# Usage:
#   benchmarks/peers/llamacpp-cpu.sh [--build [SRC_DIR]] [--no-run]
#
#   --build [SRC_DIR]  configure and build test-backend-ops (CPU only, Release, -march=native)
#                      from an existing ggml source tree (default $GGML_SRC); fetches nothing.
#                      Applies $GGML_PATCH to it first unless it is already applied.
#   --no-run           only build.
#
# Environment:
#   GGML_BUILD  build dir holding bin/test-backend-ops   (default /work/tools/ggml-build)
#   GGML_SRC    ggml source tree for --build              (default /work/tools/ggml-src)
#   GGML_PATCH  patch applied by --build                  (default /work/tools/ggml-attn4j-shapes.patch)
#   JOBS        parallel compile jobs for --build         (default 2)
#   THREADS     CPU threads for the measurement           (default 2)
#   TYPES       KV types                                  (default f16,bf16,q8_0,q4_0)
#   SHAPES      q_len:kv_len[:c] list, c = causal         (default 1:16384,1:65536,512:4096:c)
#   REPEATS     whole perf passes; time_us is the median  (default 1)
#   OUT         result JSON          (default <repo>/benchmarks/results/llamacpp-cpu.json)
#
# test-backend-ops perf runs each case back to back (the op repeated in one graph, at least 1 s in
# total, after one warm-up) on the same tensors, so K/V stay as warm in cache as they can: with a
# large L3 the smaller cases may be served from L3 rather than DRAM. It prints us/run and, because
# the op has a FLOP count, FLOPS from ggml's dense count 2*q_heads*q_len*(hsk+hsv)*kv_len. This
# script derives the K/V bandwidth and the causal (visible-key) FLOP rate from us/run itself.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

GGML_BUILD="${GGML_BUILD:-/work/tools/ggml-build}"
GGML_SRC="${GGML_SRC:-/work/tools/ggml-src}"
GGML_PATCH="${GGML_PATCH:-/work/tools/ggml-attn4j-shapes.patch}"
JOBS="${JOBS:-2}"
THREADS="${THREADS:-2}"
TYPES="${TYPES:-f16,bf16,q8_0,q4_0}"
SHAPES="${SHAPES:-1:16384,1:65536,512:4096:c}"
REPEATS="${REPEATS:-1}"
OUT="${OUT:-$REPO_ROOT/benchmarks/results/llamacpp-cpu.json}"

do_build=0
do_run=1
while [ $# -gt 0 ]; do
    case "$1" in
        --build)
            do_build=1
            if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then GGML_SRC="$2"; shift; fi ;;
        --no-run) do_run=0 ;;
        -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

case "$(cd "$GGML_BUILD" 2>/dev/null && pwd || echo "$GGML_BUILD")/" in
    "$REPO_ROOT"/*) echo "GGML_BUILD must be outside the repository ($REPO_ROOT)" >&2; exit 2 ;;
esac

ggml_commit() {
    # The source tree is usually a 'git archive' extract (no .git): --build leaves the commit in
    # $GGML_SRC/GGML_COMMIT if present, else asks git; the build dir gets a copy.
    local src="$1"
    if [ -f "$src/GGML_COMMIT" ]; then cat "$src/GGML_COMMIT"
    elif git -C "$src" rev-parse HEAD 2>/dev/null; then :
    else echo unknown; fi
}

if [ "$do_build" = 1 ]; then
    [ -f "$GGML_SRC/tests/test-backend-ops.cpp" ] || { echo "not a ggml source tree: $GGML_SRC" >&2; exit 2; }
    case "$(cd "$GGML_SRC" && pwd)/" in
        "$REPO_ROOT"/*) echo "GGML_SRC must be outside the repository ($REPO_ROOT)" >&2; exit 2 ;;
    esac
    if grep -q 'a4j_mask' "$GGML_SRC/tests/test-backend-ops.cpp"; then
        echo "patch already applied in $GGML_SRC"
    else
        [ -f "$GGML_PATCH" ] || { echo "patch not found: $GGML_PATCH" >&2; exit 2; }
        (cd "$GGML_SRC" && patch -p1 --forward < "$GGML_PATCH")
    fi
    cmake -S "$GGML_SRC" -B "$GGML_BUILD" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CPU=ON -DGGML_OPENMP=ON \
        -DGGML_BUILD_TESTS=ON -DGGML_BUILD_EXAMPLES=OFF
    nice -n 10 cmake --build "$GGML_BUILD" --target test-backend-ops -j "$JOBS"
    ggml_commit "$GGML_SRC" > "$GGML_BUILD/GGML_COMMIT"
    if [ -f "$GGML_PATCH" ]; then sha256sum "$GGML_PATCH" | cut -d' ' -f1 > "$GGML_BUILD/GGML_PATCH_SHA256"; fi
fi

[ "$do_run" = 1 ] || exit 0

BIN="$GGML_BUILD/bin/test-backend-ops"
[ -x "$BIN" ] || { echo "no $BIN: build it first (see --build)" >&2; exit 2; }

if [ -f "$GGML_BUILD/GGML_COMMIT" ]; then COMMIT="$(cat "$GGML_BUILD/GGML_COMMIT")"; else COMMIT="$(ggml_commit "$GGML_SRC")"; fi
PATCH_SHA="$(cat "$GGML_BUILD/GGML_PATCH_SHA256" 2>/dev/null || { [ -f "$GGML_PATCH" ] && sha256sum "$GGML_PATCH" | cut -d' ' -f1; } || echo unknown)"

mkdir -p "$(dirname "$OUT")"
RAW="${OUT%.json}.raw.txt"
: > "$RAW"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$REPEATS"); do
    echo "=== pass $r/$REPEATS" >> "$RAW"
    GGML_TEST_N_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" \
    GGML_A4J_FA_TYPES="$TYPES" GGML_A4J_FA_SHAPES="$SHAPES" \
        "$BIN" perf -o FLASH_ATTN_EXT -b CPU -p 'a4j_mask=' 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | tee -a "$RAW"
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

grep -q "attn4j: n_threads = $THREADS" "$RAW" || {
    echo "test-backend-ops did not report 'attn4j: n_threads = $THREADS': is it built with the patch?" >&2; exit 1; }

RAW="$RAW" OUT="$OUT" COMMIT="$COMMIT" PATCH_SHA="$PATCH_SHA" THREADS="$THREADS" REPEATS="$REPEATS" \
LOAD_BEFORE="$LOAD_BEFORE" LOAD_AFTER="$LOAD_AFTER" BIN="$BIN" python3 - <<'PY'
import json, os, re, statistics, datetime, platform

raw = open(os.environ["RAW"]).read().splitlines()
cpu_model = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break

# bytes per K/V element, block formats included (q8_0: 34 B / 32, q4_0: 18 B / 32)
BPE = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
       "q8_1": 36 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}
UNIT = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}

line_re = re.compile(r"^\s*FLASH_ATTN_EXT\((?P<params>[^)]*a4j_mask=(?P<mask>\w+))\):\s*(?P<rest>.*)$")
perf_re = re.compile(r"(?P<runs>\d+) runs -\s*(?P<us>[0-9.]+) us/run -\s*(?P<fr>[0-9.]+) (?P<fru>[kMGT])FLOP/run -\s*(?P<fs>[0-9.]+) (?P<fsu>[kMGT])FLOPS")

cases = {}
for line in raw:
    m = line_re.match(line)
    if not m:
        continue
    p = dict(kv.split("=", 1) for kv in re.findall(r"(\w+=(?:\[[^\]]*\]|[^,]*))", m.group("params")))
    hs = int(p["hsk"]); kvh = int(p["nh"]); nr = int(p["nr23"].strip("[]").split(",")[0])
    kv_len = int(p["kv"]); q_len = int(p["nb"]); kv_type = p["type_K"]
    key = (kv_type, q_len, kv_len, m.group("mask"))
    c = cases.setdefault(key, {
        "kind": "decode" if q_len == 1 else "prefill",
        "kv_type": kv_type, "q_heads": kvh * nr, "kv_heads": kvh, "head_dim": hs,
        "kv_len": kv_len, "q_len": q_len,
        "mask": "causal_bottom_right" if m.group("mask") == "causal" else "all_visible",
        "supported": True, "samples_us": [], "ggml_runs": [], "ggml_printed_flops": [],
        "ggml_params": m.group("params"),
    })
    rest = m.group("rest")
    if "not supported" in rest:
        c["supported"] = False
        continue
    pm = perf_re.search(rest)
    if not pm:
        c.setdefault("unparsed", []).append(rest)
        continue
    c["samples_us"].append(float(pm.group("us")))
    c["ggml_runs"].append(int(pm.group("runs")))
    c["ggml_printed_flops"].append(float(pm.group("fs")) * UNIT[pm.group("fsu")])

out_cases = []
for c in cases.values():
    if c["supported"] and c["samples_us"]:
        t = statistics.median(c["samples_us"])
        c["time_us"] = t
        c["time_us_min"] = min(c["samples_us"])
        H, D, n, L = c["q_heads"], c["head_dim"], c["q_len"], c["kv_len"]
        dense_pairs = n * L
        if c["mask"] == "causal_bottom_right":
            # query i (0-based) sees keys 0 .. L-n+i
            vis_pairs = sum(max(0, min(L, L - n + i + 1)) for i in range(n))
        else:
            vis_pairs = dense_pairs
        c["flops_dense"] = 4 * n * L * D * H
        c["flops_visible"] = 4 * vis_pairs * D * H
        c["kv_visible_pairs"] = vis_pairs
        c["gflops_dense"] = c["flops_dense"] / (t * 1e-6) / 1e9
        c["gflops"] = c["flops_visible"] / (t * 1e-6) / 1e9
        bpe = BPE.get(c["kv_type"])
        if bpe is not None:
            c["kv_bytes"] = int(round(2 * L * c["kv_heads"] * D * bpe))
            c["kv_gbps"] = c["kv_bytes"] / (t * 1e-6) / 1e9
        if c["kind"] == "prefill":
            c.pop("kv_gbps", None)  # a streaming-bandwidth figure is not meaningful for prefill
        c["ggml_printed_gflops_dense"] = statistics.median(c["ggml_printed_flops"]) / 1e9
    c.pop("ggml_printed_flops")
    out_cases.append(c)

order = {"decode": 0, "prefill": 1}
tord = {"f16": 0, "bf16": 1, "q8_0": 2, "q4_0": 3}
out_cases.sort(key=lambda c: (order[c["kind"]], tord.get(c["kv_type"], 9), c["kv_len"], c["q_len"]))

doc = {
    "peer": "llama.cpp/ggml",
    "op": "GGML_OP_FLASH_ATTN_EXT (CPU backend)",
    "tool": "tests/test-backend-ops perf -o FLASH_ATTN_EXT -b CPU -p a4j_mask= (patched, see benchmarks/peers/llamacpp-cpu.sh)",
    "ggml_commit": os.environ["COMMIT"],
    "patch_sha256": os.environ["PATCH_SHA"],
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "threads": int(os.environ["THREADS"]),
    "cpu_model": cpu_model,
    "host": {"nproc": os.cpu_count(), "kernel": platform.release(),
             "loadavg_before": os.environ["LOAD_BEFORE"], "loadavg_after": os.environ["LOAD_AFTER"]},
    "repeats": int(os.environ["REPEATS"]),
    "notes": [
        "time_us: median over passes of test-backend-ops' us/run (each pass: one warm-up, then the op "
        "repeated back to back on the same tensors for >= 1 s; K/V can stay cache-resident).",
        "kv_gbps (decode): K+V bytes / time, K+V bytes = 2*kv_len*kv_heads*head_dim*bytes_per_elem "
        "(q8_0 34/32, q4_0 18/32 bytes per element), GB = 1e9 bytes.",
        "gflops: 4*head_dim*q_heads*kv_visible_pairs / time, kv_visible_pairs = sum over queries of unmasked "
        "keys; causal bottom-right: q_len*(kv_len-q_len) + q_len*(q_len+1)/2. gflops_dense uses "
        "4*q_len*kv_len*head_dim*q_heads (= ggml's own count, printed as ggml_printed_gflops_dense).",
        "Q is f32, output f32, precision GGML_PREC_F32, K/V are views of a 2x larger cache tensor (kv_view=1).",
    ],
    "cases": out_cases,
}
with open(os.environ["OUT"], "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")

print(f"\nwrote {os.environ['OUT']}")
print(f"{'kind':8} {'kv_type':7} {'q_len':>5} {'kv_len':>6} {'time_us':>11} {'kv_GB/s':>8} {'GFLOP/s':>8} {'dense':>8}")
for c in out_cases:
    if not c.get("time_us"):
        print(f"{c['kind']:8} {c['kv_type']:7} {c['q_len']:5} {c['kv_len']:6}  not supported")
        continue
    gb = f"{c['kv_gbps']:8.2f}" if "kv_gbps" in c else f"{'-':>8}"
    print(f"{c['kind']:8} {c['kv_type']:7} {c['q_len']:5} {c['kv_len']:6} {c['time_us']:11.1f} {gb} {c['gflops']:8.2f} {c['gflops_dense']:8.2f}")
PY
