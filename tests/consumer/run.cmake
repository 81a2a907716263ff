# The consumer test, run by ctest as `cmake -D... -P run.cmake`: builds tests/consumer against
# kvlm and runs its app with the models folder as argument.
#   -DMODE=find_package      installs kvlm from KVLM_BUILD_DIR into WORK_DIR/prefix and uses
#                            find_package(kvlm) with CMAKE_PREFIX_PATH pointing there only
#   -DMODE=add_subdirectory  uses add_subdirectory(KVLM_SOURCE_DIR)
# Also: WORK_DIR (wiped first), MODELS_DIR, GENERATOR, CXX_COMPILER, BUILD_TYPE.
cmake_minimum_required(VERSION 3.16)

foreach(var MODE KVLM_SOURCE_DIR KVLM_BUILD_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "consumer test: -D${var}=... is missing")
  endif()
endforeach()

function(run)
  string(REPLACE ";" " " command "${ARGN}")
  message(STATUS "consumer test: ${command}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test (${MODE}): this failed (${rc}): ${command}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(configure -S "${CMAKE_CURRENT_LIST_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}")
if(CXX_COMPILER)
  list(APPEND configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(BUILD_TYPE)
  list(APPEND configure "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()

if(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  run("${CMAKE_COMMAND}" --install "${KVLM_BUILD_DIR}" --prefix "${prefix}")
  run("${CMAKE_COMMAND}" ${configure} "-DCMAKE_PREFIX_PATH=${prefix}"
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
  # the package found must be the one just installed, not one elsewhere on the machine
  file(STRINGS "${WORK_DIR}/build/CMakeCache.txt" found REGEX "^kvlm_DIR:")
  string(REGEX REPLACE "^kvlm_DIR:[A-Z]*=" "" found "${found}")
  get_filename_component(found "${found}" REALPATH)
  get_filename_component(prefix "${prefix}" REALPATH)
  string(FIND "${found}" "${prefix}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "consumer test: found kvlm in ${found}, not in ${prefix}")
  endif()
elseif(MODE STREQUAL "add_subdirectory")
  run("${CMAKE_COMMAND}" ${configure} "-DKVLM_SUBDIRECTORY=${KVLM_SOURCE_DIR}")
else()
  message(FATAL_ERROR "consumer test: MODE=${MODE}; expected find_package or add_subdirectory")
endif()

run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/simd_check")  # needs no model

# Like the model tests (tests/models.hpp): without a models folder, a failure under CI and a skip
# (ctest's SKIP_REGULAR_EXPRESSION) elsewhere.
include(${CMAKE_CURRENT_LIST_DIR}/../skip_or_fail.cmake)
if(NOT EXISTS "${MODELS_DIR}/stories260K/stories260K-F32.gguf")
  kvlm_skip_or_fail("consumer app built, not run: no models folder (MODELS_DIR='${MODELS_DIR}')")
endif()
run("${WORK_DIR}/build/app" "${MODELS_DIR}")

# The chat example, two turns, then a restart that resumes the saved conversation.
set(turns "${WORK_DIR}/turns.txt")
set(saved "${WORK_DIR}/chat-session.bin")
file(WRITE "${turns}" "Once upon a time, there was a dog.\nThe dog liked to play.\n")
foreach(attempt first resumed)
  execute_process(COMMAND "${WORK_DIR}/build/chat" "${MODELS_DIR}" "${saved}"
                  INPUT_FILE "${turns}" OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  message(STATUS "chat (${attempt} run):\n${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test (${MODE}): chat failed (${rc})")
  endif()
  string(REGEX MATCHALL "generated, [0-9]+ in the cache" replies "${out}")
  list(LENGTH replies n_replies)
  if(NOT n_replies EQUAL 2)
    message(FATAL_ERROR "consumer test (${MODE}): chat gave ${n_replies} replies, expected 2")
  endif()
endforeach()
if(NOT out MATCHES "^\\[resumed with [1-9][0-9]* tokens\\]\n> ")
  message(FATAL_ERROR "consumer test (${MODE}): the second chat run did not resume")
endif()
