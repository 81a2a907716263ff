# Runs one command-line program and checks what a user would see.
#   cmake [-DEXPECT_RC=N] [-DSTDOUT_FILE=F] [-DSTDOUT_REGEX=R] [-DSTDOUT_EMPTY=ON]
#         [-DSTDERR_REGEX=R] [-DSAME_STDOUT_AS="prog|arg|..."] [-DINPUT_TEXT=T]
#         [-DCHECK_SCRIPT=F]
#         -P cli_check.cmake -- PROGRAM ARGS...
# REQUIRES=F: a model file the check reads; if it is missing the check fails under CI and is
# skipped elsewhere, as tests/models.hpp does for GoogleTest tests.
# STDOUT_FILE: stdout must equal the file byte for byte. SAME_STDOUT_AS: stdout must equal that
# of another program (an independent reference). INPUT_TEXT: the standard input of the program
# (and of the reference). CHECK_SCRIPT=F: a script included last, for checks a regular expression
# cannot make; it sees `out`, `err` and `context` (what a failure message should show).

set(command "")
set(after_dashes OFF)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last})
  if(after_dashes)
    list(APPEND command "${CMAKE_ARGV${i}}")
  elseif(CMAKE_ARGV${i} STREQUAL "--")
    set(after_dashes ON)
  endif()
endforeach()
include(${CMAKE_CURRENT_LIST_DIR}/skip_or_fail.cmake)
if(DEFINED REQUIRES AND NOT EXISTS "${REQUIRES}")
  kvlm_skip_or_fail("model file not found: ${REQUIRES}; set KVLM_MODELS_DIR or run scripts/models-dir")
endif()
if(NOT DEFINED EXPECT_RC)
  set(EXPECT_RC 0)
endif()

set(input "")
if(DEFINED INPUT_TEXT)
  # Named after the command and text, so that checks running at once do not share the file.
  string(MD5 input_name "${command}${INPUT_TEXT}")
  set(input_file "${CMAKE_CURRENT_BINARY_DIR}/cli_check_input_${input_name}.txt")
  file(WRITE "${input_file}" "${INPUT_TEXT}")
  set(input INPUT_FILE "${input_file}")
endif()
execute_process(COMMAND ${command} ${input} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err TIMEOUT 300)
set(context "command: ${command}\nexit: ${rc}\nstdout:\n${out}\nstderr:\n${err}")
if(NOT rc STREQUAL EXPECT_RC)
  message(FATAL_ERROR "expected exit ${EXPECT_RC}\n${context}")
endif()
if(DEFINED STDOUT_FILE)
  file(READ "${STDOUT_FILE}" expected)
  if(NOT out STREQUAL expected)
    message(FATAL_ERROR "stdout differs from ${STDOUT_FILE}\n${context}")
  endif()
endif()
if(DEFINED STDOUT_REGEX AND NOT out MATCHES "${STDOUT_REGEX}")
  message(FATAL_ERROR "stdout does not match '${STDOUT_REGEX}'\n${context}")
endif()
if(STDOUT_EMPTY AND NOT out STREQUAL "")
  message(FATAL_ERROR "stdout should be empty\n${context}")
endif()
if(DEFINED STDERR_REGEX AND NOT err MATCHES "${STDERR_REGEX}")
  message(FATAL_ERROR "stderr does not match '${STDERR_REGEX}'\n${context}")
endif()
if(DEFINED SAME_STDOUT_AS)
  string(REPLACE "|" ";" reference "${SAME_STDOUT_AS}")
  execute_process(COMMAND ${reference} ${input}
                  RESULT_VARIABLE ref_rc OUTPUT_VARIABLE ref_out ERROR_VARIABLE ref_err)
  if(NOT ref_rc EQUAL 0 OR NOT out STREQUAL ref_out)
    message(FATAL_ERROR "stdout differs from the reference ${reference} (exit ${ref_rc}):\n"
                        "${ref_out}${ref_err}\n${context}")
  endif()
endif()
if(DEFINED CHECK_SCRIPT)
  include("${CHECK_SCRIPT}")
endif()
