#pragma once
// AllocationCounter: proves that a piece of code allocates nothing. alloc_counter.cpp replaces
// every form of the global operator new (plain, array, nothrow, aligned) with versions that count
// each call; a counter reports how many happened since it was constructed.
//
//   const kvlm::test::AllocationCounter allocations;
//   session.step(...);
//   EXPECT_EQ(allocations.count(), 0u);
//
// The count covers every thread, so an allocation inside an OpenMP worker is seen too; run the
// code once first if it has one-time setup (a thread pool, a lazily sized buffer). Read count()
// before anything else allocates: gtest's assertion macros may. Counters may nest.

#include <cstddef>

namespace kvlm::test {

// Calls of any replaced global operator new since the program started, on every thread.
std::size_t allocations_so_far();

class AllocationCounter {
 public:
  AllocationCounter() : start_(allocations_so_far()) {}
  AllocationCounter(const AllocationCounter&) = delete;
  AllocationCounter& operator=(const AllocationCounter&) = delete;

  // Calls of operator new (any form, any thread) since this counter was constructed.
  std::size_t count() const { return allocations_so_far() - start_; }

 private:
  std::size_t start_;
};

}  // namespace kvlm::test
