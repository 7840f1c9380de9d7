# oneDNN (Debian: libdnnl-dev). Defines the imported target attn4j::dnnl and ATTN4J_DNNL_LIBRARY
# (the shared library file, for installing it next to libattn4j.so).
include_guard(GLOBAL)

find_package(dnnl CONFIG QUIET)
if(TARGET DNNL::dnnl)
  add_library(attn4j::dnnl INTERFACE IMPORTED)
  target_link_libraries(attn4j::dnnl INTERFACE DNNL::dnnl)
  get_target_property(_dnnl_loc DNNL::dnnl IMPORTED_LOCATION_RELWITHDEBINFO)
  if(NOT _dnnl_loc)
    get_target_property(_dnnl_loc DNNL::dnnl IMPORTED_LOCATION_RELEASE)
  endif()
  if(NOT _dnnl_loc)
    get_target_property(_dnnl_loc DNNL::dnnl LOCATION)
  endif()
  set(ATTN4J_DNNL_LIBRARY "${_dnnl_loc}")
  message(STATUS "attn4j: oneDNN ${dnnl_VERSION} (config) ${_dnnl_loc}")
else()
  find_path(ATTN4J_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.hpp)
  find_library(ATTN4J_DNNL_LIBRARY NAMES dnnl)
  if(NOT ATTN4J_DNNL_INCLUDE_DIR OR NOT ATTN4J_DNNL_LIBRARY)
    message(FATAL_ERROR "attn4j: oneDNN not found (need <oneapi/dnnl/dnnl.hpp> and libdnnl; "
                        "Debian/Ubuntu: apt-get install libdnnl-dev, or set CMAKE_PREFIX_PATH)")
  endif()
  add_library(attn4j::dnnl UNKNOWN IMPORTED)
  set_target_properties(attn4j::dnnl PROPERTIES
    IMPORTED_LOCATION "${ATTN4J_DNNL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${ATTN4J_DNNL_INCLUDE_DIR}")
  message(STATUS "attn4j: oneDNN (find_library) ${ATTN4J_DNNL_LIBRARY}")
endif()
