# Included by the cmake -P test scripts. Like tests/models.hpp for GoogleTest: a missing model
# fails the test under CI (CI set and not "false") and skips it elsewhere, printing "SKIPPED: "
# for ctest's SKIP_REGULAR_EXPRESSION. A macro, so that return() ends the including script.
macro(kvlm_skip_or_fail what)
  if(DEFINED ENV{CI} AND NOT "$ENV{CI}" STREQUAL "" AND NOT "$ENV{CI}" STREQUAL "false")
    message(FATAL_ERROR "${what} (under CI a missing model is a failure)")
  endif()
  message("*** SKIPPED: ${what}")
  return()
endmacro()
