#pragma once
// KVCache: the keys and values of every layer for positions [0, max_seq_len), allocated once when
// a session is created. A forward pass over tokens [start_pos, start_pos + n_tokens) writes their
// K/V rows at those positions and attention then reads rows [0, start_pos + n_tokens), so a step
// never recomputes the prefix.
//
// The cache stores F32 (exact), F16 or BF16 (half the bytes), or Q8_0 (blocks of 32 with a
// float16 scale along each row: 34 bytes per 32 values, 0.27x F32). Rows are written from float
// (kernels::scalar::from_float, the reference quantizer) and read back as float a tile at a
// time by attention; F32 rows are used in place.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "kvlm/detail/assert.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/kernels/kernels.hpp"
#include "kvlm/kernels/scalar.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

struct KVCacheShape {
  int n_layers = 0;
  int max_seq_len = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  DType type = DType::kF32;  // F32, F16, BF16 or Q8_0

  std::int64_t kv_dim() const { return std::int64_t{n_kv_heads} * head_dim; }
};

/// One layer's keys or values: [rows] rows of `cols` elements of `type`, row_bytes apart. Row p
/// holds position p's keys (or values), head after head. Does not own its memory.
struct KVRows {
  std::byte* data = nullptr;
  DType type = DType::kF32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;  // n_kv_heads * head_dim
  std::size_t row_bytes = 0;

  KVRows() = default;
  KVRows(std::byte* data, DType type, std::int64_t rows, std::int64_t cols)
      : data(data), type(type), rows(rows), cols(cols), row_bytes(kvlm::row_bytes(type, cols)) {}
  /// F32 rows from a float matrix [rows, cols] (tests and benchmarks build caches this way).
  explicit KVRows(TensorView<float> m)
      : KVRows(reinterpret_cast<std::byte*>(m.data()), DType::kF32, m.rows(), m.cols()) {}

  std::byte* row(std::int64_t p) const { return data + static_cast<std::size_t>(p) * row_bytes; }
  /// The rows as floats; valid only for F32.
  TensorView<float> f32() const {
    KVLM_ASSERT(type == DType::kF32);
    return TensorView<float>(reinterpret_cast<float*>(data), {rows, cols});
  }

  /// Writes x: [n_tokens, cols] into rows [start_pos, start_pos + n_tokens), converting from float.
  void store(std::int64_t start_pos, TensorView<const float> x) const {
    KVLM_ASSERT(x.cols() == cols && start_pos + x.rows() <= rows);
    for (std::int64_t i = 0; i < x.rows(); ++i) {
      kernels::scalar::from_float(type, x.row(i), row(start_pos + i), cols);
    }
  }
};

/// Whether a cache may store `type`: F32, F16, BF16, or Q8_0 with rows of whole blocks.
/// @throws Error(kInvalidArgument) naming the type, or the row width for Q8_0.
inline void check_kv_type(DType type, std::int64_t kv_dim) {
  if (type != DType::kF32 && type != DType::kF16 && type != DType::kBF16 && type != DType::kQ8_0) {
    throw Error(ErrorCode::kInvalidArgument, std::string("KV cache type ") + to_string(type) +
                                                 " is not one of F32, F16, BF16, Q8_0");
  }
  if (kv_dim % info(type).block_size != 0) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("KV cache type ") + to_string(type) + " needs rows of " +
                    std::to_string(info(type).block_size) +
                    "-value blocks, but n_kv_heads * head_dim = " + std::to_string(kv_dim));
  }
}

class KVCache {
 public:
  /// @throws Error(kInvalidArgument) if shape.type is not a cache type, or is Q8_0 and a row
  ///         (n_kv_heads * head_dim) does not split into blocks of 32.
  explicit KVCache(const KVCacheShape& shape)
      : shape_(checked(shape)),
        row_bytes_(kvlm::row_bytes(shape.type, shape.kv_dim())),
        data_({shape.n_layers, 2, std::int64_t{shape.max_seq_len} *
                                      static_cast<std::int64_t>(row_bytes_)}) {}

  const KVCacheShape& shape() const { return shape_; }
  DType type() const { return shape_.type; }
  std::size_t row_bytes() const { return row_bytes_; }

  // Writable rows, even from a const cache: a const KVCache is one whose shape does not change.
  KVRows keys(int layer) const { return part(layer, 0); }
  KVRows values(int layer) const { return part(layer, 1); }

  /// 2 * n_layers * max_seq_len * row_bytes, row_bytes = row_bytes(type, n_kv_heads * head_dim).
  std::size_t byte_size() const { return data_.byte_size(); }

  /// Copies rows [0, n_rows) of every layer's keys and values from `other`, a cache of the same
  /// shape: 2 * n_layers * n_rows * row_bytes bytes.
  void copy_rows_from(const KVCache& other, std::int64_t n_rows) {
    KVLM_ASSERT(other.row_bytes_ == row_bytes_ && n_rows <= shape_.max_seq_len &&
                other.shape_.n_layers == shape_.n_layers);
    for (int l = 0; l < shape_.n_layers; ++l) {
      for (int which = 0; which < 2; ++which) {
        std::memcpy(part(l, which).data, other.part(l, which).data,
                    static_cast<std::size_t>(n_rows) * row_bytes_);
      }
    }
  }

  /// Context shift: drops rows [n_keep, n_keep + n_discard) of every layer, moves the n_moved
  /// rows after them down to n_keep, and turns the moved keys back by n_discard positions, so
  /// that a key written at position p reads as one written at p - n_discard (RoPE's rotations
  /// compose). A Q8_0 or 16-bit cache is converted to float for the turn and back, which rounds
  /// the moved keys once more.
  void shift(std::int64_t n_keep, std::int64_t n_discard, std::int64_t n_moved,
             const RopeTable& rope_table, TensorView<float> row_scratch) {
    KVLM_ASSERT(n_keep >= 0 && n_discard > 0 && n_keep + n_discard + n_moved <= shape_.max_seq_len);
    KVLM_ASSERT(row_scratch.cols() == shape_.kv_dim() && row_scratch.rows() >= 1);
    const kernels::TypeKernels& k = kernels::kernels(shape_.type);
    TensorView<float> x = row_scratch.rows_slice(0, 1);  // [1, kv_dim]
    for (int l = 0; l < shape_.n_layers; ++l) {
      for (int which = 0; which < 2; ++which) {
        const KVRows rows = part(l, which);
        std::memmove(rows.row(n_keep), rows.row(n_keep + n_discard),
                     static_cast<std::size_t>(n_moved) * row_bytes_);
        if (which == 1) continue;
        for (std::int64_t p = n_keep; p < n_keep + n_moved; ++p) {
          k.to_float(rows.row(p), x.data(), shape_.kv_dim());
          rope_back(x, shape_.head_dim, static_cast<int>(n_discard), rope_table);
          rows.store(p, x);
        }
      }
    }
  }

 private:
  static KVCacheShape checked(const KVCacheShape& shape) {
    check_kv_type(shape.type, shape.kv_dim());
    return shape;
  }

  KVRows part(int layer, int which) const {
    KVLM_ASSERT(layer >= 0 && layer < shape_.n_layers);
    std::byte* base = reinterpret_cast<std::byte*>(const_cast<std::uint8_t*>(data_.data())) +
                      (std::size_t{2} * static_cast<std::size_t>(layer) + which) *
                          static_cast<std::size_t>(shape_.max_seq_len) * row_bytes_;
    return KVRows(base, shape_.type, shape_.max_seq_len, shape_.kv_dim());
  }

  KVCacheShape shape_;
  std::size_t row_bytes_;
  Tensor<std::uint8_t> data_;  // [n_layers, 2 (K, V), max_seq_len * row_bytes]
};

}  // namespace kvlm
