#!/usr/bin/env bash
# Runs attn4j's JUnit suite with the JUnit Platform console launcher on a machine with no Java
# or Maven installed (a GPU test machine), from a folder made by scripts/gpu-pack.sh.
# Usage: gpu-junit.sh [DIR] [console launcher options]
#   DIR      the packed folder (default: .device/junit under the repository, or this script's
#            folder when it is run from inside a pack)
#   options  passed to the launcher's execute command, e.g. --details=summary or
#            --select-class=org.attn4j.tests.CudaDecodeTest (without a --select-... or --scan-...
#            option: every test class)
# Environment: ATTN4J_TEST_DEVICE=cuda:0 runs the device-aware tests (DecodeTest, PrefillTest, IsaTest's
# decode cases) there; JUNIT_REPORTS=dir for the XML reports (default DIR/reports);
# JAVA_OPTS for extra JVM flags; ATTN4J_LIBRARY_PATH=dir to load another build of the native
# library than the one inside the attn4j jar. Exit status: the launcher's (0 = all passed or skipped).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -gt 0 && -d "$1" ]]; then
    dir="$(cd "$1" && pwd)"
    shift
elif [[ -f "$here/jre.tar.gz" ]]; then
    dir="$here"
else
    dir="$(cd "$here/.." && pwd)/.device/junit"
fi
if [[ ! -f "$dir/jre.tar.gz" || ! -d "$dir/lib" ]]; then
    echo "error: $dir is not a folder made by scripts/gpu-pack.sh (no jre.tar.gz or lib/)" >&2
    exit 2
fi

# The runtime is unpacked outside the pack, which stays small enough to be carried again.
runtime="$(mktemp -d "${TMPDIR:-/tmp}/attn4j-junit.XXXXXX")"
trap 'rm -rf "$runtime"' EXIT
tar xzf "$dir/jre.tar.gz" -C "$runtime"
java="$runtime/jre/bin/java"

console="$(ls "$dir"/lib/junit-platform-console-standalone-*.jar | head -1)"
classpath=""
for j in "$dir"/lib/*.jar; do
    [[ "$j" == "$console" ]] || classpath="${classpath:+$classpath:}$j"
done
reports="${JUNIT_REPORTS:-$dir/reports}"
options=("$@")
# Every test class unless a selector (--select-..., --scan-...) is given.
[[ " $* " == *" --select"* || " $* " == *" --scan"* ]] || options+=(--select-package=org.attn4j.tests)

echo "java: $("$java" -version 2>&1 | head -1); device: ${ATTN4J_TEST_DEVICE:-cpu}; reports: $reports"
# The flags of the Maven run (tests/pom.xml): native access for the class path, a larger stack.
"$java" --enable-native-access=ALL-UNNAMED -Xss4m ${JAVA_OPTS:-} \
    ${ATTN4J_LIBRARY_PATH:+-Dattn4j.library.path="$ATTN4J_LIBRARY_PATH"} \
    -Dattn4j.cache.dir="$runtime/.attn4j-cache" \
    -Dattn4j.test.device="${ATTN4J_TEST_DEVICE:-cpu}" \
    -jar "$console" execute \
    --class-path="$classpath" \
    --reports-dir="$reports" \
    --details=tree --disable-banner \
    "${options[@]}"
