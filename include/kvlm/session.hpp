#pragma once
// Session: one conversation with a model. It owns a KV cache, the tokens in it and every buffer a
// forward pass needs, all sized when it is constructed, so a decode step allocates nothing.
// prefill() runs a prompt as one batch (matrix-matrix products), step() decodes one token; both
// compute Q/K/V for the new tokens only, write K/V at their positions and attend over the cache.
// generate() is the high-level loop: tokenize, prefill, sample, step, stream text.
//
// A Session is used by one thread at a time; sessions on one shared Model may run concurrently.
// It moves but does not copy. A call that throws leaves the position and the cache as they were.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/decoder_block.hpp"
#include "kvlm/detail/parallel.hpp"
#include "kvlm/detail/stop_strings.hpp"
#include "kvlm/error.hpp"
#include "kvlm/kv_cache.hpp"
#include "kvlm/matmul.hpp"
#include "kvlm/model.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/sampler.hpp"
#include "kvlm/span.hpp"
#include "kvlm/tensor.hpp"
#include "kvlm/tokenizer.hpp"

namespace kvlm {

/// How a step treats the tokens before it.
enum class CacheMode {
  kCached,     // K/V of earlier positions come from the cache: work per step is one token
  kRecompute,  // every call re-runs the whole sequence from position 0, as without a KV cache:
               // step t costs t token-forwards. For tests and benchmarks of what the cache saves.
};

struct SessionOptions {
  int max_seq_len = 0;   // context length; 0 = the model's max_seq_len (may exceed it)
  int max_batch = 512;   // most tokens one forward pass takes; longer prompts run in chunks
  int n_threads = 0;     // 0 = every core of the machine
  CacheMode cache_mode = CacheMode::kCached;
};

struct GenerateOptions {
  int max_new_tokens = 256;
  SamplerOptions sampler;
  std::vector<std::string> stop;  // generation ends before the first of these strings
};

enum class StopReason {
  kEndOfSequence,  // the model produced EOS (or BOS, which llama2.c models emit between stories)
  kMaxNewTokens,
  kStopString,
  kContextFull,
  kCallback,  // the callback returned false
};

struct GenerateResult {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  StopReason stop_reason = StopReason::kMaxNewTokens;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // sampling and steps of the generated tokens
};

/// Receives each piece of generated text (complete UTF-8); returns false to stop generating.
/// An empty callback discards the text.
using PieceCallback = std::function<bool(std::string_view piece)>;

class Session {
 public:
  /// @throws Error(kInvalidArgument) if an option is out of range or the buffers cannot be
  ///         allocated.
  explicit Session(std::shared_ptr<const Model> model, const SessionOptions& options = {}) try
      : model_(checked(std::move(model), options)),
        config_(model_->config()),
        max_seq_len_(options.max_seq_len > 0 ? options.max_seq_len : config_.max_seq_len),
        n_threads_(options.n_threads > 0 ? options.n_threads : detail::hardware_threads()),
        cache_mode_(options.cache_mode),
        // Recomputing runs the whole sequence as one batch, so its batch is the context.
        batch_(cache_mode_ == CacheMode::kRecompute ? max_seq_len_
                                                    : std::min(options.max_batch, max_seq_len_)),
        cache_({config_.n_layers, max_seq_len_, config_.n_kv_heads, config_.head_dim}),
        rope_table_(config_.head_dim, max_seq_len_, config_.rope_theta),
        x_({batch_, config_.dim}),
        scratch_(config_, batch_, max_seq_len_, n_threads_),
        logits_({config_.vocab_size}) {
    tokens_.reserve(static_cast<std::size_t>(max_seq_len_));
    detail::start_threads(n_threads_);
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::kInvalidArgument,
                "cannot allocate a session of " + std::to_string(options.max_seq_len) +
                    " positions (its KV cache alone needs 2 * n_layers * max_seq_len * kv_dim "
                    "floats); choose a smaller max_seq_len");
  }

  Session(Session&&) noexcept = default;
  Session& operator=(Session&&) noexcept = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Runs the prompt tokens as one batch (chunks of max_batch) after the tokens already in the
  /// cache, and returns the logits that follow the last one: [vocab_size], valid until the next
  /// call on this session.
  /// @throws Error: kContextFull if they do not fit, kInvalidArgument for an id outside the
  ///         vocabulary or an empty list.
  Span<const float> prefill(Span<const Token> tokens) {
    append(tokens);
    run(static_cast<int>(tokens.size()), 1, logits_.view());
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
    append(tokens);
    run(static_cast<int>(tokens.size()), static_cast<int>(tokens.size()), logits);
    // Keep the last row too, so that generate() can continue from here.
    std::copy_n(logits.row(logits.rows() - 1), config_.vocab_size, logits_.data());
  }

  /// Tokenizes `prompt` (with BOS when the session is empty), runs it, then samples up to
  /// max_new_tokens tokens, calling on_piece with their text as it becomes complete. Every
  /// sampled token is in the cache afterwards, so a later generate() continues the text; an
  /// empty prompt continues from where the session is (from BOS when it is empty).
  /// @throws Error: kTokenizer if the model has no tokenizer, kContextFull if the prompt does not
  ///         fit, kInvalidArgument for bad options. Nothing has changed when it throws.
  GenerateResult generate(std::string_view prompt, const GenerateOptions& options,
                          const PieceCallback& on_piece) {
    const Tokenizer& tokenizer = model_->tokenizer();
    if (options.max_new_tokens < 0) {
      throw Error(ErrorCode::kInvalidArgument,
                  "max_new_tokens = " + std::to_string(options.max_new_tokens) +
                      " must not be negative");
    }
    for (const std::string& s : options.stop) {
      if (s.empty()) throw Error(ErrorCode::kInvalidArgument, "a stop string is empty");
    }
    Sampler sampler(options.sampler, config_.vocab_size);
    std::vector<Token> prompt_tokens = tokenizer.encode(prompt, tokens_.empty() && tokenizer.add_bos());
    if (prompt_tokens.empty() && tokens_.empty()) prompt_tokens.push_back(tokenizer.bos());
    if (!prompt_tokens.empty()) check(prompt_tokens);
    const auto emit = [&on_piece](const std::string& text) {
      return text.empty() || !on_piece || on_piece(text);
    };

    GenerateResult result;
    result.prompt_tokens = static_cast<int>(prompt_tokens.size());
    StreamingDecoder decoder(tokenizer);
    std::string ignored;
    for (Token t : tokens_) decoder.push(t, ignored);
    for (Token t : prompt_tokens) decoder.push(t, ignored);

    using Clock = std::chrono::steady_clock;
    const auto prefill_start = Clock::now();
    Span<const float> next = prompt_tokens.empty() ? logits_after_last() : prefill(prompt_tokens);
    const auto decode_start = Clock::now();
    result.prefill_seconds = std::chrono::duration<double>(decode_start - prefill_start).count();

    detail::StopStrings stops(options.stop);
    std::string piece, text;
    bool stopped_by_string = false;
    while (true) {
      if (result.generated_tokens == options.max_new_tokens) {
        result.stop_reason = StopReason::kMaxNewTokens;
        break;
      }
      if (position() == max_seq_len_) {
        result.stop_reason = StopReason::kContextFull;
        break;
      }
      const Token token = sampler.sample(next, tokens_);  // it penalises the last repeat_last_n
      if (token == tokenizer.eos() || token == tokenizer.bos()) {
        result.stop_reason = StopReason::kEndOfSequence;
        break;
      }
      piece.clear();
      text.clear();
      decoder.push(token, piece);
      stopped_by_string = stops.feed(piece, text);
      const bool go_on = emit(text);
      next = step(token);
      ++result.generated_tokens;
      if (stopped_by_string || !go_on) {
        result.stop_reason = stopped_by_string ? StopReason::kStopString : StopReason::kCallback;
        break;
      }
    }
    if (!stopped_by_string && result.stop_reason != StopReason::kCallback) {
      piece.clear();
      text.clear();
      decoder.flush(piece);
      stops.feed(piece, text);
      stops.flush(text);
      emit(text);
    }
    result.decode_seconds = std::chrono::duration<double>(Clock::now() - decode_start).count();
    return result;
  }

  /// Tokens in the cache; the next token goes at this position.
  int position() const { return static_cast<int>(tokens_.size()); }
  int max_seq_len() const { return max_seq_len_; }
  int n_threads() const { return n_threads_; }
  Span<const Token> tokens() const { return tokens_; }
  const Model& model() const { return *model_; }
  std::size_t kv_cache_bytes() const { return cache_.byte_size(); }

  /// Drops the last n_tokens tokens; the next call continues from position() - n_tokens.
  /// @throws Error(kInvalidArgument) unless 0 <= n_tokens <= position().
  void rewind(int n_tokens) {
    if (n_tokens < 0 || n_tokens > position()) {
      throw Error(ErrorCode::kInvalidArgument, "rewind(" + std::to_string(n_tokens) +
                                                   "): the session holds " +
                                                   std::to_string(position()) + " tokens");
    }
    tokens_.resize(tokens_.size() - static_cast<std::size_t>(n_tokens));
    logits_valid_ = logits_valid_ && n_tokens == 0;
  }

  /// Empties the session (position 0), keeping its buffers.
  void reset() { rewind(position()); }

 private:
  static std::shared_ptr<const Model> checked(std::shared_ptr<const Model> model,
                                              const SessionOptions& options) {
    if (!model) throw Error(ErrorCode::kInvalidArgument, "Session needs a model");
    // Like llama.cpp's -c, the context may exceed the length the model was trained for (RoPE is
    // defined at every position; quality past it is the model's affair): GGUF files often state
    // a short trained context.
    if (options.max_seq_len < 0 || options.max_seq_len > detail::kMaxDimension) {
      throw Error(ErrorCode::kInvalidArgument,
                  "max_seq_len = " + std::to_string(options.max_seq_len) + " is outside [0, " +
                      std::to_string(detail::kMaxDimension) + "] (0 = the model's " +
                      std::to_string(model->config().max_seq_len) + ")");
    }
    if (options.max_batch < 1) {
      throw Error(ErrorCode::kInvalidArgument,
                  "max_batch = " + std::to_string(options.max_batch) + " must be positive");
    }
    if (options.n_threads < 0) {
      throw Error(ErrorCode::kInvalidArgument,
                  "n_threads = " + std::to_string(options.n_threads) + " must not be negative");
    }
    return model;
  }

  Span<const float> logits() const {
    return Span<const float>(logits_.data(), static_cast<std::size_t>(config_.vocab_size));
  }

  // The logits after the last token in the cache, recomputing them if a rewind dropped them.
  Span<const float> logits_after_last() {
    if (logits_valid_) return logits();
    const Token last = tokens_.back();
    tokens_.pop_back();
    return step(last);
  }

  // Validates tokens before anything changes: ids in the vocabulary, room in the context.
  void check(Span<const Token> tokens) const {
    if (tokens.empty()) throw Error(ErrorCode::kInvalidArgument, "no tokens to process");
    if (tokens.size() > static_cast<std::size_t>(max_seq_len_ - position())) {
      throw Error(ErrorCode::kContextFull,
                  std::to_string(tokens.size()) + " tokens do not fit: the context holds " +
                      std::to_string(max_seq_len_) + " and " + std::to_string(position()) +
                      " are in use");
    }
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
        throw Error(ErrorCode::kInvalidArgument,
                    "token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) +
                        ")");
      }
    }
  }

  void append(Span<const Token> tokens) {
    check(tokens);
    tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());  // within the reserved capacity
  }

  // Runs the last n_new tokens of tokens_ (all of them when recomputing) and writes the logits
  // after the last n_logits of them into logits: [n_logits, vocab_size].
  void run(int n_new, int n_logits, TensorView<float> logits) {
    const int end = position();
    const int start = cache_mode_ == CacheMode::kCached ? end - n_new : 0;
    forward(start, end, n_logits, logits);
    logits_valid_ = true;
  }

  // The forward pass over tokens_[start_pos, end_pos), in chunks of at most batch_ tokens:
  // embed, the decoder blocks (each writes K/V at the chunk's positions and attends over
  // [0, chunk end)), then the final norm and classifier for the rows whose logits are wanted.
  void forward(int start_pos, int end_pos, int n_logits, TensorView<float> logits) {
    const int first_logit = end_pos - n_logits;  // position whose logits go to row 0
    for (int chunk = start_pos; chunk < end_pos; chunk += batch_) {
      const int n = std::min(batch_, end_pos - chunk);
      TensorView<float> x = x_.view().rows_slice(0, n);  // [n, dim]
      embed(tokens_.data() + chunk, model_->token_embedding(), x);
      for (int l = 0; l < config_.n_layers; ++l) {
        decoder_block(config_, model_->block(l), rope_table_, chunk, x, cache_.keys(l),
                      cache_.values(l), scratch_, n_threads_);
      }
      const int begin = std::max(chunk, first_logit);
      if (begin >= chunk + n) continue;
      const int rows = chunk + n - begin;
      TensorView<float> normed = scratch_.xb.view().rows_slice(0, rows);
      rms_norm(x.rows_slice(begin - chunk, rows), model_->final_norm(), config_.norm_eps, normed);
      matmul(normed, model_->classifier(), logits.rows_slice(begin - first_logit, rows),
             scratch_.matmul, n_threads_);
    }
  }

  std::shared_ptr<const Model> model_;
  ModelConfig config_;
  int max_seq_len_;
  int n_threads_;
  CacheMode cache_mode_;
  int batch_;                       // rows of every activation buffer
  std::vector<Token> tokens_;       // [position()], capacity max_seq_len
  KVCache<float> cache_;            // per layer [max_seq_len, n_kv_heads * head_dim], K and V
  RopeTable rope_table_;            // [max_seq_len, head_dim / 2, 2]
  Tensor<float> x_;                 // [batch, dim]: the residual stream
  BlockScratch scratch_;            // per-layer activations for up to batch tokens
  Tensor<float> logits_;            // [vocab_size]: after the last token run
  bool logits_valid_ = false;       // logits_ belong to the current last token
};

}  // namespace kvlm
