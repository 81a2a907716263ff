#pragma once
// Batcher: continuous batching across sessions. Decode is bound by reading the weights, so B
// sessions that step together in one forward pass read every weight matrix once for all of them
// (matrix-matrix products over B rows) instead of B times. Sessions opt in with
// SessionOptions::batcher; each keeps its own cache, position and sampler, and its calls
// (prefill, step, generate) look the same as when it runs alone and give the same tokens. Their
// forward passes are queued here and run together on one worker thread: sessions join and leave
// between passes, and a prompt is fed in chunks beside the decoding sessions instead of stalling
// them for its whole length.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvlm/error.hpp"
#include "kvlm/forward.hpp"
#include "kvlm/model.hpp"
#include "kvlm/thread_pool.hpp"

namespace kvlm {

struct BatcherOptions {
  // Most rows of one pass: a row per decoding session, the rest prompt chunks; it bounds how
  // long decoders wait behind a long prompt. Up to MatmulScratch::kMaxGemvTokens, products
  // over non-F32 weights compute each row exactly as they do alone.
  int max_rows = static_cast<int>(MatmulScratch::kMaxGemvTokens);
  int n_threads = 0;    // threads of a pass; 0 = every core
  // How long the pass's idle threads wait awake for the next pass before they sleep.
  std::chrono::microseconds spin = ThreadPool::kDefaultSpin;
  // After a pass, how long the next waits for the sessions of the last one to come back with
  // their next token (they sample in between), so that they stay in one pass.
  std::chrono::microseconds gather{2000};
};

class Batcher {
 public:
  /// @throws Error(kInvalidArgument) for a missing model or options out of range.
  explicit Batcher(std::shared_ptr<const Model> model, const BatcherOptions& options = {})
      : model_(checked(std::move(model), options)),
        options_(options),
        n_threads_(options.n_threads > 0 ? options.n_threads : detail::hardware_threads()),
        scratch_(*model_, options.max_rows, n_threads_, options.max_rows),
        threads_(n_threads_, options.spin),
        worker_([this] { work(); }) {}

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;
  ~Batcher() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    work_ready_.notify_all();
    worker_.join();
  }

  const Model& model() const { return *model_; }
  const BatcherOptions& options() const { return options_; }

  struct Stats {
    std::int64_t passes = 0;         // forward passes run
    std::int64_t rows = 0;           // rows they ran, summed
    std::int64_t most_sequences = 0; // the most sequences in one pass
  };
  Stats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  /// Runs `chunk` in passes shared with other sessions' chunks, in pieces of at most max_rows
  /// rows, and returns when all of it ran (any thread may call; sessions call it from forward).
  /// cancel, if set, is asked (on the worker thread, holding the batcher's lock: it must be quick
  /// and must not call the batcher) before each pass the chunk is in.
  /// @throws Error(kCancelled), or whatever the pass threw; the chunk's cache rows are then
  ///         partly written, which the caller's position makes harmless.
  void run(const SequenceChunk& chunk, const std::function<bool()>& cancel) {
    if (chunk.n == 0) return;
    Job job{chunk, &cancel, false, nullptr};
    std::unique_lock<std::mutex> lock(mutex_);
    if (stopping_) throw Error(ErrorCode::kCancelled, "the batcher is being destroyed");
    queue_.push_back(&job);
    work_ready_.notify_all();
    job_done_.wait(lock, [&] { return job.done; });
    if (job.error) std::rethrow_exception(job.error);
  }

  /// The bytes the batcher allocated: its activations, scratch and gathered logits.
  std::size_t memory_bytes() const { return scratch_.byte_size(); }

 private:
  struct Job {
    SequenceChunk rest;                    // what is still to run
    const std::function<bool()>* cancel;
    bool done = false;
    std::exception_ptr error;
  };

  static std::shared_ptr<const Model> checked(std::shared_ptr<const Model> model,
                                              const BatcherOptions& o) {
    if (!model) throw Error(ErrorCode::kInvalidArgument, "Batcher needs a model");
    if (o.max_rows < 1 || o.max_rows > detail::kMaxDimension) {
      throw Error(ErrorCode::kInvalidArgument,
                  "max_rows = " + std::to_string(o.max_rows) + " is outside [1, " +
                      std::to_string(detail::kMaxDimension) + "]");
    }
    detail::check_thread_options(o.n_threads, o.spin);
    if (o.gather.count() < 0) {
      throw Error(ErrorCode::kInvalidArgument, "gather must not be negative");
    }
    return model;
  }

  // The worker: waits for jobs, gathers the sessions expected back, runs a pass, repeats.
  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    std::size_t expected = 0;  // jobs that the last pass left queued or finished
    std::vector<Job*> in_pass;
    std::vector<SequenceChunk> pieces;
    in_pass.reserve(static_cast<std::size_t>(options_.max_rows));
    pieces.reserve(static_cast<std::size_t>(options_.max_rows));
    // Done jobs leave the queue, and their callers (waiting for the lock) may then return.
    const auto let_done_go = [this] {
      queue_.erase(std::remove_if(queue_.begin(), queue_.end(), [](const Job* j) { return j->done; }),
                   queue_.end());
      job_done_.notify_all();
    };
    while (true) {
      work_ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to run
      work_ready_.wait_for(lock, options_.gather, [&] { return queue_.size() >= expected; });

      // Decoding sessions (one row) first, in arrival order, then prompt chunks in the rows left;
      // a waiting prompt always gets at least one row, so a full pass of decoders cannot starve it.
      const auto decoding = [](const Job* j) { return j->rest.n == 1; };
      const auto prompts = std::stable_partition(queue_.begin(), queue_.end(), decoding);
      const int decoder_rows = options_.max_rows - (prompts != queue_.end() && options_.max_rows > 1);
      in_pass.clear();
      pieces.clear();
      int rows = 0;
      const int vocab_size = model_->config().vocab_size;
      for (Job* job : queue_) {
        if (rows == options_.max_rows || (decoding(job) && rows == decoder_rows)) continue;
        try {
          if (*job->cancel && (*job->cancel)()) throw Error(ErrorCode::kCancelled, "cancelled by the host");
        } catch (...) {
          job->error = std::current_exception();
          job->done = true;
          continue;
        }
        pieces.push_back(split_front(job->rest, options_.max_rows - rows, vocab_size));
        rows += pieces.back().n;
        in_pass.push_back(job);
      }
      let_done_go();  // the cancelled ones, before the lock is let go for the pass
      std::exception_ptr error;
      if (!pieces.empty()) {
        lock.unlock();
        try {
          forward(*model_, pieces, scratch_, threads_, nullptr);
        } catch (...) {
          error = std::current_exception();
        }
        lock.lock();
        ++stats_.passes;
        stats_.rows += rows;
        stats_.most_sequences = std::max<std::int64_t>(stats_.most_sequences, pieces.size());
      }
      for (Job* job : in_pass) {
        if (error) job->error = error;
        if (error || job->rest.n == 0) job->done = true;
      }
      expected = queue_.size();  // finished jobs are expected back with their next token
      let_done_go();
    }
  }

  std::shared_ptr<const Model> model_;
  BatcherOptions options_;
  int n_threads_;
  ForwardScratch scratch_;  // used by the worker only
  ThreadPool threads_;      // run by the worker only

  mutable std::mutex mutex_;
  std::condition_variable work_ready_;  // a job arrived, or the batcher is stopping
  std::condition_variable job_done_;    // a pass finished some jobs
  std::deque<Job*> queue_;              // jobs not yet done, in arrival order (then decoders first)
  bool stopping_ = false;
  Stats stats_;
  std::thread worker_;  // last: it starts once everything above exists
};

}  // namespace kvlm
