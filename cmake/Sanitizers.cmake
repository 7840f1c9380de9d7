# ATTN4J_SANITIZE=address|undefined|address,undefined (for ctest builds; empty = off).
include_guard(GLOBAL)

set(ATTN4J_SANITIZE "" CACHE STRING "Sanitizers for ctest builds: address, undefined, or both (comma)")

add_library(attn4j_sanitize INTERFACE)
if(ATTN4J_SANITIZE)
  string(REPLACE "," ";" _sans "${ATTN4J_SANITIZE}")
  foreach(s IN LISTS _sans)
    if(NOT s MATCHES "^(address|undefined)$")
      message(FATAL_ERROR "ATTN4J_SANITIZE: unknown sanitizer '${s}' (use address, undefined)")
    endif()
  endforeach()
  string(REPLACE ";" "," _sanflag "${_sans}")
  target_compile_options(attn4j_sanitize INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${_sanflag} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(attn4j_sanitize INTERFACE -fsanitize=${_sanflag})
  message(STATUS "attn4j: sanitizers ${_sanflag}")
endif()
