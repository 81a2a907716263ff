#pragma once
// The elementwise ops of a Llama forward pass: pure functions over views, inputs first and
// outputs last. None allocates. Products with weight matrices are in matmul.hpp.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvlm/config.hpp"
#include "kvlm/detail/assert.hpp"
#include "kvlm/kernels/kernels.hpp"
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
  std::size_t byte_size() const { return table_.byte_size(); }
  // [head_dim / 2, 2]: (cos, sin) of each pair at position pos.
  const float* at(int pos) const { return table_.view().row(pos * table_.view().dim(1)); }

 private:
  Tensor<float> table_;  // [max_seq_len, head_dim / 2, 2]
};

namespace detail {

// Turns each head's pairs (2i, 2i + 1) of row j by the angles at position positions[j], forward
// (sign = 1) or back (sign = -1).
template <typename PositionOf>
void rotate_pairs(TensorView<float> x, int head_dim, const RopeTable& table, float sign,
                  PositionOf position_of) {
  const std::int64_t n_heads = x.cols() / head_dim;
  for (std::int64_t j = 0; j < x.rows(); ++j) {
    const int pos = position_of(j);
    KVLM_ASSERT(pos >= 0 && pos < table.max_seq_len());
    const float* cs = table.at(pos);
    for (std::int64_t h = 0; h < n_heads; ++h) {
      float* v = x.row(j) + h * head_dim;
      for (int i = 0; i < head_dim / 2; ++i) {
        const float c = cs[2 * i], s = sign * cs[2 * i + 1];
        const float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * c - v1 * s;
        v[2 * i + 1] = v0 * s + v1 * c;
      }
    }
  }
}

}  // namespace detail

/// Rotates x in place with the interleaved-pair layout of llama2.c and GGUF Llama files: the pairs
/// are (2i, 2i + 1) within each head. x: [n_tokens, n_heads * head_dim], token j at start_pos + j.
inline void rope(TensorView<float> x, int head_dim, int start_pos, const RopeTable& table) {
  detail::rotate_pairs(x, head_dim, table, 1.0f,
                       [start_pos](std::int64_t j) { return start_pos + static_cast<int>(j); });
}

/// Turns every row of x back by `positions` positions: rotations compose, so a key rotated for
/// position p becomes the key for position p - positions (a context shift). x as for rope().
inline void rope_back(TensorView<float> x, int head_dim, int positions, const RopeTable& table) {
  detail::rotate_pairs(x, head_dim, table, -1.0f, [positions](std::int64_t) { return positions; });
}

/// x[i] = e^(x[i] - shift) over x[0, n): softmax's numerators, shift being the largest x[i].
/// On the path's vector kernels where it has them, else on Eigen.
inline void exp_shifted(float* x, std::int64_t n, float shift) {
  if (const kernels::VectorKernels* k = kernels::vector_kernels()) return k->exp_shifted(x, n, shift);
  Eigen::Map<Eigen::ArrayXf> a(x, n);
  a = (a - shift).exp();
}

/// Numerically stable softmax of x[0, n) in place.
inline void softmax(float* x, std::int64_t n) {
  Eigen::Map<Eigen::ArrayXf> a(x, n);
  exp_shifted(x, n, a.maxCoeff());
  a /= a.sum();
}

/// log(sum(exp(x[i]))) over x[0, n), in double around the largest element, so nothing
/// overflows: log-softmax of element i is x[i] - log_sum_exp(x, n).
inline double log_sum_exp(const float* x, std::int64_t n) {
  const double max = *std::max_element(x, x + n);
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  return max + std::log(sum);
}

/// SwiGLU's gate (Shazeer 2020): gate = silu(gate) * up, silu(g) = g / (1 + e^-g).
/// gate, up: [n_tokens, hidden_dim]. On the path's vector kernels where it has them, else on
/// Eigen.
inline void silu_mul(TensorView<float> gate, TensorView<const float> up) {
  KVLM_ASSERT(gate.size() == up.size());
  if (const kernels::VectorKernels* k = kernels::vector_kernels()) {
    return k->silu_mul(gate.data(), up.data(), gate.size());
  }
  auto g = gate.vector().array();
  g = g / (1.0f + (-g).exp()) * up.vector().array();
}

/// x += y, both [n_tokens, dim]: the residual connection.
inline void add_in_place(TensorView<float> x, TensorView<const float> y) {
  x.vector() += y.vector();
}

}  // namespace kvlm
