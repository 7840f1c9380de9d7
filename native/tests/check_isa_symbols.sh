#!/usr/bin/env bash
# ctest: no object compiled with ISA flags (*_avx2.cpp, *_avx512*.cpp) may define a weak symbol.
# Weak symbols (inline functions, template instantiations, std:: helpers not inlined) are merged
# across objects by the linker, which keeps ONE copy: an AVX-512 copy of a helper could then run on
# the AVX2 or scalar path and fault on CPUs without AVX-512. Helpers shared by ISA units live in
# anonymous namespaces for that reason; this check keeps it true.
# Usage: check_isa_symbols.sh <nm> <object>[;<object>...]...
set -euo pipefail
nm_bin="$1"
shift
status=0
checked=0
# ctest passes the object list as one ';'-separated argument: split it.
IFS=';' read -r -a objects <<< "$*"
for obj in "${objects[@]}"; do
    case "$(basename "$obj")" in
        *_avx2.cpp.o | *_avx512*.cpp.o) ;;
        *) continue ;;
    esac
    checked=$((checked + 1))
    weak="$("$nm_bin" -C --defined-only "$obj" | awk '$2 ~ /^[WVu]$/' || true)"
    if [[ -n "$weak" ]]; then
        echo "FAIL: $(basename "$obj") defines weak symbols (put the code in an anonymous namespace):"
        echo "$weak"
        status=1
    fi
done
if [[ $checked -eq 0 ]]; then
    echo "FAIL: no ISA objects among the arguments"
    exit 1
fi
echo "checked $checked ISA objects"
exit $status
