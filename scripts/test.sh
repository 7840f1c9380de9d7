#!/usr/bin/env bash
# The test command: installs the build dependencies (Debian), selects JDK 25, then builds
# everything (native library incl. the CUDA backend when nvcc is present) and runs every test:
# ctest for the C++ kernels and JUnit through the Java API. GPU tests skip, saying why, without
# a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
mvn -B -ntp verify "$@"
