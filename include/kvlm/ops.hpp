#pragma once
// The ops of a Llama forward pass: pure functions over views, inputs first and outputs last.
// None allocates. Parallel ops take n_threads and run single-threaded when the work is small.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "kvlm/config.hpp"
#include "kvlm/detail/assert.hpp"
#include "kvlm/detail/parallel.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

/// RMSNorm (Zhang & Sennrich 2019): out = x / sqrt(mean(x^2) + eps) * weight, per row.
/// x: [n_tokens, dim]; weight: [dim]; out: [n_tokens, dim] (may alias x).
inline void rms_norm(TensorView<const float> x, TensorView<const float> weight, float eps,
                     TensorView<float> out) {
  KVLM_ASSERT(x.cols() == weight.size() && out.rows() == x.rows() && out.cols() == x.cols());
  const auto w = weight.vector().array();
  for (std::int64_t i = 0; i < x.rows(); ++i) {
    Eigen::Map<const Eigen::ArrayXf> xi(x.row(i), x.cols());
    const float inv_rms = 1.0f / std::sqrt(xi.square().mean() + eps);
    Eigen::Map<Eigen::ArrayXf>(out.row(i), out.cols()) = xi * inv_rms * w;
  }
}

/// One product y = x W^T of a matmul: w is [out, in] as stored, y is [n_tokens, out].
struct Product {
  const WeightView& w;
  TensorView<float> y;
};

/// y = x W^T for each product, all with the same input x: [n_tokens, in]. The rows of all the
/// matrices, taken end to end, are split across the threads, so each thread reads only its share
/// of the weights and the threads meet once for the whole list rather than once per matrix.
inline void matmul(TensorView<const float> x, std::initializer_list<Product> products,
                   int n_threads) {
  const std::int64_t n_tokens = x.rows();
  std::int64_t total_rows = 0;
  for (const Product& p : products) {
    KVLM_ASSERT(p.w.cols == x.cols() && p.y.cols() == p.w.rows && p.y.rows() == n_tokens);
    total_rows += p.w.rows;
  }
  detail::parallel_for_rows(total_rows, n_tokens * total_rows * x.cols(), n_threads, 16,
                            [&](std::int64_t begin, std::int64_t end, int /*thread*/) {
    std::int64_t first_row = 0;  // of the current product, in the concatenated rows
    for (const Product& p : products) {
      const std::int64_t lo = std::max(begin, first_row) - first_row;
      const std::int64_t hi = std::min(end, first_row + p.w.rows) - first_row;
      first_row += p.w.rows;
      if (lo >= hi) continue;
      const auto w_part = p.w.f32().rows_slice(lo, hi - lo).matrix();  // [hi - lo, in]
      if (n_tokens == 1) {
        Eigen::Map<Eigen::VectorXf>(p.y.data() + lo, hi - lo).noalias() = w_part * x.vector();
      } else {
        Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>> y_part(
            p.y.data() + lo, n_tokens, hi - lo, Eigen::OuterStride<>(p.y.cols()));
        y_part.noalias() = x.matrix() * w_part.transpose();
      }
    }
  });
}

/// y = x W^T: x: [n_tokens, in]; w: [out, in] as stored; y: [n_tokens, out].
inline void matmul(TensorView<const float> x, const WeightView& w, TensorView<float> y,
                   int n_threads) {
  matmul(x, {Product{w, y}}, n_threads);
}

/// out[i] = row tokens[i] of the embedding table. table: [vocab_size, dim]; out: [n_tokens, dim].
/// Token ids are validated by the caller (Session), so they index the table.
inline void embed(const Token* tokens, const WeightView& table, TensorView<float> out) {
  const TensorView<const float> rows = table.f32();
  for (std::int64_t i = 0; i < out.rows(); ++i) {
    std::copy_n(rows.row(tokens[i]), rows.cols(), out.row(i));
  }
}

/// cos and sin of RoPE's angles (Su et al. 2021): pair i of a head at position p turns by
/// p * theta^(-2i / head_dim). Computed once in double precision.
class RopeTable {
 public:
  RopeTable(int head_dim, int max_seq_len, float theta)
      : table_({max_seq_len, head_dim / 2, 2}) {
    const int half = head_dim / 2;
    for (int p = 0; p < max_seq_len; ++p) {
      for (int i = 0; i < half; ++i) {
        const double angle = p * std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
        float* cs = table_.data() + (static_cast<std::int64_t>(p) * half + i) * 2;
        cs[0] = static_cast<float>(std::cos(angle));
        cs[1] = static_cast<float>(std::sin(angle));
      }
    }
  }

  int max_seq_len() const { return static_cast<int>(table_.view().dim(0)); }
  // [head_dim / 2, 2]: (cos, sin) of each pair at position pos.
  const float* at(int pos) const { return table_.view().row(pos * table_.view().dim(1)); }

 private:
  Tensor<float> table_;  // [max_seq_len, head_dim / 2, 2]
};

/// Rotates x in place with the interleaved-pair layout of llama2.c and GGUF Llama files: the pairs
/// are (2i, 2i + 1) within each head. x: [n_tokens, n_heads * head_dim], token j at start_pos + j.
inline void rope(TensorView<float> x, int head_dim, int start_pos, const RopeTable& table) {
  KVLM_ASSERT(start_pos + x.rows() <= table.max_seq_len());
  const std::int64_t n_heads = x.cols() / head_dim;
  for (std::int64_t j = 0; j < x.rows(); ++j) {
    const float* cs = table.at(static_cast<int>(start_pos + j));
    for (std::int64_t h = 0; h < n_heads; ++h) {
      float* v = x.row(j) + h * head_dim;
      for (int i = 0; i < head_dim / 2; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * c - v1 * s;
        v[2 * i + 1] = v0 * s + v1 * c;
      }
    }
  }
}

/// Numerically stable softmax of x[0, n) in place.
inline void softmax(float* x, std::int64_t n) {
  Eigen::Map<Eigen::ArrayXf> a(x, n);
  a = (a - a.maxCoeff()).exp();
  a /= a.sum();
}

/// SwiGLU's gate (Shazeer 2020): gate = silu(gate) * up, silu(g) = g / (1 + e^-g).
/// gate, up: [n_tokens, hidden_dim].
inline void silu_mul(TensorView<float> gate, TensorView<const float> up) {
  auto g = gate.vector().array();
  g = g / (1.0f + (-g).exp()) * up.vector().array();
}

/// x += y, both [n_tokens, dim]: the residual connection.
inline void add_in_place(TensorView<float> x, TensorView<const float> y) {
  x.vector() += y.vector();
}

}  // namespace kvlm
