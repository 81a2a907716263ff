#pragma once
// KVCache: the keys and values of every layer for positions [0, max_seq_len), allocated once when
// a session is created. A forward pass over tokens [start_pos, start_pos + n_tokens) writes their
// K/V rows at those positions and attention then reads rows [0, start_pos + n_tokens), so a step
// never recomputes the prefix.

#include <cstddef>
#include <cstdint>

#include "kvlm/detail/assert.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

struct KVCacheShape {
  int n_layers = 0;
  int max_seq_len = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
};

/// T is the element type the cache stores (float now; narrower types later).
template <typename T = float>
class KVCache {
 public:
  explicit KVCache(const KVCacheShape& shape)
      : shape_(shape),
        data_({shape.n_layers, 2, std::int64_t{shape.max_seq_len} * shape.n_kv_heads *
                                      shape.head_dim}) {}

  const KVCacheShape& shape() const { return shape_; }

  // [max_seq_len, n_kv_heads * head_dim]: row p holds position p's keys, head after head.
  TensorView<T> keys(int layer) { return part(layer, 0); }
  TensorView<T> values(int layer) { return part(layer, 1); }
  TensorView<const T> keys(int layer) const { return const_cast<KVCache*>(this)->part(layer, 0); }
  TensorView<const T> values(int layer) const {
    return const_cast<KVCache*>(this)->part(layer, 1);
  }

  /// 2 * n_layers * max_seq_len * n_kv_heads * head_dim * sizeof(T).
  std::size_t byte_size() const { return data_.byte_size(); }

 private:
  TensorView<T> part(int layer, int which) {
    KVLM_ASSERT(layer >= 0 && layer < shape_.n_layers);
    const std::int64_t row = std::int64_t{shape_.n_kv_heads} * shape_.head_dim;
    T* base = data_.data() + (std::int64_t{layer} * 2 + which) * shape_.max_seq_len * row;
    return TensorView<T>(base, {shape_.max_seq_len, row});
  }

  KVCacheShape shape_;
  Tensor<T> data_;  // [n_layers, 2 (K, V), max_seq_len * n_kv_heads * head_dim]
};

}  // namespace kvlm
