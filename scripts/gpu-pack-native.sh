#!/usr/bin/env bash
# Packs the native GPU tests and benchmarks of a CUDA build into .device/native/ (git-ignored),
# for scripts/gpu-session.sh on a GPU machine that has the CUDA driver but no oneDNN or OpenMP
# runtime: bin/ holds every test_* and bench_* executable, lib/ the shared libraries they need
# that are not part of glibc/libstdc++ (resolved with ldd here).
# Usage: scripts/gpu-pack-native.sh BUILD_DIR [OUT_DIR]   (BUILD_DIR: a CMake build with CUDA)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:?usage: gpu-pack-native.sh BUILD_DIR [OUT_DIR]}"
OUT="${2:-$ROOT/.device/native}"
if ! ls "$BUILD"/tests/test_cuda_* >/dev/null 2>&1; then
    echo "error: $BUILD has no CUDA tests (configure with nvcc on PATH, -DATTN4J_CUDA=ON)" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib"
for f in "$BUILD"/tests/test_* "$BUILD"/tests/bench_*; do
    [[ -x "$f" && -f "$f" ]] && cp "$f" "$OUT/bin/"
done
# Runtime libraries beyond the C/C++ runtime every Linux machine has.
ldd "$OUT"/bin/* 2>/dev/null | awk '/=> \//{print $3}' | sort -u |
    grep -v -E '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" "$OUT/lib/"; done
du -sh "$OUT/bin" "$OUT/lib" | sed 's/^/  /'
