# ATTN4J_CUDA=AUTO|ON|OFF. AUTO enables CUDA when a CUDA compiler is found (check_language), ON
# requires it. Archs default to 80;90 (A100, H100). The CUDA runtime is linked statically, so
# libattn4j.so only needs the driver (libcuda.so.1, dlopen'ed by cudart) at run time; without a
# driver or GPU the device count is 0.
include_guard(GLOBAL)

set(ATTN4J_CUDA "AUTO" CACHE STRING "Build the CUDA backend: AUTO (if nvcc is found), ON, OFF")
set_property(CACHE ATTN4J_CUDA PROPERTY STRINGS AUTO ON OFF)

set(ATTN4J_HAVE_CUDA OFF)
string(TOUPPER "${ATTN4J_CUDA}" _attn4j_cuda)
if(_attn4j_cuda STREQUAL "ON" OR _attn4j_cuda STREQUAL "AUTO")
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "80;90")
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(ATTN4J_HAVE_CUDA ON)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
    message(STATUS "attn4j: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(_attn4j_cuda STREQUAL "ON")
    message(FATAL_ERROR "ATTN4J_CUDA=ON but no CUDA compiler found (put nvcc on PATH or set "
                        "CMAKE_CUDA_COMPILER)")
  else()
    message(STATUS "attn4j: CUDA off (no nvcc found)")
  endif()
elseif(_attn4j_cuda STREQUAL "OFF")
  message(STATUS "attn4j: CUDA off (ATTN4J_CUDA=OFF)")
else()
  message(FATAL_ERROR "ATTN4J_CUDA must be AUTO, ON or OFF (got '${ATTN4J_CUDA}')")
endif()
