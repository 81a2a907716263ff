#pragma once
// ThreadPool: the threads a Session (or a Batcher) computes on, kvlm's only threads but the
// Batcher's own. The thread that calls run() is thread 0 and works too; the pool starts
// n_threads - 1 workers when it is made and joins them when it is destroyed, so a pool of one
// thread starts none.
//
// Between runs a worker spins for up to `spin` before it sleeps on a condition variable. A
// decode step is a few hundred runs, microseconds apart, and what a host does between two tokens
// (sampling, detokenizing, streaming the text) usually takes less than the spin, so the next
// step finds its workers awake: waking a sleeping thread costs tens of microseconds, and on a VM
// whose idle vCPU the hypervisor has descheduled, milliseconds. While the pools of the process
// have more threads than the machine has cores, none spins (detail::pool_threads).
//
// Thread safety: one thread at a time calls run() (the owner's), never from inside a job.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kvlm/detail/assert.hpp"
#include "kvlm/error.hpp"

namespace kvlm {

namespace detail {

// Most threads a session may ask for: far beyond any CPU kvlm runs on, and small enough that
// per-thread scratch cannot overflow a size.
constexpr int kMaxThreads = 1024;

// Cores this process may run on: the thread count when the host does not choose one.
inline int hardware_threads() {
#ifdef __linux__
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) return std::max(CPU_COUNT(&cpus), 1);
#endif
  return std::max(static_cast<int>(std::thread::hardware_concurrency()), 1);
}

// Checks a host's thread options (0 threads: every core).
// @throws Error(kInvalidArgument) naming the one out of range.
inline void check_thread_options(int n_threads, std::chrono::microseconds spin) {
  if (n_threads < 0 || n_threads > kMaxThreads) {
    throw Error(ErrorCode::kInvalidArgument, "n_threads = " + std::to_string(n_threads) +
                                                 " is outside [0, " + std::to_string(kMaxThreads) +
                                                 "] (0 = every core)");
  }
  if (spin.count() < 0) throw Error(ErrorCode::kInvalidArgument, "spin must not be negative");
}

// Threads of every ThreadPool alive in the process, callers included. While they outnumber the
// cores, no pool spins: a spinning thread would hold a core that a working one needs, whether
// the two are of one pool or of two sessions running on different host threads.
inline std::atomic<int>& pool_threads() {
  static std::atomic<int> n{0};
  return n;
}

// The CPU the calling thread runs on, or -1 where the system does not say.
inline int current_cpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

// One step of a spin-wait: tells the core the loop is a spin (x86 `pause`).
inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// While alive, Eigen products on this thread stay single-threaded: Eigen sizes them by
// omp_get_max_threads() when the host compiles with OpenMP, and kvlm's threads are already
// split. The thread's own setting comes back after.
class SingleThreadedEigen {
 public:
  SingleThreadedEigen() {
#ifdef _OPENMP
    saved_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
  }
  ~SingleThreadedEigen() {
#ifdef _OPENMP
    omp_set_num_threads(saved_);
#endif
  }
  SingleThreadedEigen(const SingleThreadedEigen&) = delete;
  SingleThreadedEigen& operator=(const SingleThreadedEigen&) = delete;

 private:
  [[maybe_unused]] int saved_ = 0;
};

}  // namespace detail

class ThreadPool {
 public:
  static constexpr std::chrono::microseconds kDefaultSpin{5000};

  /// n_threads in [1, detail::kMaxThreads]; spin: how long an idle worker waits awake.
  /// @throws Error(kOutOfMemory) if the system cannot start that many threads.
  explicit ThreadPool(int n_threads, std::chrono::microseconds spin = kDefaultSpin)
      : spin_(spin), cores_(detail::hardware_threads()) {
    KVLM_ASSERT(n_threads >= 1 && n_threads <= detail::kMaxThreads);
    workers_.reserve(static_cast<std::size_t>(n_threads - 1));
    detail::pool_threads().fetch_add(n_threads, std::memory_order_relaxed);
    try {
      for (int t = 1; t < n_threads; ++t) workers_.emplace_back([this, t] { work(t); });
    } catch (const std::system_error& e) {
      stop();
      detail::pool_threads().fetch_sub(n_threads, std::memory_order_relaxed);
      throw Error(ErrorCode::kOutOfMemory, "cannot start thread " + std::to_string(size() + 1) +
                                               " of " + std::to_string(n_threads) + ": " +
                                               e.what() + "; choose a smaller n_threads");
    }
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    stop();
    detail::pool_threads().fetch_sub(size(), std::memory_order_relaxed);
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  /// Calls job(t) for every t in [0, n), n <= size(), job(0) on the calling thread, and returns
  /// when every call has. job must not throw.
  template <typename Job>
  void run(int n, const Job& job) {
    KVLM_ASSERT(n >= 1 && n <= size());
    const detail::SingleThreadedEigen single;
    if (n == 1) {
      job(0);
      return;
    }
    call_ = [](const void* j, int t) { (*static_cast<const Job*>(j))(t); };
    job_ = &job;
    caller_cpu_ = detail::current_cpu();
    pending_.store(n - 1, std::memory_order_relaxed);
    publish(n);
    job(0);
    // The workers are awake and working: spin a little (unless a core may be theirs), then
    // give the core away between looks, in case one of them shares it.
    const int spins = may_spin() ? kSpinsPerYield : 0;
    for (int i = 0; pending_.load(std::memory_order_acquire) != 0; ++i) {
      if (i < spins) {
        detail::spin_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int kThreadBits = 16;  // of state_: the threads of the current run
  static_assert(detail::kMaxThreads < (1 << kThreadBits));
  // Spinning, a thread reads the clock every kSpinsPerClockRead pauses and gives its CPU away
  // for a moment every kSpinsPerYield (tens of microseconds), in case another thread of the pool
  // shares it: a spin that never yields would hold that one off for a whole time slice.
  static constexpr int kSpinsPerClockRead = 64;
  static constexpr int kSpinsPerYield = 1024;

  bool may_spin() const {
    return detail::pool_threads().load(std::memory_order_relaxed) <= cores_;
  }

  void stop() {
    stopping_.store(true);
    publish(0);
    for (std::thread& w : workers_) w.join();
  }

  // Starts run number generation + 1 with n threads (0: none, to stop), and wakes sleepers.
  void publish(int n) {
    const std::uint64_t generation = (state_.load(std::memory_order_relaxed) >> kThreadBits) + 1;
    // seq_cst, as the sleepers_ read after it and the worker's increment and read before
    // sleeping: either the worker sees this state or this thread sees the worker asleep.
    state_.store(generation << kThreadBits | static_cast<std::uint64_t>(n));
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex_);  // a sleeper is either waiting or not yet asleep
      wake_.notify_all();
    }
  }

  // Worker t: waits for each run, joins those with more than t threads, until stopped.
  void work(int t) {
    const detail::SingleThreadedEigen single;
    std::uint64_t seen = 0;
    bool shares_cpu = false;
    while (true) {
      seen = wait_for_run(seen, shares_cpu);
      if (stopping_.load()) return;
      if (t < static_cast<int>(seen & ((1u << kThreadBits) - 1))) {
        call_(job_, t);
        const int cpu = detail::current_cpu();
        shares_cpu = cpu >= 0 && cpu == caller_cpu_;
        pending_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  // The state once it differs from `seen`: spinning for up to spin_, then asleep. The scheduler
  // sometimes wakes a worker on the CPU of the thread that woke it, even with another CPU idle,
  // and only moves one of the two when it finds both runnable. So a worker that shares its
  // caller's CPU (`shares_cpu`) spins too, to be found, but gives the CPU away at every look.
  std::uint64_t wait_for_run(std::uint64_t seen, bool shares_cpu) {
    const auto until = std::chrono::steady_clock::now() + (may_spin() ? spin_ : spin_.zero());
    const int spins_per_yield = shares_cpu ? 1 : kSpinsPerYield;
    for (int i = 1;; ++i) {
      const std::uint64_t s = state_.load(std::memory_order_acquire);
      if (s != seen) return s;
      detail::spin_pause();
      if (i % spins_per_yield == 0) std::this_thread::yield();
      if (i % kSpinsPerClockRead == 0 && std::chrono::steady_clock::now() >= until) break;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1);
    std::uint64_t s;
    while ((s = state_.load()) == seen) wake_.wait(lock);
    sleepers_.fetch_sub(1);
    return s;
  }

  const std::chrono::microseconds spin_;
  const int cores_;  // detail::hardware_threads(), read once
  // generation << kThreadBits | threads of the run. A worker reads the job only after seeing a
  // run it takes part in, and run() writes the next job only after those workers are done.
  std::atomic<std::uint64_t> state_{0};
  std::atomic<int> pending_{0};     // workers still in the current run
  std::atomic<int> sleepers_{0};    // workers asleep or about to be
  std::atomic<bool> stopping_{false};
  void (*call_)(const void*, int) = nullptr;
  const void* job_ = nullptr;
  int caller_cpu_ = -1;  // where the caller was when it started the run
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;  // last: they start once everything above exists
};

}  // namespace kvlm
