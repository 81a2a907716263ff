# FindSentencePiece: defines the imported target SentencePiece::SentencePiece.
# Debian's libsentencepiece-dev ships no CMake config, only a pkg-config file, so this module
# asks pkg-config for hints, then searches for the header and library itself.

if(TARGET SentencePiece::SentencePiece)
  set(SentencePiece_FOUND TRUE)
  return()
endif()

find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_SentencePiece QUIET sentencepiece)
endif()

find_path(SentencePiece_INCLUDE_DIR sentencepiece_processor.h
  HINTS ${PC_SentencePiece_INCLUDEDIR} ${PC_SentencePiece_INCLUDE_DIRS})
find_library(SentencePiece_LIBRARY NAMES sentencepiece
  HINTS ${PC_SentencePiece_LIBDIR} ${PC_SentencePiece_LIBRARY_DIRS})

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(SentencePiece
  REQUIRED_VARS SentencePiece_LIBRARY SentencePiece_INCLUDE_DIR
  VERSION_VAR PC_SentencePiece_VERSION)

if(SentencePiece_FOUND)
  add_library(SentencePiece::SentencePiece UNKNOWN IMPORTED)
  set_target_properties(SentencePiece::SentencePiece PROPERTIES
    IMPORTED_LOCATION "${SentencePiece_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${SentencePiece_INCLUDE_DIR}")
endif()
mark_as_advanced(SentencePiece_INCLUDE_DIR SentencePiece_LIBRARY)
