# ctest -P helper: runs the abort check under mpiexec and verifies that the job exits non-zero,
# in time, and that every surviving rank reports rank 0's message.
# Inputs: MPIEXEC, NP_FLAG, NP, PROGRAM.
execute_process(
  COMMAND ${MPIEXEC} ${NP_FLAG} ${NP} ${PROGRAM}
  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)
set(all "${out}\n${err}")
message("${all}")
if(result EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit after Abort(), got ${result}")
endif()
string(FIND "${all}" "fatal error, aborting all ranks" found)
if(found EQUAL -1)
  message(FATAL_ERROR "rank 0 did not print its fatal message")
endif()
math(EXPR last "${NP} - 1")
foreach(rank RANGE 1 ${last})
  string(REGEX MATCH "observed on rank ${rank}: ABORTED:[^\n]*world rank 0 aborted: INTERNAL: injected load failure" seen "${all}")
  if(NOT seen)
    message(FATAL_ERROR "rank ${rank} did not report rank 0's message")
  endif()
endforeach()
