#pragma once
// One Llama decoder layer: RMSNorm -> attention (with RoPE and the KV cache) -> residual ->
// RMSNorm -> SwiGLU MLP -> residual, over a batch of n_tokens consecutive tokens.

#include <algorithm>
#include <cstdint>

#include "kvlm/attention.hpp"
#include "kvlm/config.hpp"
#include "kvlm/matmul.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

/// The weights of one layer, as views into the model's storage.
struct BlockWeights {
  TensorView<const float> attn_norm;  // [dim]
  WeightView wq;                      // [n_heads * head_dim, dim]
  WeightView wk;                      // [n_kv_heads * head_dim, dim]
  WeightView wv;                      // [n_kv_heads * head_dim, dim]
  WeightView wo;                      // [dim, n_heads * head_dim]
  TensorView<const float> ffn_norm;   // [dim]
  WeightView w_gate;                  // [hidden_dim, dim]   (llama2.c's w1)
  WeightView w_down;                  // [dim, hidden_dim]   (w2)
  WeightView w_up;                    // [hidden_dim, dim]   (w3)
};

/// Activations for a batch of up to max_batch tokens, allocated once per session.
struct BlockScratch {
  BlockScratch(const ModelConfig& config, int max_batch, int max_seq_len, int n_threads)
      : xb({max_batch, config.dim}),
        q({max_batch, config.q_dim()}),
        att({max_batch, config.q_dim()}),
        gate({max_batch, config.hidden_dim}),
        up({max_batch, config.hidden_dim}),
        scores({n_threads, std::max(max_batch, config.group()), max_seq_len}),
        matmul(max_batch, std::max({config.dim, config.q_dim(), config.hidden_dim}), n_threads) {}

  Tensor<float> xb;      // [max_batch, dim]: normed input, then each sublayer's output
  Tensor<float> q;       // [max_batch, n_heads * head_dim]
  Tensor<float> att;     // [max_batch, n_heads * head_dim]
  Tensor<float> gate;    // [max_batch, hidden_dim]
  Tensor<float> up;      // [max_batch, hidden_dim]
  Tensor<float> scores;  // [n_threads, max(max_batch, group), max_seq_len]
  MatmulScratch matmul;  // quantized activations and dequantized weight tiles
};

/// Runs one layer over tokens at positions [start_pos, start_pos + n_tokens), n_tokens = x.rows().
///   x:      [n_tokens, dim], the residual stream, updated in place
///   keys, values: this layer's cache, [max_seq_len, n_kv_heads * head_dim]; rows
///           [start_pos, start_pos + n_tokens) are written, rows [0, start_pos) must hold the prefix
inline void decoder_block(const ModelConfig& config, const BlockWeights& w, const RopeTable& rope_table,
                          int start_pos, TensorView<float> x, TensorView<float> keys,
                          TensorView<float> values, BlockScratch& scratch, int n_threads) {
  const std::int64_t n = x.rows();
  auto xb = scratch.xb.view().rows_slice(0, n);
  auto q = scratch.q.view().rows_slice(0, n);
  auto att = scratch.att.view().rows_slice(0, n);
  auto k_new = keys.rows_slice(start_pos, n);    // [n_tokens, n_kv_heads * head_dim]
  auto v_new = values.rows_slice(start_pos, n);

  rms_norm(x, w.attn_norm, config.norm_eps, xb);
  matmul(xb, {{w.wq, q}, {w.wk, k_new}, {w.wv, v_new}}, scratch.matmul, n_threads);
  rope(q, config.head_dim, start_pos, rope_table);
  rope(k_new, config.head_dim, start_pos, rope_table);
  const AttentionShape shape{config.n_heads, config.n_kv_heads, config.head_dim};
  attention(q, keys, values, shape, start_pos, scratch.scores.view(), att, n_threads);
  matmul(att, w.wo, xb, scratch.matmul, n_threads);
  add_in_place(x, xb);

  auto gate = scratch.gate.view().rows_slice(0, n);
  auto up = scratch.up.view().rows_slice(0, n);
  rms_norm(x, w.ffn_norm, config.norm_eps, xb);
  matmul(xb, {{w.w_gate, gate}, {w.w_up, up}}, scratch.matmul, n_threads);
  silu_mul(gate, up);
  matmul(gate, w.w_down, xb, scratch.matmul, n_threads);
  add_in_place(x, xb);
}

}  // namespace kvlm
