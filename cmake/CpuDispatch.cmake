# Per-file ISA flags: sources named *_avx512.cpp are compiled for AVX-512 (+BF16), *_avx512vnni.cpp
# for that plus AVX512-VNNI (kept apart so that no other AVX-512 unit can pick up VNNI
# instructions and fault on AVX-512 CPUs without it), *_avx2.cpp for
# AVX2/FMA/F16C, everything else for baseline x86-64. Code in the wide units is only entered
# after cpu_features() says the CPU (and OS) support it.
include_guard(GLOBAL)

set(ATTN4J_AVX512_FLAGS -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2)
set(ATTN4J_AVX512VNNI_FLAGS ${ATTN4J_AVX512_FLAGS} -mavx512vnni)
set(ATTN4J_AVX2_FLAGS -mavx2 -mfma -mf16c)

# attn4j_cpu_dispatch(<source>...): sets COMPILE_OPTIONS on the ISA-suffixed sources; records the
# ISA paths compiled in ATTN4J_ISA_PATHS (parent scope) for the build info.
function(attn4j_cpu_dispatch)
  set(paths "baseline")
  foreach(src IN LISTS ARGN)
    get_filename_component(name "${src}" NAME_WE)
    if(name MATCHES "_avx512vnni$")
      set_source_files_properties("${src}" PROPERTIES COMPILE_OPTIONS "${ATTN4J_AVX512VNNI_FLAGS}")
      list(APPEND paths "avx512vnni")
    elseif(name MATCHES "_avx512$")
      set_source_files_properties("${src}" PROPERTIES COMPILE_OPTIONS "${ATTN4J_AVX512_FLAGS}")
      list(APPEND paths "avx512")
    elseif(name MATCHES "_avx2$")
      set_source_files_properties("${src}" PROPERTIES COMPILE_OPTIONS "${ATTN4J_AVX2_FLAGS}")
      list(APPEND paths "avx2")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES paths)
  string(REPLACE ";" "," paths "${paths}")
  set(ATTN4J_ISA_PATHS "${paths}" PARENT_SCOPE)
endfunction()
