#pragma once
// parallel_for_rows: how kvlm's ops split their work across a ThreadPool. Splits [0, n_rows)
// into one contiguous range per thread (boundaries on multiples of `grain`) and calls
// fn(begin, end, thread) on each; thread, in [0, threads.size()), indexes per-thread scratch.
// Work below kMinParallelWork runs directly on the calling thread: for small matrices handing
// work to another thread costs more than the work.

#include <algorithm>
#include <cstdint>

#include "kvlm/thread_pool.hpp"

namespace kvlm::detail {

// Multiply-adds below which a second thread costs more than it saves (a few microseconds of
// work). It must stay below 100000, the work below which Eigen never threads a product itself,
// so that running small work outside the pool cannot start Eigen's own threads in a host that
// compiles with OpenMP.
constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 16;

template <typename Fn>
void parallel_for_rows(std::int64_t n_rows, std::int64_t work, ThreadPool& threads,
                       std::int64_t grain, Fn&& fn) {
  if (n_rows <= 0) return;
  if (work < kMinParallelWork) {
    fn(std::int64_t{0}, n_rows, 0);
    return;
  }
  const std::int64_t blocks = (n_rows + grain - 1) / grain;
  const int n = static_cast<int>(std::min<std::int64_t>(threads.size(), blocks));
  threads.run(n, [&](int t) {
    const std::int64_t begin = std::min(n_rows, blocks * t / n * grain);
    const std::int64_t end = std::min(n_rows, blocks * (t + 1) / n * grain);
    if (begin < end) fn(begin, end, t);
  });
}

}  // namespace kvlm::detail
