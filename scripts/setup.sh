#!/usr/bin/env bash
# Installs what building attn4j needs on Debian/Ubuntu (apt): cmake, make, g++, libdnnl-dev (oneDNN)
# with ocl-icd-opencl-dev (only "recommended" by libdnnl-dev, but its CMake config requires it),
# maven. Idempotent: packages already installed are skipped, and when nothing is missing apt is not
# touched at all (no `apt-get update`). Runs apt through sudo only when not root; never prompts.
# The JDK 25 itself is expected to be there already (JAVA_HOME or /usr/lib/jvm/temurin-25-jdk-amd64).
set -euo pipefail

PACKAGES=(cmake make g++ libdnnl-dev ocl-icd-opencl-dev maven)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if (( ${#missing[@]} == 0 )); then
    echo "setup: build dependencies already installed (${PACKAGES[*]})."
else
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: missing ${missing[*]} and no apt-get here; install them with your package manager." >&2
        exit 1
    fi
    SUDO=()
    if [[ "$(id -u)" != "0" ]]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "setup: installing ${missing[*]} ..."
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The JDK is not installed here (its packaging differs between machines); say clearly if it is missing.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! ( source "$ROOT/scripts/env.sh" ) >/dev/null 2>&1; then
    echo "setup: warning: no JDK 25 found (set JAVA_HOME, or install e.g. temurin-25-jdk)." >&2
fi
