#pragma once
// Sampler: turns one decode step's logits into the next token. Greedy, temperature, top-k,
// top-p, min-p and a repetition penalty, drawn with its own seeded generator.
//
// The chain, in this order:
//   1. repetition penalty: each distinct token among the last repeat_last_n of `recent` has its
//      logit divided by repeat_penalty if positive and multiplied by it otherwise (CTRL, Keskar
//      et al. 2019, as llama.cpp does), once however often it occurs;
//   2. temperature == 0: return the largest logit, the lowest id among equal ones; nothing is
//      drawn and the generator does not advance;
//   3. top-k: keep the top_k largest logits;
//   4. softmax of logit / temperature over what is left;
//   5. top-p: keep the smallest set of most probable tokens whose mass is >= top_p (at least one);
//   6. min-p: drop tokens whose probability is < min_p * the largest probability;
//   7. renormalise what is left and draw one token.
// Temperature comes before top-p and min-p (as in llama2.c), so those two see the tempered
// distribution; llama.cpp's default chain applies temperature after them.
//
// Non-finite logits: NaN is treated as -inf. A -inf logit has probability 0 and is never returned;
// if every logit is -inf, sample() throws. Tokens at +inf share all the probability equally.
//
// Determinism: the same seed, options, logits and `recent` give the same tokens on every run,
// platform and thread count. The generator is splitmix64 rather than a std:: distribution (whose
// output differs between standard libraries), and candidates are ordered by a strict total order
// (larger logit first, then lower id), so sorting is unambiguous. The one platform-dependent step
// is std::exp: last-bit differences between math libraries can change a draw only when the
// uniform number lands within that rounding of the boundary between two tokens.
//
// Cost per call: O(vocab_size), plus O(vocab_size * log(top_k)) for top-k; with top-k off and
// top_p < 1, O(vocab_size * log(nucleus size)) to sort out the nucleus, never a full sort of the
// vocabulary. sample() allocates nothing: the constructor sizes every buffer. A Sampler is not
// thread-safe; give each Session its own. A copy carries the generator's state, so it repeats
// the original's draws.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/error.hpp"
#include "kvlm/span.hpp"

namespace kvlm {

struct SamplerOptions {
  /// The seed of a default SamplerOptions: "kvlm" in ASCII.
  static constexpr std::uint64_t kDefaultSeed = 0x6b766c6d;

  float temperature = 0.8f;     // 0: greedy
  int top_k = 40;               // 0 (or >= vocab_size): off
  float top_p = 0.95f;          // 1: off
  float min_p = 0.05f;          // 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;       // how many of the most recent tokens the penalty looks at
  std::uint64_t seed = kDefaultSeed;

  /// Checks every field's range.
  /// @throws Error (kInvalidArgument) naming the field and its value if temperature is negative,
  ///         infinite or NaN; top_k < 0; top_p is not in (0, 1]; min_p is not in [0, 1];
  ///         repeat_penalty is not positive and finite; or repeat_last_n < 0.
  void validate() const;
};

namespace detail {

// splitmix64 (Steele, Lea and Flood 2014, as in Vigna's reference code): one 64-bit state, passes
// BigCrush, and every seed, 0 included, is a good one.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  // The top 24 bits as a float in [0, 1): each of the 2^24 values is exact and 1 is never reached.
  float next_unit_float() { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }

  std::uint64_t state() const { return state_; }

 private:
  std::uint64_t state_;
};

inline Error invalid_sampler_option(const char* field, const std::string& value,
                                    const char* requirement) {
  return Error(ErrorCode::kInvalidArgument,
               std::string("SamplerOptions: ") + field + " = " + value + " " + requirement);
}

}  // namespace detail

inline void SamplerOptions::validate() const {
  // Written as !(in range) so that NaN, which fails every comparison, is rejected too.
  if (!(temperature >= 0.0f && std::isfinite(temperature))) {
    throw detail::invalid_sampler_option("temperature", std::to_string(temperature),
                                         "must be finite and >= 0 (0 is greedy)");
  }
  if (top_k < 0) {
    throw detail::invalid_sampler_option("top_k", std::to_string(top_k), "must be >= 0 (0 is off)");
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    throw detail::invalid_sampler_option("top_p", std::to_string(top_p),
                                         "must be in (0, 1] (1 is off)");
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    throw detail::invalid_sampler_option("min_p", std::to_string(min_p),
                                         "must be in [0, 1] (0 is off)");
  }
  // An infinite penalty would turn a logit of exactly 0 into 0 * inf = NaN.
  if (!(repeat_penalty > 0.0f && std::isfinite(repeat_penalty))) {
    throw detail::invalid_sampler_option("repeat_penalty", std::to_string(repeat_penalty),
                                         "must be finite and > 0 (1 is off)");
  }
  if (repeat_last_n < 0) {
    throw detail::invalid_sampler_option("repeat_last_n", std::to_string(repeat_last_n),
                                         "must be >= 0");
  }
}

class Sampler {
 public:
  /// Validates the options and sizes every buffer for vocab_size tokens.
  /// @throws Error (kInvalidArgument) if options.validate() does or vocab_size <= 0.
  Sampler(const SamplerOptions& options, int vocab_size);

  /// Picks the next token by the chain described at the top of this header.
  /// logits: [vocab_size], this step's scores; read only. recent: the tokens generated or seen so
  /// far, oldest first; the penalty looks at the last repeat_last_n of them, and only when
  /// repeat_penalty != 1. Allocates nothing. A call that throws leaves the generator unchanged.
  /// @throws Error (kInvalidArgument) if logits.size() != vocab_size, a token the penalty looks at
  ///         is outside [0, vocab_size), or every logit is -inf or NaN.
  Token sample(Span<const float> logits, Span<const Token> recent);

  /// Restarts the random sequence, as if constructed with options.seed = seed.
  void reseed(std::uint64_t seed) { rng_ = detail::SplitMix64(seed); }

  /// Replaces the options but not the generator, which goes on where it is (options.seed is
  /// not used: reseed() restarts the sequence).
  /// @throws Error (kInvalidArgument) if options.validate() does; nothing changes then.
  void set_options(const SamplerOptions& options) {
    options.validate();
    options_ = options;
  }

  /// The bytes of the buffers a sampler for vocab_size tokens allocates (byte_size()).
  static std::size_t bytes_needed(int vocab_size) {
    return static_cast<std::size_t>(vocab_size) * (sizeof(Candidate) + sizeof(unsigned char));
  }
  std::size_t byte_size() const {
    return candidates_.capacity() * sizeof(Candidate) + penalised_.capacity();
  }

  /// The generator's state: set_state(state()) on another sampler continues the same draws.
  std::uint64_t state() const { return rng_.state(); }
  void set_state(std::uint64_t state) { rng_ = detail::SplitMix64(state); }

 private:
  struct Candidate {
    float logit;  // after the repetition penalty
    float prob;   // exp((logit - max) / temperature): unnormalised, the most likely token is 1
    Token id;
  };

  // The order of top-k and top-p: larger logit first, then lower id. A strict total order, so
  // every standard library sorts the candidates identically.
  static bool ranks_before(const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  }

  Span<const Token> penalty_window(Span<const Token> recent) const;
  void apply_penalty(Span<const Token> window);
  std::size_t argmax_index() const;
  std::size_t keep_nucleus(std::size_t n, bool sorted);
  std::size_t keep_above_min_p(std::size_t n);
  Token draw(std::size_t n);

  SamplerOptions options_;
  int vocab_size_;
  detail::SplitMix64 rng_;
  std::vector<Candidate> candidates_;     // [vocab_size]; the first n are the live candidates
  std::vector<unsigned char> penalised_;  // [vocab_size]; all 0 between calls
};

inline Sampler::Sampler(const SamplerOptions& options, int vocab_size)
    : options_(options), vocab_size_(vocab_size), rng_(options.seed) {
  options_.validate();
  if (vocab_size <= 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "Sampler: vocab_size = " + std::to_string(vocab_size) + " must be positive");
  }
  candidates_.resize(static_cast<std::size_t>(vocab_size));
  penalised_.assign(static_cast<std::size_t>(vocab_size), 0);
}

inline Token Sampler::sample(Span<const float> logits, Span<const Token> recent) {
  if (logits.size() != candidates_.size()) {
    throw Error(ErrorCode::kInvalidArgument,
                "Sampler: logits has " + std::to_string(logits.size()) +
                    " elements, expected vocab_size = " + std::to_string(vocab_size_));
  }
  const Span<const Token> window = penalty_window(recent);
  for (std::size_t i = 0; i < window.size(); ++i) {
    if (window[i] < 0 || window[i] >= vocab_size_) {
      throw Error(ErrorCode::kInvalidArgument,
                  "Sampler: recent token " + std::to_string(window[i]) + " at index " +
                      std::to_string(recent.size() - window.size() + i) +
                      " is outside [0, vocab_size = " + std::to_string(vocab_size_) + ")");
    }
  }

  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < candidates_.size(); ++i) {
    const float logit = logits[i];
    candidates_[i] = {std::isnan(logit) ? kNegInf : logit, 0.0f, static_cast<Token>(i)};
  }
  apply_penalty(window);
  const Candidate best = candidates_[argmax_index()];
  if (best.logit == kNegInf) {
    throw Error(ErrorCode::kInvalidArgument, "Sampler: every logit is -inf or NaN");
  }
  if (options_.temperature == 0.0f) return best.id;

  std::size_t n = candidates_.size();
  const auto k = static_cast<std::size_t>(options_.top_k);
  const bool top_k_on = k > 0 && k < n;
  if (top_k_on) {
    // O(n log k): each candidate is compared with the k-th best so far, and few displace it.
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(k),
                      candidates_.end(), ranks_before);
    n = k;
  }
  // Relative to the largest logit, so exp never overflows and the most likely token gets exactly
  // exp(0) = 1. At +inf, (inf - inf) would be NaN: the +inf tokens share the mass instead.
  // exp(x) for x < kExpZero rounds to 0 in float; skipping it avoids libm's slow underflow path,
  // which low temperatures otherwise hit for most of the vocabulary.
  constexpr float kExpZero = -104.0f;
  const float max_logit = best.logit;
  const bool infinite_max = std::isinf(max_logit);
  for (std::size_t j = 0; j < n; ++j) {
    Candidate& c = candidates_[j];
    if (infinite_max) {
      c.prob = c.logit == max_logit ? 1.0f : 0.0f;
    } else {
      const float x = (c.logit - max_logit) / options_.temperature;
      c.prob = x < kExpZero ? 0.0f : std::exp(x);
    }
  }
  n = keep_nucleus(n, top_k_on);
  n = keep_above_min_p(n);
  return draw(n);
}

inline Span<const Token> Sampler::penalty_window(Span<const Token> recent) const {
  if (options_.repeat_penalty == 1.0f) return {};
  const std::size_t count =
      std::min(recent.size(), static_cast<std::size_t>(options_.repeat_last_n));
  return recent.subspan(recent.size() - count, count);
}

inline void Sampler::apply_penalty(Span<const Token> window) {
  // candidates_[t] is token t until top-k or top-p reorders them.
  const float penalty = options_.repeat_penalty;
  for (const Token t : window) {
    if (penalised_[t]) continue;
    penalised_[t] = 1;
    float& logit = candidates_[t].logit;
    logit = logit > 0.0f ? logit / penalty : logit * penalty;
  }
  for (const Token t : window) penalised_[t] = 0;
}

// The first of the largest logits: the lowest id, while candidates_ is in id order.
inline std::size_t Sampler::argmax_index() const {
  std::size_t best = 0;
  float best_logit = candidates_[0].logit;
  for (std::size_t i = 1; i < candidates_.size(); ++i) {
    if (candidates_[i].logit > best_logit) {
      best = i;
      best_logit = candidates_[i].logit;
    }
  }
  return best;
}

// Top-p. The candidates must come in descending order; unless top-k already sorted them, they
// are sorted here a batch at a time, doubling the batch until it holds the nucleus. The nucleus
// is usually a small part of the vocabulary, so this costs far less than a full sort, and as
// ranks_before is a total order the result is the same.
inline std::size_t Sampler::keep_nucleus(std::size_t n, bool sorted) {
  if (options_.top_p >= 1.0f) return n;
  double total = 0.0;
  for (std::size_t j = 0; j < n; ++j) total += candidates_[j].prob;
  const double target = static_cast<double>(options_.top_p) * total;  // > 0: total >= 1
  constexpr std::size_t kFirstBatch = 64;
  const auto first = candidates_.begin();
  std::size_t n_sorted = sorted ? n : 0;
  std::size_t kept = 0;
  double mass = 0.0;
  for (;;) {
    const std::size_t end = std::min(n, std::max(kFirstBatch, 2 * n_sorted));
    // The first n_sorted are the best n_sorted, so the next batch comes from the rest.
    std::partial_sort(first + static_cast<std::ptrdiff_t>(n_sorted),
                      first + static_cast<std::ptrdiff_t>(end),
                      first + static_cast<std::ptrdiff_t>(n), ranks_before);
    n_sorted = end;
    while (kept < n_sorted) {
      mass += candidates_[kept++].prob;
      if (mass >= target) return kept;
    }
    // All n and still short of the target: total was summed in another order, and the rounding
    // differs. Keep everything.
    if (n_sorted == n) return n;
  }
}

// The largest unnormalised probability is exactly 1 and top-p always keeps it, so min_p * max
// is min_p itself. Keeps the survivors in order.
inline std::size_t Sampler::keep_above_min_p(std::size_t n) {
  if (options_.min_p == 0.0f) return n;
  const float threshold = options_.min_p;
  const auto first = candidates_.begin();
  const auto last = std::remove_if(first, first + static_cast<std::ptrdiff_t>(n),
                                   [threshold](const Candidate& c) { return c.prob < threshold; });
  return static_cast<std::size_t>(last - first);
}

// Inverse-CDF draw over the first n candidates: renormalising is folded into scaling the uniform
// number by the total mass. Sums are in double, in a fixed order.
inline Token Sampler::draw(std::size_t n) {
  double total = 0.0;
  for (std::size_t j = 0; j < n; ++j) total += candidates_[j].prob;
  // u <= 1 - 2^-24, so target < total, and the running mass reaches total (the same additions in
  // the same order) at the last token with probability > 0 at the latest: a token of
  // probability 0 is never returned.
  const double target = static_cast<double>(rng_.next_unit_float()) * total;
  double mass = 0.0;
  for (std::size_t j = 0; j + 1 < n; ++j) {
    mass += candidates_[j].prob;
    if (target < mass) return candidates_[j].id;
  }
  return candidates_[n - 1].id;
}

}  // namespace kvlm
