#pragma once
// KVLM_ASSERT checks internal invariants: conditions that hold unless kvlm itself has a bug.
// It is active when NDEBUG is not defined; a host may define its own KVLM_ASSERT before including
// kvlm (as with eigen_assert). Never use it for input a host or a file can get wrong: that throws
// kvlm::Error.

#ifndef KVLM_ASSERT
#include <cassert>
#define KVLM_ASSERT(condition) assert(condition)
#endif
