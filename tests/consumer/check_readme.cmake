# Checks that one of README.md's C++ examples (the ```cpp block between <!-- MARKER --> and
# <!-- /MARKER -->) is byte for byte MAIN_CPP, a file the consumer test builds and runs, so the
# README cannot drift from code that works.
# Run by ctest as `cmake -DREADME=... -DMARKER=... -DMAIN_CPP=... -DWORK_DIR=... -P check_readme.cmake`.
cmake_minimum_required(VERSION 3.16)

set(open_marker "<!-- ${MARKER} -->")
set(close_marker "<!-- /${MARKER} -->")
file(READ "${README}" readme)
string(FIND "${readme}" "${open_marker}" begin)
string(FIND "${readme}" "${close_marker}" end)
if(begin EQUAL -1 OR end EQUAL -1 OR end LESS begin)
  message(FATAL_ERROR "${README}: no ${open_marker} ... ${close_marker} block")
endif()
string(LENGTH "${open_marker}" length)
math(EXPR begin "${begin} + ${length}")
math(EXPR length "${end} - ${begin}")
string(SUBSTRING "${readme}" ${begin} ${length} block)
if(NOT block MATCHES "^[ \t\r\n]*```cpp\r?\n(.*\n)```[ \t\r\n]*$")
  message(FATAL_ERROR "${README}: the ${MARKER} block must hold exactly one ```cpp fence")
endif()
set(example "${CMAKE_MATCH_1}")

file(READ "${MAIN_CPP}" main_cpp)
if(NOT example STREQUAL main_cpp)
  file(MAKE_DIRECTORY "${WORK_DIR}")
  set(extracted "${WORK_DIR}/readme-${MARKER}.cpp")
  file(WRITE "${extracted}" "${example}")
  find_program(DIFF diff)
  if(DIFF)
    execute_process(COMMAND "${DIFF}" -u "${MAIN_CPP}" "${extracted}")
  endif()
  message(FATAL_ERROR "README.md's ${MARKER} block differs from ${MAIN_CPP} (diff above, "
                      "README's version in ${extracted}); make them the same")
endif()
message(STATUS "README.md's ${MARKER} block is ${MAIN_CPP}")
