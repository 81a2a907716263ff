#pragma once
// ModelConfig: the hyperparameters of a Llama-architecture model, as read from a file, and
// validate(), which every loader calls before any size from the file is used.

#include <cmath>
#include <cstdint>
#include <string>

#include "kvlm/error.hpp"

namespace kvlm {

/// A token id: an index into the model's vocabulary, [0, vocab_size).
using Token = std::int32_t;

struct ModelConfig {
  int dim = 0;          // width of the residual stream
  int hidden_dim = 0;   // width of the gated MLP
  int n_layers = 0;
  int n_heads = 0;      // query heads
  int n_kv_heads = 0;   // key/value heads; n_heads % n_kv_heads == 0 (GQA; == n_heads is MHA)
  int head_dim = 0;     // per head; even, since RoPE rotates pairs
  int vocab_size = 0;
  int max_seq_len = 0;  // the longest context the model was trained for
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool shared_classifier = true;  // the classifier reuses the token embedding table

  int group() const { return n_heads / n_kv_heads; }  // query heads per KV head
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  /// Checks that the sizes make sense together and are small enough that no size product overflows.
  /// @throws Error (kConfig) naming the first field that does not.
  void validate() const;
};

namespace detail {

// No dimension of a model that fits in memory comes near 2^24; checking each field against it
// first keeps every product below (q_dim, kv_dim, matrix element counts) far from overflow.
constexpr long long kMaxDimension = 1LL << 24;

inline void require_dimension(const char* field, long long value) {
  if (value <= 0 || value > kMaxDimension) {
    throw Error(ErrorCode::kConfig, std::string("config: ") + field + " = " +
                                        std::to_string(value) + " is outside [1, " +
                                        std::to_string(kMaxDimension) + "]");
  }
}

}  // namespace detail

inline void ModelConfig::validate() const {
  detail::require_dimension("dim", dim);
  detail::require_dimension("hidden_dim", hidden_dim);
  detail::require_dimension("n_layers", n_layers);
  detail::require_dimension("n_heads", n_heads);
  detail::require_dimension("n_kv_heads", n_kv_heads);
  detail::require_dimension("head_dim", head_dim);
  detail::require_dimension("vocab_size", vocab_size);
  detail::require_dimension("max_seq_len", max_seq_len);
  detail::require_dimension("n_heads * head_dim", (long long)n_heads * head_dim);
  if (n_heads % n_kv_heads != 0) {
    throw Error(ErrorCode::kConfig, "config: n_heads = " + std::to_string(n_heads) +
                                        " is not divisible by n_kv_heads = " +
                                        std::to_string(n_kv_heads));
  }
  if (head_dim % 2 != 0) {
    throw Error(ErrorCode::kConfig, "config: head_dim = " + std::to_string(head_dim) +
                                        " is odd; RoPE rotates pairs of dimensions");
  }
  if (!(rope_theta > 0.0f) || !(norm_eps > 0.0f) || !std::isfinite(rope_theta) ||
      !std::isfinite(norm_eps)) {
    throw Error(ErrorCode::kConfig, "config: rope_theta and norm_eps must be positive and finite");
  }
}

}  // namespace kvlm
