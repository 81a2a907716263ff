#pragma once
// An independent reference: the Llama forward pass written as plain loops in double precision,
// the way llama2.c's run.c reads (no Eigen, no cache, no batching). It shares nothing with kvlm's
// kernels but the weights, which it dequantizes exactly with the scalar reference, so agreement
// with it checks every op and every fast kernel at once.

#include <cmath>
#include <vector>

#include "kvlm/kernels/scalar.hpp"
#include "kvlm/model.hpp"

namespace kvlm::test {

// Logits after each of `tokens`: [tokens.size() * vocab_size], row-major.
inline std::vector<double> reference_logits(const Model& model, const std::vector<Token>& tokens) {
  const ModelConfig& c = model.config();
  const int n = static_cast<int>(tokens.size());
  const int dim = c.dim, hd = c.head_dim, q_dim = c.q_dim();
  // Row r of a weight, exactly dequantized by the scalar reference (a copy for F32).
  auto row_of = [](const WeightView& w, std::int64_t r) {
    std::vector<float> row(static_cast<std::size_t>(w.cols));
    kernels::scalar::to_float(w.dtype, w.row(r), row.data(), w.cols);
    return row;
  };
  // y[r] = sum_c W[r][c] x[c]
  auto matvec = [&](const WeightView& w, const std::vector<double>& x) {
    std::vector<double> y(static_cast<std::size_t>(w.rows), 0.0);
    for (std::int64_t r = 0; r < w.rows; ++r) {
      const std::vector<float> row = row_of(w, r);
      for (std::int64_t col = 0; col < w.cols; ++col) y[r] += double{row[col]} * x[col];
    }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, TensorView<const float> w) {
    double ss = 0.0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c.norm_eps);
    std::vector<double> out(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * w[i];
    return out;
  };
  auto rope = [&](std::vector<double>& v, int pos) {
    for (std::size_t i = 0; i < v.size(); i += 2) {
      const int pair = static_cast<int>(i % hd) / 2;
      const double angle = pos * std::pow(static_cast<double>(c.rope_theta), -2.0 * pair / hd);
      const double v0 = v[i], v1 = v[i + 1];
      v[i] = v0 * std::cos(angle) - v1 * std::sin(angle);
      v[i + 1] = v0 * std::sin(angle) + v1 * std::cos(angle);
    }
  };

  std::vector<std::vector<double>> x(n, std::vector<double>(dim));
  for (int t = 0; t < n; ++t) {
    const std::vector<float> row = row_of(model.token_embedding(), tokens[t]);
    for (int i = 0; i < dim; ++i) x[t][i] = row[i];
  }
  for (int l = 0; l < c.n_layers; ++l) {
    const BlockWeights& b = model.block(l);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const auto xb = rmsnorm(x[t], b.attn_norm);
      q[t] = matvec(b.wq, xb);
      k[t] = matvec(b.wk, xb);
      v[t] = matvec(b.wv, xb);
      rope(q[t], t);
      rope(k[t], t);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> att(q_dim, 0.0);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kv_h = h / (c.n_heads / c.n_kv_heads);
        std::vector<double> score(t + 1);
        double max_score = -1e300;
        for (int s = 0; s <= t; ++s) {
          double dot = 0.0;
          for (int i = 0; i < hd; ++i) dot += q[t][h * hd + i] * k[s][kv_h * hd + i];
          score[s] = dot / std::sqrt(static_cast<double>(hd));
          max_score = std::max(max_score, score[s]);
        }
        double sum = 0.0;
        for (double& sc : score) sum += (sc = std::exp(sc - max_score));
        for (int s = 0; s <= t; ++s) {
          for (int i = 0; i < hd; ++i) att[h * hd + i] += score[s] / sum * v[s][kv_h * hd + i];
        }
      }
      const auto o = matvec(b.wo, att);
      for (int i = 0; i < dim; ++i) x[t][i] += o[i];
      const auto xb = rmsnorm(x[t], b.ffn_norm);
      auto gate = matvec(b.w_gate, xb);
      const auto up = matvec(b.w_up, xb);
      for (std::size_t i = 0; i < gate.size(); ++i) {
        gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      }
      const auto down = matvec(b.w_down, gate);
      for (int i = 0; i < dim; ++i) x[t][i] += down[i];
    }
  }
  std::vector<double> logits;
  logits.reserve(static_cast<std::size_t>(n) * c.vocab_size);
  for (int t = 0; t < n; ++t) {
    const auto row = matvec(model.classifier(), rmsnorm(x[t], model.final_norm()));
    logits.insert(logits.end(), row.begin(), row.end());
  }
  return logits;
}

}  // namespace kvlm::test
