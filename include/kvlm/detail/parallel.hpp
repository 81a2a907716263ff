#pragma once
// parallel_for_rows: the one place kvlm starts OpenMP threads. Splits [0, n_rows) into one
// contiguous range per thread (boundaries on multiples of `grain`) and calls
// fn(begin, end, thread) on each; thread, in [0, n_threads), indexes per-thread scratch.
// Work below kMinParallelWork runs directly on the calling thread, with no OpenMP region: for
// small matrices entering a region costs more than the work (a third of a stories260K step).
//
// Inside a region each thread sets its own OpenMP thread count to 1. That setting belongs to the
// region's implicit task and ends with it, so the host's settings are untouched, and Eigen (which
// sizes its matrix products by omp_get_max_threads()) stays single-threaded inside our threads,
// even when the region has one thread because the host asked for one.

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kvlm::detail {

// Multiply-adds below which a second thread costs more than it saves (a few microseconds of
// work). It must stay below 100000, the work below which Eigen never threads a product itself,
// so that running small work outside a region cannot start Eigen's own threads.
constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 16;

// Most threads a session may ask for: far beyond any CPU kvlm runs on, and small enough that
// per-thread scratch cannot overflow a size.
constexpr int kMaxThreads = 1024;

// Cores of the machine: the thread count when the host does not choose one.
inline int hardware_threads() {
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}

// Starts OpenMP's threads (a few milliseconds the first time), so that the first forward pass
// of a session does not pay for it.
inline void start_threads(int n_threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
  {
  }
#else
  (void)n_threads;
#endif
}

template <typename Fn>
void parallel_for_rows(std::int64_t n_rows, std::int64_t work, int n_threads, std::int64_t grain,
                       Fn&& fn) {
  if (work < kMinParallelWork) {
    if (n_rows > 0) fn(std::int64_t{0}, n_rows, 0);
    return;
  }
  const int threads =
      static_cast<int>(std::min<std::int64_t>(n_threads, (n_rows + grain - 1) / grain));
#ifdef _OPENMP
#pragma omp parallel num_threads(std::max(threads, 1))
  {
    omp_set_num_threads(1);
    const int n = omp_get_num_threads();
    const int t = omp_get_thread_num();
    const std::int64_t blocks = (n_rows + grain - 1) / grain;
    const std::int64_t begin = std::min(n_rows, blocks * t / n * grain);
    const std::int64_t end = std::min(n_rows, blocks * (t + 1) / n * grain);
    if (begin < end) fn(begin, end, t);
  }
#else
  (void)threads;
  if (n_rows > 0) fn(std::int64_t{0}, n_rows, 0);
#endif
}

}  // namespace kvlm::detail
