#!/usr/bin/env bash
# Regenerates the Panama FFM bindings of native/include/attn4j.h with jextract.
#
# Output: bindings/src/main/java/org/attn4j/bindings/*.java (committed: jextract is not on the
# package registries, so normal builds never run it). Run this after every change to attn4j.h
# and commit the result together with the header change.
#
# No --library option on purpose: the generated code then looks symbols up through
# SymbolLookup.loaderLookup() (falling back to the default native lookup), and our Java loader
# loads libattn4j itself with System.load before the first call.
#
# jextract: set JEXTRACT to its launcher, or put it on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEADER="native/include/attn4j.h"
PACKAGE="org.attn4j.bindings"
HEADER_CLASS="Attn4jNative"
OUT_ROOT="bindings/src/main/java"
OUT_PKG_DIR="$OUT_ROOT/${PACKAGE//.//}"

if [[ -n "${JEXTRACT:-}" ]]; then
    if [[ ! -x "$JEXTRACT" ]]; then
        echo "error: JEXTRACT=$JEXTRACT is not an executable file" >&2
        exit 2
    fi
    jextract_bin="$JEXTRACT"
elif jextract_bin="$(command -v jextract)"; then
    :
else
    cat >&2 <<'EOF'
error: jextract not found (set JEXTRACT=/path/to/jextract/bin/jextract or put it on PATH).

jextract is not on Maven Central or any other package registry. Get it either way:
  * prebuilt: download the archive for your platform from https://jdk.java.net/jextract ,
    unpack it and use <dir>/bin/jextract (it bundles its own runtime and libclang);
  * from source: https://github.com/openjdk/jextract (needs a JDK 22+ and LLVM/libclang;
    see its README: sh ./gradlew -Pjdk_home=<jdk> -Pllvm_home=<llvm> clean verify).
Keep it outside this repository; nothing of jextract belongs in the repo.
EOF
    exit 2
fi

cd "$ROOT"
if [[ ! -f "$HEADER" ]]; then
    echo "error: $HEADER not found under $ROOT" >&2
    exit 1
fi

echo "jextract: $jextract_bin"
"$jextract_bin" --version 2>&1 | sed 's/^/  /' || true

# Start from an empty package dir so symbols removed from the header disappear.
rm -rf "$OUT_PKG_DIR"
mkdir -p "$OUT_ROOT"

# Keep only attn4j's own symbols (not the glibc typedefs and macros <stdint.h> pulls in).
filter="$(mktemp)"
trap 'rm -f "$filter"' EXIT
"$jextract_bin" --dump-includes "$filter" "$HEADER" >/dev/null
grep -E '(attn4j|ATTN4J)' "$filter" > "$filter.kept" && mv "$filter.kept" "$filter"

"$jextract_bin" \
    "@$filter" \
    --target-package "$PACKAGE" \
    --header-class-name "$HEADER_CLASS" \
    --output "$OUT_ROOT" \
    "$HEADER"

shopt -s nullglob
files=("$OUT_PKG_DIR"/*.java)
if (( ${#files[@]} == 0 )); then
    echo "error: jextract produced no .java files in $OUT_PKG_DIR" >&2
    exit 1
fi

echo
echo "Generated ${#files[@]} file(s) in $OUT_PKG_DIR (package $PACKAGE):"
for f in "${files[@]}"; do
    printf '  %-40s %6d lines\n' "$(basename "$f")" "$(wc -l < "$f")"
done
macro_count=$(grep -hoE '^#define ATTN4J_[A-Z0-9_]+[[:space:]]+[0-9]' "$HEADER" | wc -l)
api_fns=$(grep -cE '^(attn4j_status|uint32_t|uint64_t|const char\*) attn4j_[a-z0-9_]+\(' "$HEADER" || true)
echo "Header: $HEADER ($api_fns functions, $macro_count ATTN4J_ macros)"
echo "Symbol lookup: $(grep -h -A2 'static final SymbolLookup SYMBOL_LOOKUP' "${files[@]}" | tr -s ' \n' ' ' | sed 's/^ //')"
echo
echo "Review with: git status $OUT_ROOT && git diff --stat $OUT_ROOT"
