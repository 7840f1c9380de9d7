#!/usr/bin/env bash
# Compiles and runs the Kotlin and Scala consumers against the attn4j jar: plain Java methods and
# AutoCloseable types, used with Kotlin's `use` and Scala's `Using`. Fetches the two compilers
# from Maven Central into examples/target/lib; needs the jar (mvn -DskipTests -pl java-api -am package).
set -euo pipefail
cd "$(dirname "$0")"
source ../scripts/env.sh
JAR=../java-api/target/attn4j-0.1.0-SNAPSHOT.jar
[[ -f "$JAR" ]] || (cd .. && mvn -B -ntp -q -DskipTests -pl java-api -am package)
mkdir -p target
[[ -d target/lib ]] || mvn -B -ntp -q dependency:copy-dependencies -DoutputDirectory=target/lib
TOOLS=$(ls target/lib/*.jar | tr '\n' ':')
KSTD=$(ls target/lib/kotlin-stdlib-2*.jar)
SLIB=$(ls target/lib/scala-library-*.jar target/lib/scala3-library_3-*.jar | tr '\n' ':')
java -cp "$TOOLS" org.jetbrains.kotlin.cli.jvm.K2JVMCompiler -no-stdlib -cp "$JAR:$KSTD" -jvm-target 21 \
    kotlin/Example.kt -d target/kotlin 2>&1 | grep -v '^WARNING' || true
java --enable-native-access=ALL-UNNAMED -cp "$JAR:$KSTD:target/kotlin" ExampleKt
mkdir -p target/scala
java -cp "$TOOLS" dotty.tools.dotc.Main -classpath "$JAR:$SLIB" -d target/scala scala/Example.scala
java --enable-native-access=ALL-UNNAMED -cp "$JAR:$SLIB:target/scala" example
