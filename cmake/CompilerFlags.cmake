# Compiler flags shared by every attn4j target: C++17, optimised, warnings on, symbols hidden
# (only the attn4j_* C entry points are exported), ccache when available.
include_guard(GLOBAL)

if(NOT CMAKE_CXX_STANDARD)
  set(CMAKE_CXX_STANDARD 17)
endif()
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set(CMAKE_CXX_VISIBILITY_PRESET hidden)
set(CMAKE_VISIBILITY_INLINES_HIDDEN ON)

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()

find_program(ATTN4J_CCACHE ccache)
if(ATTN4J_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER "${ATTN4J_CCACHE}")
  set(CMAKE_CUDA_COMPILER_LAUNCHER "${ATTN4J_CCACHE}")
  message(STATUS "attn4j: ccache ${ATTN4J_CCACHE}")
endif()

# Flags for the C++ sources of attn4j (not applied to CUDA sources).
add_library(attn4j_cxx_flags INTERFACE)
target_compile_options(attn4j_cxx_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -fno-semantic-interposition
                            -fno-plt>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CONFIG:Release>>:-O3>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CONFIG:RelWithDebInfo>>:-O3>)
