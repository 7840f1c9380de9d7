#!/usr/bin/env bash
# Packs what scripts/gpu-junit.sh needs to run the JUnit suite on a machine with no Java or Maven
# (a GPU test machine) into one folder, by default .device/junit/ (git-ignored; carried to the
# device machine as it is):
#   jre.tar.gz    a jlink'ed runtime (../shared/scripts/portable-jre.sh, or PORTABLE_JRE=script)
#   lib/          the attn4j jar (bindings compiled in, the native library and its dependencies
#                 under META-INF/native/), the JUnit console launcher, the test classes as a jar
#   gpu-junit.sh  the runner
# and, when cli/target/attn4j-cli.jar is built, a second folder OUT_DIR-cli (default .device/junit-cli)
# with the attn4j command for `attn4j bench --device cuda:0` there (a device call carries at most
# 64 MiB, so the two packs travel in separate calls):
#   jre.tar.gz    the same runtime plus java.sql (Jackson), without java.desktop: run with --no-png
#   attn4j-cli.jar
#   there: d=$(mktemp -d) && tar xzf DIR-cli/jre.tar.gz -C "$d" && "$d/jre/bin/java" -jar DIR-cli/attn4j-cli.jar bench --device cuda:0 --no-png
# The native library travels only inside the attn4j jar (it is most of the pack's size); to test
# another build of it, set ATTN4J_LIBRARY_PATH for gpu-junit.sh.
# Build first: mvn -B -q install -DskipTests && mvn -B -q test-compile -pl tests
# Usage: scripts/gpu-pack.sh [OUT_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.device/junit}"
source "$ROOT/scripts/env.sh"
PORTABLE_JRE="${PORTABLE_JRE:-$ROOT/../shared/scripts/portable-jre.sh}"
JUNIT_CONSOLE_VERSION="${JUNIT_CONSOLE_VERSION:-1.11.4}" # the platform of junit-jupiter 5.11.4 (pom.xml)

version="$(sed -n 's:.*<version>\(.*\)</version>.*:\1:p' "$ROOT/pom.xml" | head -1)"
api_jar="$ROOT/java-api/target/attn4j-$version.jar"
test_classes="$ROOT/tests/target/test-classes"
for f in "$api_jar" "$test_classes"; do
    if [[ ! -e "$f" ]]; then
        echo "error: $f is missing; build first: mvn -B -q install -DskipTests && mvn -B -q test-compile -pl tests" >&2
        exit 1
    fi
done
if [[ ! -x "$PORTABLE_JRE" ]]; then
    echo "error: no portable-jre script at $PORTABLE_JRE (set PORTABLE_JRE=/path/to/portable-jre.sh)" >&2
    exit 1
fi

m2="${MAVEN_REPO:-$HOME/.m2/repository}"
console_jar="$m2/org/junit/platform/junit-platform-console-standalone/$JUNIT_CONSOLE_VERSION/junit-platform-console-standalone-$JUNIT_CONSOLE_VERSION.jar"
if [[ ! -f "$console_jar" ]]; then
    mvn -B -q dependency:get -Dartifact="org.junit.platform:junit-platform-console-standalone:$JUNIT_CONSOLE_VERSION"
fi

rm -rf "$OUT"
mkdir -p "$OUT/lib"
# jdk.management: the allocation test reads per-thread allocated bytes (com.sun.management);
# java.xml: the launcher writes XML reports; jdk.zipfs: it scans the tests jar for classes.
"$PORTABLE_JRE" "$OUT/jre.tar.gz" jdk.management,java.xml,jdk.zipfs
# junit-jupiter, the tests' only other dependency, is inside the console launcher.
cp "$api_jar" "$console_jar" "$OUT/lib/"
jar --create --file "$OUT/lib/attn4j-tests.jar" -C "$test_classes" .
cp "$ROOT/scripts/gpu-junit.sh" "$OUT/"
du -sh "$OUT"/* | sed 's/^/  /'
echo "packed $OUT; run there: gpu-junit.sh [DIR] [console launcher options, e.g. --select-class=...]"
# The CLI (one shaded jar with its own copy of the attn4j jar and native library) in its own pack.
cli_jar="$ROOT/cli/target/attn4j-cli.jar"
if [[ -f "$cli_jar" ]]; then
    rm -rf "$OUT-cli"
    mkdir -p "$OUT-cli"
    "$PORTABLE_JRE" "$OUT-cli/jre.tar.gz" java.sql
    cp "$cli_jar" "$OUT-cli/"
    du -sh "$OUT-cli"/* | sed 's/^/  /'
    rel="${OUT#"$ROOT"/}-cli"
    echo "CLI there, from the repository root (it finds benchmarks/peers/ there): d=\$(mktemp -d) &&" \
        "tar xzf $rel/jre.tar.gz -C \$d && \$d/jre/bin/java -jar $rel/attn4j-cli.jar bench --device cuda:0 --no-png --out DIR"
else
    echo "note: $cli_jar is not built (mvn -B -q install -DskipTests); no CLI pack" >&2
fi
