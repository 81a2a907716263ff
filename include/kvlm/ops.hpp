#pragma once
// The elementwise ops of a Llama forward pass: pure functions over views, inputs first and
// outputs last. None allocates. Products with weight matrices are in matmul.hpp.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvlm/config.hpp"
#include "kvlm/detail/assert.hpp"
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
