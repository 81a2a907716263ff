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
  BlockScratch(const ModelConfig& config, int max_batch, int n_threads, DType cache_type)
      : xb({max_batch, config.dim}),
        q({max_batch, config.q_dim()}),
        k(cache_type == DType::kF32 ? Tensor<float>() : Tensor<float>({max_batch, config.kv_dim()})),
        v(cache_type == DType::kF32 ? Tensor<float>() : Tensor<float>({max_batch, config.kv_dim()})),
        att({max_batch, config.q_dim()}),
        gate({max_batch, config.hidden_dim}),
        up({max_batch, config.hidden_dim}),
        attention(n_threads, config.group(), config.kv_dim(), cache_type),
        matmul(max_batch, std::max({config.dim, config.q_dim(), config.hidden_dim}), n_threads) {}

  std::size_t byte_size() const {
    return xb.byte_size() + q.byte_size() + k.byte_size() + v.byte_size() + att.byte_size() +
           gate.byte_size() + up.byte_size() + attention.byte_size() + matmul.byte_size();
  }

  Tensor<float> xb;      // [max_batch, dim]: normed input, then each sublayer's output
  Tensor<float> q;       // [max_batch, n_heads * head_dim]
  Tensor<float> k;       // [max_batch, n_kv_heads * head_dim] before it is stored in a non-F32
  Tensor<float> v;       // cache (an F32 cache takes them in place); empty for F32
  Tensor<float> att;     // [max_batch, n_heads * head_dim]
  Tensor<float> gate;    // [max_batch, hidden_dim]
  Tensor<float> up;      // [max_batch, hidden_dim]
  AttentionScratch attention;  // per thread: one tile's scores, softmax stats, converted rows
  MatmulScratch matmul;  // quantized activations and dequantized weight tiles
};

/// Runs one layer over tokens at positions [start_pos, start_pos + n_tokens), n_tokens = x.rows().
///   x:      [n_tokens, dim], the residual stream, updated in place
///   keys, values: this layer's cache, [max_seq_len, n_kv_heads * head_dim]; rows
///           [start_pos, start_pos + n_tokens) are written, rows [0, start_pos) must hold the prefix
inline void decoder_block(const ModelConfig& config, const BlockWeights& w, const RopeTable& rope_table,
                          int start_pos, TensorView<float> x, const KVRows& keys,
                          const KVRows& values, BlockScratch& scratch, int n_threads) {
  const std::int64_t n = x.rows();
  auto xb = scratch.xb.view().rows_slice(0, n);
  auto q = scratch.q.view().rows_slice(0, n);
  auto att = scratch.att.view().rows_slice(0, n);
  // [n_tokens, n_kv_heads * head_dim]: in the cache itself when it stores F32
  const bool in_place = keys.type == DType::kF32;
  auto k_new = in_place ? keys.f32().rows_slice(start_pos, n) : scratch.k.view().rows_slice(0, n);
  auto v_new = in_place ? values.f32().rows_slice(start_pos, n) : scratch.v.view().rows_slice(0, n);

  rms_norm(x, w.attn_norm, config.norm_eps, xb);
  matmul(xb, {{w.wq, q}, {w.wk, k_new}, {w.wv, v_new}}, scratch.matmul, n_threads);
  rope(q, config.head_dim, start_pos, rope_table);
  rope(k_new, config.head_dim, start_pos, rope_table);
  if (!in_place) {
    keys.store(start_pos, k_new);
    values.store(start_pos, v_new);
  }
  const AttentionShape shape{config.n_heads, config.n_kv_heads, config.head_dim};
  attention(q, keys, values, shape, start_pos, scratch.attention, att, n_threads);
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
