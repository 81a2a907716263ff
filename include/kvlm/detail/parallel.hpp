#pragma once
// parallel_for_rows: the one place kvlm starts OpenMP threads. Splits [0, n_rows) into one
// contiguous range per thread (boundaries on multiples of `grain`) and calls fn(begin, end) on
// each. Work below kMinParallelWork runs on the calling thread: for small matrices the cost of
// waking a thread exceeds the work.
//
// Inside the region each thread sets its own OpenMP thread count to 1. That setting belongs to
// the region's implicit task and ends with it, so the host's settings are untouched, and Eigen
// (which sizes its products by omp_get_max_threads()) stays single-threaded inside our threads.

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kvlm::detail {

// Multiply-adds below which a second thread costs more than it saves (about 10 us of work).
constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 17;

// The index of the calling thread within parallel_for_rows's threads, for per-thread scratch.
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

template <typename Fn>
void parallel_for_rows(std::int64_t n_rows, std::int64_t work, int n_threads, std::int64_t grain,
                       Fn&& fn) {
  const int threads = work < kMinParallelWork ? 1
                                              : static_cast<int>(std::min<std::int64_t>(
                                                    n_threads, (n_rows + grain - 1) / grain));
#ifdef _OPENMP
#pragma omp parallel num_threads(std::max(threads, 1))
  {
    omp_set_num_threads(1);
    const int n = omp_get_num_threads();
    const int t = omp_get_thread_num();
    const std::int64_t blocks = (n_rows + grain - 1) / grain;
    const std::int64_t begin = std::min(n_rows, blocks * t / n * grain);
    const std::int64_t end = std::min(n_rows, blocks * (t + 1) / n * grain);
    if (begin < end) fn(begin, end);
  }
#else
  (void)threads;
  if (n_rows > 0) fn(std::int64_t{0}, n_rows);
#endif
}

}  // namespace kvlm::detail
