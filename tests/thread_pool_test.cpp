// ThreadPool and parallel_for_rows: every index runs exactly once per run, job 0 on the caller,
// with workers spinning, asleep (no spin) and outnumbering the cores; a pool stops promptly
// whatever its workers are doing; options out of range are refused. Part of kvlm_thread_tests,
// so scripts/test-threads runs it under ThreadSanitizer, which checks the pool's handoffs.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "kvlm/detail/parallel.hpp"
#include "kvlm/error.hpp"
#include "kvlm/thread_pool.hpp"

namespace kvlm {
namespace {

using std::chrono::microseconds;

// `runs` runs of every size from 1 to the pool's, each counting its indices' calls in plain
// (non-atomic) slots that the caller then reads: TSan sees any missing handoff.
void expect_every_index_once(ThreadPool& pool, int runs, microseconds pause) {
  std::vector<int> calls(static_cast<std::size_t>(pool.size()), 0);
  std::vector<std::thread::id> ran_on(calls.size());
  for (int r = 0; r < runs; ++r) {
    for (int n = 1; n <= pool.size(); ++n) {
      pool.run(n, [&](int t) {
        ++calls[static_cast<std::size_t>(t)];
        ran_on[static_cast<std::size_t>(t)] = std::this_thread::get_id();
      });
      for (int t = 0; t < pool.size(); ++t) {
        ASSERT_EQ(calls[static_cast<std::size_t>(t)], t < n ? 1 : 0)
            << "run " << r << " of " << n << " threads, index " << t;
        calls[static_cast<std::size_t>(t)] = 0;
      }
      ASSERT_EQ(ran_on[0], std::this_thread::get_id()) << "job 0 runs on the caller";
      if (pause.count() > 0) std::this_thread::sleep_for(pause);
    }
  }
}

TEST(ThreadPool, EveryIndexRunsOnceWhileWorkersSpin) {
  for (int n_threads : {1, 2, 3}) {
    ThreadPool pool(n_threads);
    EXPECT_EQ(pool.size(), n_threads);
    expect_every_index_once(pool, 500, microseconds(0));
  }
}

TEST(ThreadPool, EveryIndexRunsOnceWhenWorkersSleepBetweenRuns) {
  ThreadPool pool(3, microseconds(0));  // no spin: every run wakes its workers
  expect_every_index_once(pool, 100, microseconds(0));
  ThreadPool spinning(2, microseconds(200));
  expect_every_index_once(spinning, 20, microseconds(1000));  // pauses longer than the spin
}

TEST(ThreadPool, MoreThreadsThanCoresStillRunEveryIndex) {
  ThreadPool pool(2 * detail::hardware_threads() + 1);
  expect_every_index_once(pool, 50, microseconds(0));
}

TEST(ThreadPool, RunsReturnOnlyWhenEveryJobHas) {
  ThreadPool pool(3);
  std::atomic<int> finished{0};
  for (int r = 0; r < 50; ++r) {
    pool.run(3, [&](int t) {
      if (t == 2) std::this_thread::sleep_for(microseconds(200));  // a straggler
      finished.fetch_add(1, std::memory_order_relaxed);
    });
    ASSERT_EQ(finished.load(), 3 * (r + 1));
  }
}

TEST(ThreadPool, StopsPromptlyWhetherWorkersSpinOrSleep) {
  for (microseconds spin : {microseconds(0), microseconds(1000000)}) {
    const auto start = std::chrono::steady_clock::now();
    {
      ThreadPool pool(3, spin);
      pool.run(3, [](int) {});
      std::this_thread::sleep_for(microseconds(2000));
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500))
        << "spin " << spin.count() << " us";
  }
}

TEST(ThreadPool, ThreadOptionsOutOfRangeAreRefused) {
  EXPECT_NO_THROW(detail::check_thread_options(0, microseconds(0)));
  EXPECT_NO_THROW(detail::check_thread_options(detail::kMaxThreads, microseconds(5000)));
  for (int n : {-1, detail::kMaxThreads + 1}) {
    try {
      detail::check_thread_options(n, microseconds(0));
      ADD_FAILURE() << n << " threads were accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("n_threads = " + std::to_string(n)), std::string::npos)
          << e.what();
    }
  }
  try {
    detail::check_thread_options(1, microseconds(-1));
    ADD_FAILURE() << "a negative spin was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("spin"), std::string::npos) << e.what();
  }
}

// parallel_for_rows covers [0, n_rows) exactly once, in ranges on multiples of the grain, one per
// thread, and runs small work on the caller alone.
TEST(ParallelForRows, CoversEveryRowOnceOnGrainBoundaries) {
  ThreadPool pool(3);
  for (std::int64_t n_rows : {1, 2, 15, 16, 17, 100, 1000}) {
    for (std::int64_t grain : {1, 4, 16}) {
      std::vector<int> hits(static_cast<std::size_t>(n_rows), 0);
      std::vector<int> ranges(3, 0);
      detail::parallel_for_rows(n_rows, detail::kMinParallelWork, pool, grain,
                                [&](std::int64_t begin, std::int64_t end, int t) {
        ++ranges[static_cast<std::size_t>(t)];
        EXPECT_EQ(begin % grain, 0);
        EXPECT_TRUE(end % grain == 0 || end == n_rows);
        for (std::int64_t i = begin; i < end; ++i) ++hits[static_cast<std::size_t>(i)];
      });
      for (std::int64_t i = 0; i < n_rows; ++i) {
        ASSERT_EQ(hits[static_cast<std::size_t>(i)], 1) << "row " << i << " of " << n_rows
                                                        << ", grain " << grain;
      }
      for (int r : ranges) EXPECT_LE(r, 1);
    }
  }
  std::vector<std::thread::id> ran_on;
  detail::parallel_for_rows(100, detail::kMinParallelWork - 1, pool, 1,
                            [&](std::int64_t begin, std::int64_t end, int t) {
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 100);
    EXPECT_EQ(t, 0);
    ran_on.push_back(std::this_thread::get_id());
  });
  EXPECT_EQ(ran_on, std::vector<std::thread::id>{std::this_thread::get_id()});
}

}  // namespace
}  // namespace kvlm
