#pragma once
// forward(): the whole model over one batch of rows taken from one or more sequences (a session's
// prompt chunk, or one token of each of several sessions decoding together): embed, the decoder
// blocks, then the final norm and the classifier for the rows whose logits are wanted.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "kvlm/decoder_block.hpp"
#include "kvlm/error.hpp"
#include "kvlm/kv_cache.hpp"
#include "kvlm/matmul.hpp"
#include "kvlm/model.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/span.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

/// One sequence's part of a forward pass: its tokens at positions [start_pos, start_pos + n), its
/// cache (rows [0, start_pos) hold the prefix; rows [start_pos, start_pos + n) are written), and
/// where the logits after its last n_logits tokens go.
struct SequenceChunk {
  const Token* tokens = nullptr;  // [n], ids already checked against the vocabulary
  int start_pos = 0;
  int n = 0;
  int n_logits = 0;               // 0 <= n_logits <= n
  float* logits = nullptr;        // [n_logits, vocab_size]
  const KVCache* cache = nullptr;
  const RopeTable* rope = nullptr;
};

/// Splits the first n rows (at most) off `rest` and returns them as a chunk of their own, with the
/// logits of rest's last n_logits rows that fall among them; rest keeps the other rows.
inline SequenceChunk split_front(SequenceChunk& rest, int n, int vocab_size) {
  SequenceChunk front = rest;
  front.n = std::min(n, rest.n);
  front.n_logits = std::max(0, rest.n_logits - (rest.n - front.n));
  rest.tokens += front.n;
  rest.start_pos += front.n;
  rest.n -= front.n;
  rest.n_logits -= front.n_logits;
  if (front.n_logits > 0) rest.logits += std::int64_t{front.n_logits} * vocab_size;
  return front;
}

/// What the model's products in batches of up to max_rows rows need of a matmul scratch.
inline MatmulScratch::Uses matmul_uses(const Model& model, int max_rows) {
  MatmulScratch::Uses uses;
  for (int l = 0; l < model.config().n_layers; ++l) {
    const BlockWeights& b = model.block(l);
    for (const WeightView* w : b.matrices()) {
      uses.add(*w, max_rows);
    }
  }
  uses.add(model.classifier(), max_rows);
  return uses;
}

/// Buffers of forward() for batches of up to max_rows rows, allocated once.
struct ForwardScratch {
  /// logit_rows: rows of gathered logits for passes over several sequences (0 when every pass
  /// has one sequence, whose logits the classifier writes in place).
  ForwardScratch(const Model& model, int max_rows, int n_threads, int logit_rows)
      : x({max_rows, model.config().dim}),
        block(model.config(), max_rows, n_threads, matmul_uses(model, max_rows)),
        logits(logit_rows > 0 ? Tensor<float>({logit_rows, model.config().vocab_size})
                              : Tensor<float>()) {
    sequences.reserve(static_cast<std::size_t>(max_rows));
  }

  /// byte_size() of a scratch constructed with these arguments, without constructing it.
  static std::size_t bytes_needed(const Model& model, int max_rows, int n_threads, int logit_rows) {
    const ModelConfig& c = model.config();
    const auto rows = static_cast<std::size_t>(max_rows);
    return rows * static_cast<std::size_t>(c.dim) * sizeof(float) +
           BlockScratch::bytes_needed(c, max_rows, n_threads, matmul_uses(model, max_rows)) +
           static_cast<std::size_t>(logit_rows) * static_cast<std::size_t>(c.vocab_size) * sizeof(float) +
           rows * sizeof(SequenceRows);
  }

  std::size_t byte_size() const {
    return x.byte_size() + block.byte_size() + logits.byte_size() +
           sequences.capacity() * sizeof(SequenceRows);
  }

  Tensor<float> x;                     // [max_rows, dim]: the residual stream
  BlockScratch block;                  // one layer's activations
  Tensor<float> logits;                // [logit_rows, vocab_size], or empty
  std::vector<SequenceRows> sequences; // [max_rows] reserved: where each sequence's rows are
};

/// Runs the model over the chunks' rows, in order, as one batch of sum(n) <= max_rows rows.
/// cancel, if set, is asked before every layer: true throws Error(kCancelled).
inline void forward(const Model& model, Span<const SequenceChunk> chunks, ForwardScratch& scratch,
                    ThreadPool& threads, const std::function<bool()>& cancel) {
  const ModelConfig& config = model.config();
  std::int64_t rows = 0, logit_rows = 0;
  scratch.sequences.clear();
  for (const SequenceChunk& c : chunks) {
    scratch.sequences.push_back(SequenceRows{rows, c.n, c.start_pos, c.cache, c.rope});
    rows += c.n;
    logit_rows += c.n_logits;
  }
  KVLM_ASSERT(rows <= scratch.x.view().rows());
  TensorView<float> x = scratch.x.view().rows_slice(0, rows);  // [rows, dim]
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const SequenceRows& s = scratch.sequences[i];
    embed(chunks[i].tokens, model.token_embedding(), x.rows_slice(s.row, s.n));
  }
  for (int l = 0; l < config.n_layers; ++l) {
    if (cancel && cancel()) throw Error(ErrorCode::kCancelled, "cancelled by the host");
    decoder_block(config, model.block(l), l, scratch.sequences, x, scratch.block, threads);
  }
  if (logit_rows == 0) return;

  // The rows whose logits are wanted, normed side by side: [logit_rows, dim].
  TensorView<float> normed = scratch.block.xb.view().rows_slice(0, logit_rows);
  std::int64_t at = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const SequenceRows& s = scratch.sequences[i];
    const SequenceChunk& c = chunks[i];
    rms_norm(x.rows_slice(s.row + s.n - c.n_logits, c.n_logits), model.final_norm(),
             config.norm_eps, normed.rows_slice(at, c.n_logits));
    at += c.n_logits;
  }
  if (chunks.size() == 1) {  // straight into the caller's logits
    matmul(normed, model.classifier(), TensorView<float>(chunks[0].logits, {logit_rows, config.vocab_size}),
           scratch.block.matmul, threads);
    return;
  }
  TensorView<float> gathered = scratch.logits.view().rows_slice(0, logit_rows);
  matmul(normed, model.classifier(), gathered, scratch.block.matmul, threads);
  at = 0;
  for (const SequenceChunk& c : chunks) {
    std::copy_n(gathered.row(at), std::int64_t{c.n_logits} * config.vocab_size, c.logits);
    at += c.n_logits;
  }
}

}  // namespace kvlm
