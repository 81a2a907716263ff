# The cache reuse that `chat -v` reports on stderr, for cli_check.cmake's CHECK_SCRIPT: every turn
#   turn N: prompt_tokens=P cached_tokens=C generated=G position=X
# must find the whole conversation in the cache, so C is the position before it (that of the
# last turn, /save, /load or /reset line, 0 at the start) and only the new turn's P tokens are
# prefilled: C + P + G = X. TURNS: how many turn lines stderr must have.

string(REPLACE ";" "," lines "${err}")  # a semicolon would split a line of the list below
string(REGEX MATCHALL "[^\n]*position=[0-9]+" lines "${lines}")
set(position 0)
set(turns 0)
foreach(line IN LISTS lines)
  if(line MATCHES "^turn [0-9]+: prompt_tokens=([0-9]+) cached_tokens=([0-9]+) generated=([0-9]+) position=([0-9]+)$")
    math(EXPR sum "${CMAKE_MATCH_1} + ${CMAKE_MATCH_2} + ${CMAKE_MATCH_3}")
    if(NOT CMAKE_MATCH_2 EQUAL position OR NOT sum EQUAL CMAKE_MATCH_4)
      message(FATAL_ERROR "'${line}' does not continue from position ${position}\n${context}")
    endif()
    math(EXPR turns "${turns} + 1")
  endif()
  string(REGEX REPLACE ".*position=" "" position "${line}")
endforeach()
if(NOT turns EQUAL TURNS)
  message(FATAL_ERROR "expected ${TURNS} turn lines on stderr, found ${turns}\n${context}")
endif()
