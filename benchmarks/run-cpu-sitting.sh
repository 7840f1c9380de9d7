#!/usr/bin/env bash
# One sitting of the CPU comparison, in order, on a quiet machine: the llama.cpp peer (when its
# out-of-tree build exists, see benchmarks/peers/llamacpp-cpu.sh), `attn4j bench` (KV rotated
# through DRAM), the same decode with KV cache-resident (like ggml's harness), and the JMH
# benchmarks (call overhead with -prof gc, decode, prefill). Results: benchmarks/results/cpu/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
OUT="${OUT:-benchmarks/results/cpu}"
THREADS="${THREADS:-2}"
mkdir -p "$OUT"

mvn -B -ntp -q -DskipTests -pl cli,benchmarks -am package

if [[ -x "${GGML_BUILD:-/work/tools/ggml-build}/bin/test-backend-ops" ]]; then
    REPEATS="${REPEATS:-3}" THREADS="$THREADS" benchmarks/peers/llamacpp-cpu.sh
else
    echo "run-cpu-sitting: no llama.cpp build; comparing against the committed llamacpp-cpu.json" >&2
fi

./attn4j bench --threads "$THREADS" --out "$OUT" --no-progress
./attn4j bench --threads "$THREADS" --only 'decode' --max-rotation-bytes 0 --out "$OUT/cache-resident" --no-progress

JMH=(java -jar benchmarks/target/benchmarks.jar -f 1 -wi 3 -i 5)
"${JMH[@]}" CallOverheadBench -prof gc -rf json -rff "$OUT/jmh-call-overhead.json" | tail -25
"${JMH[@]}" DecodeBench -p threads="$THREADS" -rf json -rff "$OUT/jmh-decode.json" | tail -8
"${JMH[@]}" PrefillBench -p threads="$THREADS" -rf json -rff "$OUT/jmh-prefill.json" | tail -6
