#pragma once
// Session: one conversation with a model. It owns a KV cache, the tokens in it, the random
// stream its sampler draws from and every buffer a forward pass needs, all sized when it is
// constructed, so a decode step allocates nothing. prefill() runs a prompt as one batch
// (matrix-matrix products), step() decodes one token; both compute Q/K/V for the new tokens only,
// write K/V at their positions and attend over the cache. generate() is the high-level loop:
// tokenize, prefill, sample, step, stream text.
//
// The cache is the conversation's state, and the session controls it: truncate()/rewind() drop
// tokens from the end, fork() copies the session, save()/load() write and read it (session files
// are tied to the model's fingerprint), generate() with PromptMode::kReplace reuses the longest
// cached prefix of a prompt, and SessionOptions::on_full chooses between an error and a context
// shift when the context fills.
//
// Threads: a Session is used by one thread at a time; sessions on one shared Model may run
// concurrently (the model is immutable). A Session moves but does not copy; fork() copies.
//
// Failure: a call that throws leaves the session as it was (tokens, cache, random stream, text
// stream), with two stated exceptions: a context shift is not undone, and a generate() in
// PromptMode::kReplace that throws after it replaced cached tokens holds the common prefix.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <istream>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/batch.hpp"
#include "kvlm/detail/checked.hpp"
#include "kvlm/detail/hash.hpp"
#include "kvlm/detail/regular_file.hpp"
#include "kvlm/detail/write_file.hpp"
#include "kvlm/error.hpp"
#include "kvlm/forward.hpp"
#include "kvlm/kv_cache.hpp"
#include "kvlm/matmul.hpp"
#include "kvlm/model.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/sampler.hpp"
#include "kvlm/span.hpp"
#include "kvlm/stop_strings.hpp"
#include "kvlm/tensor.hpp"
#include "kvlm/thread_pool.hpp"
#include "kvlm/tokenizer.hpp"

namespace kvlm {

/// How a step treats the tokens before it.
enum class CacheMode {
  kCached,     // K/V of earlier positions come from the cache: work per step is one token
  kRecompute,  // every call re-runs the whole sequence from position 0, as without a KV cache:
               // step t costs t token-forwards. For tests and benchmarks of what the cache saves.
};

/// What happens when tokens do not fit in the room left in the context.
enum class OnFull {
  kError,  // Error(kContextFull) before anything changes; generate() stops with kContextFull
  kShift,  // keep the first n_keep tokens, drop the oldest half of the rest (or more, if the
           // new tokens need it), move the others down and turn their keys back (RoPE), go on
};

struct SessionOptions {
  int max_seq_len = 0;   // context length; 0 = the model's max_seq_len (may exceed it)
  int max_batch = 512;   // most tokens one forward pass takes; longer prompts run in chunks
  int n_threads = 0;     // 0 = every core of the machine
  // How long the session's idle threads wait awake for the next forward pass before they sleep
  // (see thread_pool.hpp): the host's work between two steps that takes less costs no wake-up.
  std::chrono::microseconds spin = ThreadPool::kDefaultSpin;
  CacheMode cache_mode = CacheMode::kCached;
  DType kv_type = DType::kF32;  // what the cache stores: F32, F16, BF16 or Q8_0
  OnFull on_full = OnFull::kError;
  int n_keep = 1;        // tokens a context shift never drops (the BOS by default)
  // Refuse a session needing more (memory_bytes()); 0: the machine's physical memory.
  std::size_t max_memory_bytes = 0;
  /// Checked before every layer of a forward pass (so between decode steps too); when it returns
  /// true the call throws Error(kCancelled) and the session is as before the call (but for a
  /// context shift the call made). Set it per call by having it read a flag the host sets.
  std::function<bool()> cancel;
  /// Runs this session's forward passes together with those of the other sessions that share
  /// the batcher (which must serve the same Model): see batch.hpp. Its calls and tokens are the
  /// same as without; `cancel` is then asked before each pass rather than each layer.
  std::shared_ptr<Batcher> batcher;
};

/// How generate() reads its prompt.
enum class PromptMode {
  kAppend,   // the prompt follows what the session holds (with BOS only when it is empty)
  kReplace,  // the prompt is the whole context: the longest prefix of its tokens that the cache
             // holds is kept, only the rest is prefilled, and anything cached after it is dropped
};

/// A token and its log-probability under the model (log-softmax of the logits, before the
/// sampler's penalty, temperature and truncation).
struct TokenLogprob {
  Token token = 0;
  float logprob = 0.0f;
};

/// What GenerateOptions::on_token receives for every sampled token.
struct TokenEvent {
  Token token = 0;
  float logprob = 0.0f;
  Span<const TokenLogprob> top;  // the top_logprobs most likely tokens, most likely first
  std::string_view text;         // the text this token releases to the stream (may be empty)
};

struct GenerateOptions {
  int max_new_tokens = 256;
  SamplerOptions sampler;  // its seed starts the session's random stream (see Session::reseed)
  std::vector<std::string> stop;  // generation ends before the first of these strings
  // Tokens that end generation as EOS does, not stepped and not streamed: a chat format's end of
  // turn (chat_stop_tokens()). EOS and BOS always end it.
  std::vector<Token> stop_tokens;
  PromptMode prompt_mode = PromptMode::kAppend;
  int top_logprobs = 0;  // alternatives each TokenEvent carries, at most kMaxTopLogprobs
  /// Called for each sampled token before its text goes to on_piece; false stops generating.
  std::function<bool(const TokenEvent&)> on_token;

  static constexpr int kMaxTopLogprobs = 64;
};

enum class StopReason {
  kEndOfSequence,  // the model produced EOS, a stop token, or BOS (which llama2.c models emit
                   // between stories)
  kMaxNewTokens,
  kStopString,
  kContextFull,
  kCallback,  // a callback returned false
};

struct GenerateResult {
  int prompt_tokens = 0;     // prompt tokens prefilled by this call
  int cached_tokens = 0;     // prompt tokens found in the cache and not recomputed (kReplace)
  int generated_tokens = 0;  // tokens sampled (EOS excluded), dropped_tokens included
  int dropped_tokens = 0;    // sampled tokens removed again: their text was not (fully) streamed
  int shifted_tokens = 0;    // tokens a context shift dropped during the call
  StopReason stop_reason = StopReason::kMaxNewTokens;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // sampling and steps of the generated tokens
};

/// Receives each piece of generated text (complete UTF-8); returns false to stop generating.
/// An empty callback discards the text.
using PieceCallback = std::function<bool(std::string_view piece)>;

class Session {
 public:
  /// @throws Error: kInvalidArgument if an option is out of range (kv_type included: Q8_0 needs
  ///         n_kv_heads * head_dim to be a multiple of 32); kOutOfMemory, naming the bytes, if
  ///         the session needs more than options.max_memory_bytes or cannot be allocated.
  explicit Session(std::shared_ptr<const Model> model, const SessionOptions& options = {})
      : Session(model, options, checked_bytes(model.get(), options)) {}

  Session(Session&&) noexcept = default;
  Session& operator=(Session&&) noexcept = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// The bytes a session with these options allocates: memory_bytes() before it exists.
  /// @throws Error(kInvalidArgument) as the constructor, for options out of range.
  static std::size_t bytes_needed(const Model& model, const SessionOptions& options);

  /// Runs the prompt tokens as one batch (chunks of max_batch) after the tokens already in the
  /// cache, and returns the logits that follow the last one: [vocab_size], valid until the next
  /// call on this session.
  /// @throws Error: kContextFull if they do not fit (and on_full is kError, or a shift cannot
  ///         make room), kInvalidArgument for an id outside the vocabulary or an empty list,
  ///         kCancelled if the cancel callback asked.
  Span<const float> prefill(Span<const Token> tokens) {
    append_and_run(tokens, 1, logits_.view());
    return logits();
  }

  /// Decodes one token at position(); returns the logits that follow it ([vocab_size]).
  /// @throws Error as prefill().
  Span<const float> step(Token token) { return prefill(Span<const Token>(&token, 1)); }

  /// As prefill(), but writes the logits after every one of the tokens:
  /// logits: [tokens.size(), vocab_size]; row i holds the distribution of the token after tokens[i].
  /// @throws Error as prefill(), and kInvalidArgument if logits has the wrong shape.
  void evaluate(Span<const Token> tokens, TensorView<float> logits) {
    if (logits.rows() != static_cast<std::int64_t>(tokens.size()) ||
        logits.cols() != config_.vocab_size) {
      throw Error(ErrorCode::kInvalidArgument,
                  "evaluate: logits must be [" + std::to_string(tokens.size()) + ", " +
                      std::to_string(config_.vocab_size) + "]");
    }
    append_and_run(tokens, static_cast<int>(tokens.size()), logits);
    // Keep the last row too, so that generate() can continue from here.
    std::copy_n(logits.row(logits.rows() - 1), config_.vocab_size, logits_.data());
  }

  /// Tokenizes `prompt`, runs it (see PromptMode), then samples up to max_new_tokens tokens,
  /// calling on_piece with their text as it becomes complete. The sampled tokens stay in the
  /// cache (but for dropped_tokens, below), so a later generate() continues the text; an empty
  /// prompt continues from where the session is (from BOS when it is empty).
  ///
  /// The text stream runs across calls: everything on_piece receives, over any sequence of calls,
  /// is the text the generated tokens add to the session's text, in order (decoded in context,
  /// so " there" keeps its space after a prompt). Prompts and tokens added by prefill(), step()
  /// or evaluate() are the caller's and are not streamed. A character whose bytes are not all
  /// generated yet waits for the next call; nothing is flushed as U+FFFD at the end of a call.
  /// The sampler's random stream runs across calls as well: it is seeded from
  /// options.sampler.seed at the first call after construction or reset(), or by reseed().
  ///
  /// A stop string ends generation, and the tokens from the one in which it begins are dropped
  /// from the cache (dropped_tokens); the text stops where the first of them begins, so the
  /// cache ends where the text does (" Lily" for the stop string "Lily" is dropped, space and
  /// all). Only a stop string that begins in a token whose text an earlier piece already carried
  /// leaves that text streamed. When a callback stops generation, text held back as a possible
  /// stop string is still delivered in a last piece. A stop string must lie within one call.
  /// @throws Error: kTokenizer if the model has no tokenizer, kContextFull if the prompt does not
  ///         fit, kInvalidArgument for bad options, kCancelled, or whatever a callback throws.
  ///         The session is then as before the call (but see kReplace at the top of this file).
  GenerateResult generate(std::string_view prompt, const GenerateOptions& options,
                          const PieceCallback& on_piece);
  /// As above, for a prompt already in tokens (a rendered chat, say): they are taken as they are,
  /// BOS included or not; an empty prompt on an empty session starts from BOS.
  /// @throws Error as above, and kInvalidArgument for an id outside the vocabulary.
  GenerateResult generate(Span<const Token> prompt, const GenerateOptions& options,
                          const PieceCallback& on_piece);

  /// Tokens in the cache; the next token goes at this position.
  int position() const { return static_cast<int>(tokens_.size()); }
  int max_seq_len() const { return max_seq_len_; }
  int n_threads() const { return n_threads_; }
  const SessionOptions& options() const { return options_; }
  Span<const Token> tokens() const { return tokens_; }
  const Model& model() const { return *model_; }
  std::size_t kv_cache_bytes() const { return cache_.byte_size(); }
  /// Tokens at the start of the cache whose rows are what a fresh prefill of them computes: all
  /// of them, but after a context shift only the n_keep kept ahead of it (the moved rows were
  /// computed beside tokens since dropped). PromptMode::kReplace reuses no more than these.
  int exact_prefix() const { return exact_; }
  /// How many of `prompt`'s first tokens the cache holds as a fresh prefill of them would: what
  /// generate() in PromptMode::kReplace keeps (at most exact_prefix()).
  int reusable_prefix(Span<const Token> prompt) const {
    const auto common = std::mismatch(tokens_.begin(), tokens_.end(), prompt.begin(), prompt.end());
    return std::min(static_cast<int>(common.first - tokens_.begin()), exact_);
  }
  /// The cache itself: rows [0, position()) of each layer hold the tokens' keys and values.
  const KVCache& kv_cache() const { return cache_; }
  /// Everything the session allocated: the KV cache, the RoPE table, the activations and scratch
  /// of a forward pass, the logits, the token list and the sampler's buffers. Fixed at
  /// construction; equal to bytes_needed(model, options).
  std::size_t memory_bytes() const;

  /// Keeps the first n_tokens tokens; the next call continues from position n_tokens.
  /// @throws Error(kInvalidArgument) unless 0 <= n_tokens <= position().
  void truncate(int n_tokens) {
    if (n_tokens < 0 || n_tokens > position()) {
      throw Error(ErrorCode::kInvalidArgument, "truncate(" + std::to_string(n_tokens) +
                                                   "): the session holds " +
                                                   std::to_string(position()) + " tokens");
    }
    if (n_tokens == position()) return;
    tokens_.resize(static_cast<std::size_t>(n_tokens));
    logits_valid_ = false;
    exact_ = std::min(exact_, n_tokens);
    if (decoded_ > n_tokens) {
      decoded_ = n_tokens;
      decoder_.reset();  // rebuilt from the tokens when next needed
      pending_generated_ = false;
    }
  }

  /// Drops the last n_tokens tokens; the next call continues from position() - n_tokens.
  /// @throws Error(kInvalidArgument) unless 0 <= n_tokens <= position().
  void rewind(int n_tokens) {
    if (n_tokens < 0 || n_tokens > position()) {
      throw Error(ErrorCode::kInvalidArgument, "rewind(" + std::to_string(n_tokens) +
                                                   "): the session holds " +
                                                   std::to_string(position()) + " tokens");
    }
    truncate(position() - n_tokens);
  }

  /// Empties the session (position 0), keeping its buffers; the next generate() seeds the random
  /// stream again.
  void reset() {
    truncate(0);
    seeded_ = false;
  }

  /// Restarts the random stream from `seed` now; generate() then does not seed it from its options.
  void reseed(std::uint64_t seed) {
    sampler_.reseed(seed);
    seeded_ = true;
  }

  /// A deep copy: a new session with the same options (its own full-size buffers, memory_bytes()
  /// again), holding the same tokens, cache rows, logits, random stream and text stream. Costs
  /// the allocation plus copying 2 * n_layers * position() cache rows; no forward pass.
  /// @throws Error(kOutOfMemory) as the constructor.
  Session fork() const;

  /// Writes the session: the tokens, the cache rows in use (not the empty capacity), the last
  /// logits, the random stream and how many rows are exact, tied to the model's fingerprint.
  /// The format is versioned and little-endian, with a checksum: magic "KVLMSESS", u32 version,
  /// u64 model fingerprint, u32 cache type (ggml id), u32 n_layers, u32 kv_dim, u32 n_tokens,
  /// u32 exact rows (as a fresh prefill makes; fewer after a context shift), u8 seeded,
  /// u8 logits valid, u16 zero, u64 random state, u64 FNV-1a of the header so far,
  /// i32 tokens[n_tokens], f32 logits[vocab_size] if valid, then per layer the key rows and the
  /// value rows [n_tokens, row bytes of the cache type], then the u64 FNV-1a of all before it.
  /// save_file() writes a temporary file beside `path` and renames it over `path`, so a crash
  /// leaves the previous file whole.
  /// @throws Error(kIo) if the stream fails.
  void save(std::ostream& out) const;
  /// Replaces the session's state with a saved one, which then continues exactly as the saved
  /// session would have. Reads the whole record before changing anything.
  /// @throws Error: kFormat for a stream that is not a session file, is damaged (checksum) or
  ///         truncated; kInvalidArgument if it was saved with another model, another cache type,
  ///         or holds more tokens than this session's context. The session is then unchanged.
  void load(std::istream& in);
  /// save() and load() on a file. load_file refuses anything but a regular file, without waiting.
  /// @throws Error(kIo) naming the path if it cannot be written or read; as save() and load().
  void save_file(const std::string& path) const;
  void load_file(const std::string& path);

 private:
  static constexpr char kMagic[9] = "KVLMSESS";
  static constexpr std::uint32_t kFileVersion = 1;

  // What generate() restores when it fails.
  struct State {
    std::size_t n_tokens;
    bool logits_valid;
    std::uint64_t rng;
    bool seeded;
    std::optional<StreamingDecoder> decoder;
    int decoded;
    bool pending_generated;
    int shifted;
  };

  // bytes: bytes_needed(*model, options), for the message if allocation fails.
  Session(std::shared_ptr<const Model> model, const SessionOptions& options, std::size_t bytes) try
      : model_(std::move(model)),
        config_(model_->config()),
        options_(normalized(*model_, options)),
        max_seq_len_(options_.max_seq_len),
        n_threads_(options_.n_threads),
        cache_mode_(options_.cache_mode),
        batch_(batch_rows(options_)),
        cache_({config_.n_layers, max_seq_len_, config_.n_kv_heads, config_.head_dim,
                options_.kv_type}),
        rope_table_(config_.head_dim, max_seq_len_, config_.rope_theta),
        scratch_(*model_, batch_, scratch_threads(options_), 0),
        logits_({config_.vocab_size}),
        sampler_(SamplerOptions{}, config_.vocab_size) {
    tokens_.reserve(static_cast<std::size_t>(max_seq_len_));
    top_.reserve(GenerateOptions::kMaxTopLogprobs);
    if (!options_.batcher) threads_ = std::make_unique<ThreadPool>(n_threads_, options_.spin);
  } catch (const std::bad_alloc&) {
    throw out_of_memory(bytes, "cannot be allocated");
  }

  static Error out_of_memory(std::size_t bytes, const std::string& why) {
    return Error(ErrorCode::kOutOfMemory,
                 "a session of " + std::to_string(bytes) + " bytes (" +
                     std::to_string(bytes >> 20) + " MiB) " + why +
                     "; choose a smaller max_seq_len, max_batch, n_threads or kv_type");
  }

  // Validates the options and fills in the defaults (context, threads).
  static SessionOptions normalized(const Model& model, SessionOptions options) {
    // Like llama.cpp's -c, the context may exceed the length the model was trained for (RoPE is
    // defined at every position; quality past it is the model's affair): GGUF files often state
    // a short trained context.
    if (options.max_seq_len < 0 || options.max_seq_len > detail::kMaxDimension) {
      throw Error(ErrorCode::kInvalidArgument,
                  "max_seq_len = " + std::to_string(options.max_seq_len) + " is outside [0, " +
                      std::to_string(detail::kMaxDimension) + "] (0 = the model's " +
                      std::to_string(model.config().max_seq_len) + ")");
    }
    if (options.max_batch < 1) {
      throw Error(ErrorCode::kInvalidArgument,
                  "max_batch = " + std::to_string(options.max_batch) + " must be positive");
    }
    detail::check_thread_options(options.n_threads, options.spin);
    check_kv_type(options.kv_type, model.config().kv_dim());
    if (options.batcher && &options.batcher->model() != &model) {
      throw Error(ErrorCode::kInvalidArgument, "the batcher serves another model");
    }
    if (options.max_seq_len == 0) options.max_seq_len = model.config().max_seq_len;
    if (options.n_threads == 0) options.n_threads = detail::hardware_threads();
    // A shift must be able to drop something.
    const int most_kept = options.on_full == OnFull::kShift ? options.max_seq_len - 1 : options.max_seq_len;
    if (options.n_keep < 0 || options.n_keep > most_kept) {
      throw Error(ErrorCode::kInvalidArgument,
                  "n_keep = " + std::to_string(options.n_keep) + " is outside [0, " +
                      std::to_string(most_kept) + "] for max_seq_len = " +
                      std::to_string(options.max_seq_len));
    }
    return options;
  }

  // Rows of the session's own forward pass. Recomputing runs the whole sequence as one batch,
  // so its batch is the context. With a batcher the batcher runs the passes, and one row serves
  // a context shift.
  static int batch_rows(const SessionOptions& o) {
    if (o.batcher) return 1;
    return o.cache_mode == CacheMode::kRecompute ? o.max_seq_len
                                                 : std::min(o.max_batch, o.max_seq_len);
  }
  // Threads the session's own scratch serves: none but the caller's with a batcher.
  static int scratch_threads(const SessionOptions& o) { return o.batcher ? 1 : o.n_threads; }

  // Validates the options and the budget; returns bytes_needed(). Without a budget of the
  // host's, the machine's memory is one: the buffers are zeroed when allocated, so a session
  // larger than memory would not fail cleanly but bring in the kernel's OOM killer.
  static std::size_t checked_bytes(const Model* model, const SessionOptions& options) {
    if (!model) throw Error(ErrorCode::kInvalidArgument, "Session needs a model");
    const std::size_t bytes = bytes_needed(*model, options);  // validates the options
    if (options.max_memory_bytes > 0 && bytes > options.max_memory_bytes) {
      throw out_of_memory(bytes, "exceeds max_memory_bytes = " +
                                     std::to_string(options.max_memory_bytes));
    }
    const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGESIZE);
    const std::size_t memory = pages > 0 && page_size > 0 ? static_cast<std::size_t>(pages) *
                                                                static_cast<std::size_t>(page_size)
                                                          : 0;
    if (options.max_memory_bytes == 0 && memory > 0 && bytes > memory) {
      throw out_of_memory(bytes, "exceeds this machine's memory of " + std::to_string(memory) +
                                     " bytes");
    }
    return bytes;
  }

  Span<const float> logits() const {
    return Span<const float>(logits_.data(), static_cast<std::size_t>(config_.vocab_size));
  }

  // The logits after the last token in the cache, recomputing them if a rewind dropped them.
  Span<const float> logits_after_last() {
    if (logits_valid_) return logits();
    const Token last = tokens_.back();
    tokens_.pop_back();
    try {
      return step(last);
    } catch (...) {
      tokens_.push_back(last);  // within the capacity: it was there
      throw;
    }
  }

  // Ids in the vocabulary, and not none.
  void check_ids(Span<const Token> tokens) const {
    if (tokens.empty()) throw Error(ErrorCode::kInvalidArgument, "no tokens to process");
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
        throw Error(ErrorCode::kInvalidArgument,
                    "token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) +
                        ")");
      }
    }
  }

  // How many tokens a context shift must drop so that n_new tokens fit after the first n_held;
  // 0 if they fit already.
  // @throws Error(kContextFull) if they cannot fit (no shift, or not even a shift makes room).
  int discard_needed(std::size_t n_new, int n_held) const {
    const std::size_t room = static_cast<std::size_t>(max_seq_len_ - n_held);
    if (n_new <= room) return 0;
    const int n_keep = std::min(options_.n_keep, n_held);
    const int movable = n_held - n_keep;
    const std::size_t short_by = n_new - room;
    if (options_.on_full == OnFull::kShift && short_by <= static_cast<std::size_t>(movable)) {
      return std::max(movable / 2, static_cast<int>(short_by));
    }
    throw Error(ErrorCode::kContextFull,
                std::to_string(n_new) + " tokens do not fit: the context holds " +
                    std::to_string(max_seq_len_) + " and " + std::to_string(n_held) +
                    " are in use" +
                    (options_.on_full == OnFull::kShift
                         ? " (a shift keeps the first " + std::to_string(n_keep) + ")"
                         : ""));
  }

  // Context shift: drops tokens [n_keep, n_keep + n_discard) and moves the rest down.
  void shift(int n_discard) {
    const int n_keep = std::min(options_.n_keep, position());
    const int n_moved = position() - n_keep - n_discard;
    TensorView<float> row(scratch_.block.q.data(), {1, config_.kv_dim()});
    cache_.shift(n_keep, n_discard, n_moved, rope_table_, row);
    tokens_.erase(tokens_.begin() + n_keep, tokens_.begin() + n_keep + n_discard);
    shifted_ += n_discard;
    exact_ = std::min(exact_, n_keep);  // later rows were computed beside the dropped tokens
    if (decoded_ > n_keep + n_discard) {
      decoded_ -= n_discard;  // the decoder's last token is still there
    } else if (decoded_ > n_keep) {
      decoded_ = n_keep;
      decoder_.reset();
      pending_generated_ = false;
    }
  }

  // Validates, makes room, appends the tokens and runs them, writing the logits after the last
  // n_logits of them into logits: [n_logits, vocab_size]. On failure the tokens are taken back.
  void append_and_run(Span<const Token> tokens, int n_logits, TensorView<float> logits) {
    check_ids(tokens);
    const int discard = discard_needed(tokens.size(), position());
    if (discard > 0) shift(discard);
    const std::size_t before = tokens_.size();
    tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());  // within the reserved capacity
    try {
      run(static_cast<int>(tokens.size()), n_logits, logits);
      check_finite(logits.rows_slice(0, n_logits));
    } catch (...) {
      tokens_.resize(before);
      logits_valid_ = false;
      throw;
    }
    if (exact_ == static_cast<int>(before)) exact_ = position();
  }

  // NaN or infinite logits mean the weights are broken (a corrupt file): an error of its own,
  // rather than a sampler that picks from garbage.
  void check_finite(TensorView<const float> logits) const {
    for (std::int64_t i = 0; i < logits.size(); ++i) {
      if (std::isfinite(logits[i])) continue;
      const std::int64_t row = i / logits.cols();
      throw Error(ErrorCode::kNumerical,
                  (model_->source().empty() ? std::string("the model") : model_->source()) +
                      ": logit " + std::to_string(i % logits.cols()) + " after position " +
                      std::to_string(position() - logits.rows() + row) + " is " +
                      std::to_string(logits[i]) + "; the weights are probably corrupt");
    }
  }

  // Runs the last n_new tokens of tokens_ (all of them when recomputing) and writes the logits
  // after the last n_logits of them into logits: [n_logits, vocab_size].
  void run(int n_new, int n_logits, TensorView<float> logits) {
    const int end = position();
    const int start = cache_mode_ == CacheMode::kCached ? end - n_new : 0;
    forward(start, end, n_logits, logits);
    logits_valid_ = true;
  }

  // The forward pass over tokens_[start_pos, end_pos), writing the logits after the last
  // n_logits of them: by the batcher, beside other sessions, or here in chunks of batch_ tokens.
  void forward(int start_pos, int end_pos, int n_logits, TensorView<float> logits) {
    SequenceChunk rest{tokens_.data() + start_pos, start_pos, end_pos - start_pos, n_logits,
                       logits.data(), &cache_, &rope_table_};
    if (options_.batcher) {
      options_.batcher->run(rest, options_.cancel);
      return;
    }
    while (rest.n > 0) {
      const SequenceChunk chunk = split_front(rest, batch_, config_.vocab_size);
      kvlm::forward(*model_, Span<const SequenceChunk>(&chunk, 1), scratch_, *threads_,
                    options_.cancel);
    }
  }

  // Brings the text stream's decoder up to position(), rebuilding it from the first token if a
  // truncation invalidated it. The text of these tokens was streamed before or is the caller's.
  void sync_decoder() {
    if (!decoder_) {
      decoder_.emplace(model_->tokenizer());
      decoded_ = 0;
    }
    std::string ignored;
    for (; decoded_ < position(); ++decoded_) {
      decoder_->push(tokens_[static_cast<std::size_t>(decoded_)], ignored);
    }
  }

  State state() const {
    return {tokens_.size(), logits_valid_, sampler_.state(), seeded_,
            decoder_,       decoded_,      pending_generated_, shifted_};
  }

  // Back to `s`, but for what context shifts since then dropped: they take the oldest tokens
  // after n_keep first, so of the tokens `s` held, the first n_keep and the newest survive.
  void restore(State s) {
    const std::size_t dropped = static_cast<std::size_t>(shifted_ - s.shifted);
    std::size_t n = s.n_tokens;
    if (dropped > 0) {
      const std::size_t kept_head = std::min(static_cast<std::size_t>(options_.n_keep), n);
      n = dropped <= n - kept_head ? n - dropped : kept_head;
    }
    if (tokens_.size() != n || dropped > 0 || !s.logits_valid) logits_valid_ = false;
    tokens_.resize(std::min(tokens_.size(), n));
    exact_ = std::min(exact_, position());
    sampler_.set_state(s.rng);
    seeded_ = s.seeded;
    if (dropped > 0) {
      decoder_.reset();  // rebuilt from the tokens when next needed
      decoded_ = 0;
      pending_generated_ = false;
    } else {
      decoder_ = std::move(s.decoder);
      decoded_ = s.decoded;
      pending_generated_ = s.pending_generated;
    }
  }

  // log-softmax of logits at `token`, and the top n tokens into top_ (most likely first).
  float logprob(Span<const float> logits, Token token, int n_top);

  std::shared_ptr<const Model> model_;
  ModelConfig config_;
  SessionOptions options_;          // as given, with max_seq_len and n_threads filled in
  int max_seq_len_;
  int n_threads_;
  std::unique_ptr<ThreadPool> threads_;  // n_threads_ threads; none with a batcher (it has its own)
  CacheMode cache_mode_;
  int batch_;                       // rows of every activation buffer
  std::vector<Token> tokens_;       // [position()], capacity max_seq_len
  KVCache cache_;                   // per layer [max_seq_len, n_kv_heads * head_dim], K and V
  RopeTable rope_table_;            // [max_seq_len, head_dim / 2, 2]
  ForwardScratch scratch_;          // the residual stream and activations for up to batch tokens
  Tensor<float> logits_;            // [vocab_size]: after the last token run
  bool logits_valid_ = false;       // logits_ belong to the current last token
  Sampler sampler_;                 // the session's random stream; options set per call
  bool seeded_ = false;             // the stream was seeded since construction or reset()
  std::optional<StreamingDecoder> decoder_;  // the text stream over tokens_[0, decoded_)
  int decoded_ = 0;                 // tokens the text stream has covered
  bool pending_generated_ = false;  // the decoder holds bytes of an unfinished generated character
  int shifted_ = 0;                 // tokens dropped by context shifts, ever
  int exact_ = 0;                   // the first exact_ rows are what a fresh prefill computes
                                    // (rows after a shift's n_keep remember dropped tokens)
  std::vector<TokenLogprob> top_;   // [top_logprobs] of the current token
};

inline std::size_t Session::bytes_needed(const Model& model, const SessionOptions& given) {
  const SessionOptions o = normalized(model, given);
  const ModelConfig& c = model.config();
  const auto f32 = [](std::int64_t n) { return static_cast<std::size_t>(n) * sizeof(float); };
  const std::int64_t batch = batch_rows(o), seq = o.max_seq_len, threads = scratch_threads(o);
  std::size_t bytes = 2 * static_cast<std::size_t>(c.n_layers) * static_cast<std::size_t>(seq) *
                      row_bytes(o.kv_type, c.kv_dim());         // the KV cache
  bytes += f32(seq * c.head_dim);                               // RoPE table
  bytes += ForwardScratch::bytes_needed(model, static_cast<int>(batch), static_cast<int>(threads),
                                        0);                     // activations
  bytes += f32(c.vocab_size);                                   // logits
  bytes += static_cast<std::size_t>(seq) * sizeof(Token);       // tokens
  bytes += GenerateOptions::kMaxTopLogprobs * sizeof(TokenLogprob);  // top alternatives
  bytes += Sampler::bytes_needed(c.vocab_size);
  return bytes;
}

inline std::size_t Session::memory_bytes() const {
  return cache_.byte_size() + rope_table_.byte_size() + scratch_.byte_size() +
         logits_.byte_size() + tokens_.capacity() * sizeof(Token) + sampler_.byte_size() +
         top_.capacity() * sizeof(TokenLogprob);
}

inline float Session::logprob(Span<const float> logits, Token token, int n_top) {
  const double log_total = log_sum_exp(logits.data(), static_cast<std::int64_t>(logits.size()));
  const auto lp = [&](float l) { return static_cast<float>(l - log_total); };
  // The n_top largest, by a min-heap of the best so far (larger logit first, then lower id).
  top_.clear();
  const auto worse = [](const TokenLogprob& a, const TokenLogprob& b) {
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
  };
  for (std::size_t i = 0; i < logits.size() && n_top > 0; ++i) {
    const TokenLogprob candidate{static_cast<Token>(i), logits[i]};
    if (top_.size() < static_cast<std::size_t>(n_top)) {
      top_.push_back(candidate);
      std::push_heap(top_.begin(), top_.end(), worse);
    } else if (worse(candidate, top_.front())) {
      std::pop_heap(top_.begin(), top_.end(), worse);
      top_.back() = candidate;
      std::push_heap(top_.begin(), top_.end(), worse);
    }
  }
  std::sort_heap(top_.begin(), top_.end(), worse);
  for (TokenLogprob& t : top_) t.logprob = lp(t.logprob);
  return lp(logits[static_cast<std::size_t>(token)]);
}

inline GenerateResult Session::generate(std::string_view prompt, const GenerateOptions& options,
                                        const PieceCallback& on_piece) {
  const Tokenizer& tokenizer = model_->tokenizer();
  const bool from_start = options.prompt_mode == PromptMode::kReplace || tokens_.empty();
  return generate(tokenizer.encode(prompt, from_start && tokenizer.add_bos()), options, on_piece);
}

inline GenerateResult Session::generate(Span<const Token> prompt, const GenerateOptions& options,
                                        const PieceCallback& on_piece) {
  // Everything that can be refused is checked before anything changes.
  const Tokenizer& tokenizer = model_->tokenizer();
  if (options.max_new_tokens < 0) {
    throw Error(ErrorCode::kInvalidArgument, "max_new_tokens = " +
                                                 std::to_string(options.max_new_tokens) +
                                                 " must not be negative");
  }
  if (options.top_logprobs < 0 || options.top_logprobs > GenerateOptions::kMaxTopLogprobs) {
    throw Error(ErrorCode::kInvalidArgument,
                "top_logprobs = " + std::to_string(options.top_logprobs) + " is outside [0, " +
                    std::to_string(GenerateOptions::kMaxTopLogprobs) + "]");
  }
  options.sampler.validate();
  StopStrings stops(options.stop);
  const bool replace = options.prompt_mode == PromptMode::kReplace;
  const bool from_start = replace || tokens_.empty();
  std::vector<Token> prompt_tokens(prompt.begin(), prompt.end());
  if (prompt_tokens.empty() && from_start) {
    if (tokenizer.bos() < 0) {
      throw Error(ErrorCode::kTokenizer, "an empty prompt needs a BOS token, and the model has none");
    }
    prompt_tokens.push_back(tokenizer.bos());
  }
  int keep = position();  // cached tokens the call keeps
  if (replace) {
    keep = reusable_prefix(prompt_tokens);
    prompt_tokens.erase(prompt_tokens.begin(), prompt_tokens.begin() + keep);
  }
  int discard = 0;
  if (!prompt_tokens.empty()) {
    check_ids(prompt_tokens);
    if (replace) {
      if (prompt_tokens.size() > static_cast<std::size_t>(max_seq_len_ - keep)) {
        throw Error(ErrorCode::kContextFull,
                    std::to_string(keep + prompt_tokens.size()) +
                        " prompt tokens do not fit: the context holds " +
                        std::to_string(max_seq_len_));
      }
    } else {
      discard = discard_needed(prompt_tokens.size(), keep);
    }
  }

  GenerateResult result;
  result.prompt_tokens = static_cast<int>(prompt_tokens.size());
  result.cached_tokens = replace ? keep : 0;
  const int shifted_before = shifted_;
  truncate(keep);
  if (discard > 0) shift(discard);
  const State before = state();
  try {
    if (!seeded_) reseed(options.sampler.seed);
    sampler_.set_options(options.sampler);
    // Bytes of a character that the last call generated but did not finish, when the caller's
    // next token ends it: they become U+FFFD, generated text, streamed below.
    std::string ended;
    const Token caller_next = decoded_ < position() ? tokens_[static_cast<std::size_t>(decoded_)]
                              : prompt_tokens.empty() ? -1
                                                      : prompt_tokens.front();
    if (decoder_ && pending_generated_ && caller_next >= 0) {
      if (!tokenizer.is_byte(caller_next)) decoder_->flush(ended);
      pending_generated_ = false;
    }
    sync_decoder();

    using Clock = std::chrono::steady_clock;
    const auto prefill_start = Clock::now();
    Span<const float> next = prompt_tokens.empty() ? logits_after_last() : prefill(prompt_tokens);
    sync_decoder();  // the prompt's text is the caller's
    const auto decode_start = Clock::now();
    result.prefill_seconds = std::chrono::duration<double>(decode_start - prefill_start).count();

    // Bytes of text given to the stop-string matcher and passed on by it, and for each token
    // this call steps, where its text starts and ends among the bytes given.
    std::size_t fed = 0, emitted = 0;
    std::vector<std::size_t> token_start, token_end;
    std::string piece, text;
    const auto feed = [&](const std::string& s) {
      text.clear();
      const bool matched = stops.feed(s, text);
      fed += s.size();
      emitted += text.size();
      return matched;
    };
    const auto emit = [&on_piece](const std::string& s) {
      return s.empty() || !on_piece || on_piece(s);
    };
    bool matched = feed(ended);
    bool go_on = emit(text);
    int held = 0;  // stepped tokens whose text reaches into a stop string
    while (go_on && !matched) {
      if (result.generated_tokens == options.max_new_tokens) {
        result.stop_reason = StopReason::kMaxNewTokens;
        break;
      }
      if (position() == max_seq_len_ && options_.on_full == OnFull::kError) {
        result.stop_reason = StopReason::kContextFull;
        break;
      }
      const Token token = sampler_.sample(next, tokens_);  // it penalises the last repeat_last_n
      if (token == tokenizer.eos() || token == tokenizer.bos() ||
          std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) !=
              options.stop_tokens.end()) {
        result.stop_reason = StopReason::kEndOfSequence;
        break;
      }
      piece.clear();
      sync_decoder();  // a shift that moved nothing may have dropped the decoder's last token
      decoder_->push(token, piece);
      pending_generated_ = decoder_->pending_bytes() > 0;
      const std::size_t start = fed, emitted_before = emitted;
      matched = feed(piece);
      ++result.generated_tokens;
      if (matched) {
        // This token and the stepped ones whose text reaches past the stop string's start
        // (emitted) are dropped, and the text ends where the first of them begins, so that the
        // cache ends where the text does. (Text of theirs streamed by an earlier feed stays
        // streamed: a stop string that begins in a token before the one it ends in.)
        const std::size_t n_stepped = std::min(
            token_end.size(), static_cast<std::size_t>(position() - std::min(options_.n_keep, position())));
        while (static_cast<std::size_t>(held) < n_stepped &&
               token_end[token_end.size() - 1 - held] > emitted) {
          ++held;
        }
        const std::size_t boundary = held > 0 ? token_start[token_start.size() - held] : start;
        const std::size_t cut_at = std::max(emitted_before, boundary);
        if (emitted > cut_at) {
          text.resize(text.size() - (emitted - cut_at));
          emitted = cut_at;
        }
      }
      if (options.on_token) {
        const float lp = logprob(next, token, options.top_logprobs);
        go_on = options.on_token(TokenEvent{token, lp, top_, text});
      }
      go_on = emit(text) && go_on;
      if (matched) break;  // the token in which the stop string ends is not stepped
      next = step(token);
      decoded_ = position();
      token_start.push_back(start);
      token_end.push_back(fed);
    }
    if (matched) {
      result.stop_reason = StopReason::kStopString;
      result.dropped_tokens = held + 1;
      truncate(position() - held);
      decoder_.reset();  // it saw the dropped token; rebuilt from the tokens when next needed
      pending_generated_ = false;
    } else {
      if (!go_on) result.stop_reason = StopReason::kCallback;
      // Text held back for a possible stop string is released: a stop string must lie within
      // one call. After a callback asked to stop, this last piece is still delivered (its
      // return value no longer matters), so that the stream holds the text of every token in
      // the cache.
      text.clear();
      stops.flush(text);
      emit(text);
    }
    result.shifted_tokens = shifted_ - shifted_before;
    result.decode_seconds = std::chrono::duration<double>(Clock::now() - decode_start).count();
  } catch (...) {
    restore(before);
    throw;
  }
  return result;
}

inline Session Session::fork() const {
  Session copy(model_, options_, memory_bytes());
  copy.tokens_ = tokens_;
  copy.cache_.copy_rows_from(cache_, position());
  std::copy_n(logits_.data(), config_.vocab_size, copy.logits_.data());
  copy.logits_valid_ = logits_valid_;
  copy.sampler_.set_state(sampler_.state());
  copy.seeded_ = seeded_;
  copy.decoder_ = decoder_;  // points at the same (shared, immutable) model's tokenizer
  copy.decoded_ = decoded_;
  copy.pending_generated_ = pending_generated_;
  copy.shifted_ = shifted_;
  copy.exact_ = exact_;
  return copy;
}

inline void Session::save(std::ostream& out) const {
  std::string head(kMagic, 8);
  detail::append_le<std::uint32_t>(head, kFileVersion);
  detail::append_le<std::uint64_t>(head, model_->fingerprint());
  detail::append_le<std::uint32_t>(head, static_cast<std::uint32_t>(cache_.type()));
  detail::append_le<std::uint32_t>(head, static_cast<std::uint32_t>(config_.n_layers));
  detail::append_le<std::uint32_t>(head, static_cast<std::uint32_t>(config_.kv_dim()));
  detail::append_le<std::uint32_t>(head, static_cast<std::uint32_t>(position()));
  detail::append_le<std::uint32_t>(head, static_cast<std::uint32_t>(exact_));
  detail::append_le<std::uint8_t>(head, seeded_ ? 1 : 0);
  detail::append_le<std::uint8_t>(head, logits_valid_ ? 1 : 0);
  detail::append_le<std::uint16_t>(head, 0);
  detail::append_le<std::uint64_t>(head, sampler_.state());
  detail::Fnv1a head_hash;
  head_hash.add(head.data(), head.size());
  detail::append_le<std::uint64_t>(head, head_hash.value());
  for (Token t : tokens_) detail::append_le<std::int32_t>(head, t);
  if (logits_valid_) {
    for (float l : logits()) detail::append_le<float>(head, l);
  }
  detail::Fnv1a hash;
  const auto write = [&](const void* data, std::size_t n) {
    hash.add(data, n);
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  };
  write(head.data(), head.size());
  // Cache rows as they are in memory: kvlm runs on little-endian hosts, where that is the file's
  // order (as for the weights it maps from GGUF files).
  const std::size_t rows_bytes = static_cast<std::size_t>(position()) * cache_.row_bytes();
  for (int l = 0; l < config_.n_layers; ++l) {
    write(cache_.keys(l).data, rows_bytes);
    write(cache_.values(l).data, rows_bytes);
  }
  std::string tail;
  detail::append_le<std::uint64_t>(tail, hash.value());
  out.write(tail.data(), static_cast<std::streamsize>(tail.size()));
  if (!out) throw Error(ErrorCode::kIo, "session: cannot write the session");
}

inline void Session::load(std::istream& in) {
  const std::string source = "session file";
  constexpr std::size_t kHeadBytes = 8 + 4 + 8 + 4 + 4 + 4 + 4 + 4 + 1 + 1 + 2 + 8 + 8;
  std::string head(kHeadBytes, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  const auto bytes = [](const std::string& s) { return reinterpret_cast<const std::byte*>(s.data()); };
  detail::ByteCursor h(bytes(head), static_cast<std::size_t>(in.gcount()), source);
  const std::byte* magic = h.read_bytes(8, "the magic");
  if (std::string(reinterpret_cast<const char*>(magic), 8) != std::string(kMagic, 8)) {
    throw Error(ErrorCode::kFormat, "session: not a kvlm session file (no KVLMSESS magic)");
  }
  const auto version = h.read<std::uint32_t>("the version");
  if (version != kFileVersion) {
    throw Error(ErrorCode::kFormat, "session: file version " + std::to_string(version) +
                                        "; this kvlm reads version " +
                                        std::to_string(kFileVersion));
  }
  const auto fingerprint = h.read<std::uint64_t>("the model fingerprint");
  const auto type = h.read<std::uint32_t>("the cache type");
  const auto n_layers = h.read<std::uint32_t>("n_layers");
  const auto kv_dim = h.read<std::uint32_t>("kv_dim");
  const auto n_tokens = h.read<std::uint32_t>("the token count");
  const auto exact = h.read<std::uint32_t>("the exact row count");
  const auto seeded = h.read<std::uint8_t>("the seeded flag");
  const auto logits_valid = h.read<std::uint8_t>("the logits flag");
  const auto reserved = h.read<std::uint16_t>("the reserved field");
  const auto rng = h.read<std::uint64_t>("the random state");
  detail::Fnv1a head_hash;
  head_hash.add(head.data(), h.offset());
  if (h.read<std::uint64_t>("the header checksum") != head_hash.value()) {
    throw Error(ErrorCode::kFormat, "session: the header is damaged (checksum mismatch)");
  }
  if (fingerprint != model_->fingerprint() || n_layers != static_cast<std::uint32_t>(config_.n_layers) ||
      kv_dim != static_cast<std::uint32_t>(config_.kv_dim())) {
    throw Error(ErrorCode::kInvalidArgument,
                "session: the file was saved with another model (fingerprint " +
                    std::to_string(fingerprint) + ", this model's is " +
                    std::to_string(model_->fingerprint()) + ")");
  }
  if (type != static_cast<std::uint32_t>(cache_.type())) {
    const std::optional<DType> known = dtype_from_ggml(type);
    throw Error(ErrorCode::kInvalidArgument,
                "session: the file holds a cache of type " +
                    (known ? std::string(to_string(*known)) : "id " + std::to_string(type)) +
                    "; this session's cache stores " + to_string(cache_.type()));
  }
  if (n_tokens > static_cast<std::uint32_t>(max_seq_len_)) {
    throw Error(ErrorCode::kInvalidArgument,
                "session: the file holds " + std::to_string(n_tokens) +
                    " tokens, more than this session's context of " + std::to_string(max_seq_len_));
  }
  if (exact > n_tokens || seeded > 1 || logits_valid > 1 || reserved != 0 ||
      (logits_valid == 1 && n_tokens == 0)) {
    throw Error(ErrorCode::kFormat, "session: the header is damaged");
  }
  // Everything after the header, bounded by this session's own capacity.
  const std::size_t rows_bytes = static_cast<std::size_t>(n_tokens) * cache_.row_bytes();
  const std::size_t body_bytes = n_tokens * sizeof(Token) +
                                 (logits_valid ? logits_.byte_size() : 0) +
                                 2 * static_cast<std::size_t>(config_.n_layers) * rows_bytes + 8;
  // Read a chunk at a time, so that a short stream claiming a long body allocates what it has.
  std::string body;
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  try {
    while (body.size() < body_bytes && in) {
      const std::size_t at = body.size();
      body.resize(at + std::min(kChunk, body_bytes - at));
      in.read(body.data() + at, static_cast<std::streamsize>(body.size() - at));
      body.resize(at + static_cast<std::size_t>(in.gcount()));
    }
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::kOutOfMemory, "session: cannot hold the " + std::to_string(body_bytes) +
                                             "-byte session record to check it");
  }
  detail::ByteCursor b(bytes(body), body.size(), source);
  b.seek(body_bytes - 8, "the checksum");  // throws for a short stream
  detail::Fnv1a hash;
  hash.add(head.data(), head.size());
  hash.add(body.data(), body_bytes - 8);
  if (b.read<std::uint64_t>("the checksum") != hash.value()) {
    throw Error(ErrorCode::kFormat, "session: the file is damaged (checksum mismatch)");
  }
  b.seek(0, "the tokens");
  std::vector<Token> tokens(n_tokens);
  for (Token& t : tokens) t = b.read<std::int32_t>("the tokens");
  if (n_tokens > 0) check_ids(tokens);

  // Nothing can fail from here on.
  tokens_.assign(tokens.begin(), tokens.end());
  logits_valid_ = logits_valid == 1;
  if (logits_valid_) {
    for (int i = 0; i < config_.vocab_size; ++i) logits_.data()[i] = b.read<float>("the logits");
  }
  for (int l = 0; l < config_.n_layers; ++l) {
    std::memcpy(cache_.keys(l).data, b.read_bytes(rows_bytes, "the keys"), rows_bytes);
    std::memcpy(cache_.values(l).data, b.read_bytes(rows_bytes, "the values"), rows_bytes);
  }
  sampler_.set_state(rng);
  seeded_ = seeded == 1;
  exact_ = static_cast<int>(exact);
  decoded_ = 0;
  pending_generated_ = false;
  decoder_.reset();  // rebuilt from the tokens when next needed
}

inline void Session::save_file(const std::string& path) const {
  detail::write_file_atomically(path, [this](std::ostream& out) { save(out); });
}

inline void Session::load_file(const std::string& path) {
  { const detail::RegularFile checked(path); }  // a FIFO or a directory is refused, not waited on
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, path + ": cannot open");
  try {
    load(in);
  } catch (const Error& e) {
    throw Error(e.code(), path + ": " + e.what());
  }
}

}  // namespace kvlm
