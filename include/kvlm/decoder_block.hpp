#pragma once
// One Llama decoder layer: RMSNorm -> attention (with RoPE and the KV cache) -> residual ->
// RMSNorm -> SwiGLU MLP -> residual, over a batch of rows that may belong to several sequences,
// each with its own cache and position: the weight products run once over all the rows, RoPE
// and attention per sequence.

#include <algorithm>
#include <array>
#include <cstdint>

#include "kvlm/attention.hpp"
#include "kvlm/config.hpp"
#include "kvlm/detail/parallel.hpp"
#include "kvlm/matmul.hpp"
#include "kvlm/kv_cache.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/span.hpp"
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

  /// The seven matrices, for what goes over all of them (sizes, types, copies).
  std::array<const WeightView*, 7> matrices() const {
    return {&wq, &wk, &wv, &wo, &w_gate, &w_down, &w_up};
  }
  std::array<WeightView*, 7> matrices() { return {&wq, &wk, &wv, &wo, &w_gate, &w_down, &w_up}; }
};

/// The heads of a model's attention.
inline AttentionShape attention_shape(const ModelConfig& c) {
  return {c.n_heads, c.n_kv_heads, c.head_dim};
}

/// Activations for a batch of up to max_batch rows, allocated once per session or batcher.
/// Attention's activations (q, k, v, att) and the MLP's (gate, up) are never live at once, so
/// they share one buffer: on tinyllama-1.1b's shape that is 22 MiB at 512 rows instead of 31.
struct BlockScratch {
  /// matmul_uses: what the model's products need of the matmul scratch (MatmulScratch::Uses).
  BlockScratch(const ModelConfig& config, int max_batch, int n_threads,
               const MatmulScratch::Uses& matmul_uses)
      : shared({max_batch, shared_floats(config)}),
        xb({max_batch, config.dim}),
        q(shared.data(), {max_batch, config.q_dim()}),
        k(q.data() + q.size(), {max_batch, config.kv_dim()}),
        v(k.data() + k.size(), {max_batch, config.kv_dim()}),
        att(v.data() + v.size(), {max_batch, config.q_dim()}),
        gate(shared.data(), {max_batch, config.hidden_dim}),
        up(gate.data() + gate.size(), {max_batch, config.hidden_dim}),
        attention(n_threads, attention_shape(config)),
        matmul(max_batch, matmul_uses, n_threads) {}

  /// What the constructor allocates, in bytes.
  static std::size_t bytes_needed(const ModelConfig& config, int max_batch, int n_threads,
                                  const MatmulScratch::Uses& matmul_uses) {
    return static_cast<std::size_t>(max_batch) * (config.dim + shared_floats(config)) * sizeof(float) +
           AttentionScratch::bytes_needed(n_threads, attention_shape(config)) +
           MatmulScratch::bytes_needed(max_batch, matmul_uses, n_threads);
  }

  std::size_t byte_size() const {
    return shared.byte_size() + xb.byte_size() + attention.byte_size() + matmul.byte_size();
  }

  // Floats per row of the shared buffer: attention's four activations or the MLP's two.
  static std::int64_t shared_floats(const ModelConfig& c) {
    return std::int64_t{2} * std::max(c.q_dim() + c.kv_dim(), c.hidden_dim);
  }

  Tensor<float> shared;    // [max_batch, shared_floats]: the storage of q, k, v, att, gate, up
  Tensor<float> xb;        // [max_batch, dim]: normed input, then each sublayer's output
  TensorView<float> q;     // [max_batch, n_heads * head_dim]
  TensorView<float> k;     // [max_batch, n_kv_heads * head_dim], until stored in the caches
  TensorView<float> v;     // [max_batch, n_kv_heads * head_dim]
  TensorView<float> att;   // [max_batch, n_heads * head_dim]
  TensorView<float> gate;  // [max_batch, hidden_dim], over q, k, v and att
  TensorView<float> up;    // [max_batch, hidden_dim]
  AttentionScratch attention;  // per thread: a tile's scores and rows; per chunk: a step's outputs
  MatmulScratch matmul;  // quantized activations and dequantized weight tiles
};

/// The rows of a batch that continue one sequence: rows [row, row + n) of the batch are its tokens
/// at positions [start_pos, start_pos + n); cache holds its keys and values (rows [0, start_pos)
/// of every layer the prefix's), rope the angles up to its context length.
struct SequenceRows {
  std::int64_t row = 0;
  std::int64_t n = 0;
  int start_pos = 0;
  const KVCache* cache = nullptr;
  const RopeTable* rope = nullptr;
};

/// Runs layer `layer` over a batch: x: [rows, dim], the residual stream, updated in place, where
/// `sequences` cover rows [0, rows) in order. Each sequence's K/V rows are written into its cache
/// at its positions, and its tokens attend over their own cache only.
inline void decoder_block(const ModelConfig& config, const BlockWeights& w, int layer,
                          Span<const SequenceRows> sequences, TensorView<float> x,
                          BlockScratch& scratch, ThreadPool& threads) {
  const std::int64_t n = x.rows();
  auto xb = scratch.xb.view().rows_slice(0, n);
  auto q = scratch.q.rows_slice(0, n);
  auto k = scratch.k.rows_slice(0, n);
  auto v = scratch.v.rows_slice(0, n);
  auto att = scratch.att.rows_slice(0, n);

  rms_norm(x, w.attn_norm, config.norm_eps, xb);
  matmul(xb, {{w.wq, q}, {w.wk, k}, {w.wv, v}}, scratch.matmul, threads);
  const AttentionShape shape = attention_shape(config);
  for (const SequenceRows& s : sequences) {
    KVLM_ASSERT(s.row + s.n <= n);
    auto q_s = q.rows_slice(s.row, s.n), k_s = k.rows_slice(s.row, s.n);
    rope(q_s, config.head_dim, s.start_pos, *s.rope);
    rope(k_s, config.head_dim, s.start_pos, *s.rope);
    const KVRows keys = s.cache->keys(layer), values = s.cache->values(layer);
    keys.store(s.start_pos, k_s);
    values.store(s.start_pos, v.rows_slice(s.row, s.n));
    attention(q_s, keys, values, shape, s.start_pos, scratch.attention, att.rows_slice(s.row, s.n),
              threads);
  }
  matmul(att, w.wo, xb, scratch.matmul, threads);
  add_in_place(x, xb);

  auto gate = scratch.gate.rows_slice(0, n);
  auto up = scratch.up.rows_slice(0, n);
  rms_norm(x, w.ffn_norm, config.norm_eps, xb);
  matmul(xb, {{w.w_gate, gate}, {w.w_up, up}}, scratch.matmul, threads);
  // One exp per element: worth a second thread in prefill, not for one token's row.
  detail::parallel_for_rows(n, n * config.hidden_dim, threads, 1,
                            [&](std::int64_t begin, std::int64_t end, int) {
    silu_mul(gate.rows_slice(begin, end - begin), up.rows_slice(begin, end - begin));
  });
  matmul(gate, w.w_down, xb, scratch.matmul, threads);
  add_in_place(x, xb);
}

}  // namespace kvlm
