#pragma once
// Causal scaled dot-product attention over one cache layer, for multi-head, grouped-query and
// multi-query attention alike: query head h reads KV head h / group, group = n_heads / n_kv_heads.

#include <Eigen/Core>

#include <cmath>
#include <cstdint>

#include "kvlm/detail/assert.hpp"
#include "kvlm/detail/parallel.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;

  int group() const { return n_heads / n_kv_heads; }
};

/// out = softmax(Q K^T / sqrt(head_dim), causal) V for tokens at positions
/// [start_pos, start_pos + n_tokens): token i attends to positions t <= start_pos + i.
///   q:      [n_tokens, n_heads * head_dim], already rotated
///   keys:   [>= start_pos + n_tokens, n_kv_heads * head_dim], rows [0, start_pos + n_tokens) valid
///   values: the same shape as keys
///   scores: scratch, [n_threads, >= max(n_tokens, group), >= start_pos + n_tokens]
///   out:    [n_tokens, n_heads * head_dim]
inline void attention(TensorView<const float> q, TensorView<const float> keys,
                      TensorView<const float> values, const AttentionShape& shape, int start_pos,
                      TensorView<float> scores, TensorView<float> out, int n_threads) {
  using Strided = Eigen::OuterStride<>;
  using ConstRows = Eigen::Map<const RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  using Rows = Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  const std::int64_t n_tokens = q.rows();
  const std::int64_t n_ctx = start_pos + n_tokens;  // positions visible to the last token
  const int hd = shape.head_dim;
  const int group = shape.group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // Query rows are taken in blocks that share one KV head. For one token, a block is the
  // group's heads, [group, head_dim] and contiguous, so each cached K/V row is read once per
  // group: GQA's saving in decode. For a batch, a block is one head over all the tokens,
  // [n_tokens, head_dim] with row stride n_heads * head_dim, so the products are matrix-matrix.
  const bool one_token = n_tokens == 1;
  const std::int64_t n_blocks = one_token ? shape.n_kv_heads : shape.n_heads;
  const std::int64_t block_rows = one_token ? group : n_tokens;
  const std::int64_t row_stride = one_token ? hd : q.cols();
  KVLM_ASSERT(q.cols() == std::int64_t{shape.n_heads} * hd && out.cols() == q.cols());
  KVLM_ASSERT(keys.rows() >= n_ctx && values.rows() >= n_ctx);
  KVLM_ASSERT(scores.rank() == 3 && scores.dim(1) >= block_rows && scores.dim(2) >= n_ctx);
  const std::int64_t work = std::int64_t{shape.n_heads} * n_tokens * n_ctx * hd * 2;

  detail::parallel_for_rows(n_blocks, work, n_threads, 1,
                            [&](std::int64_t block_begin, std::int64_t block_end, int thread) {
    // [block_rows, n_ctx] with row stride scores.dim(2)
    Rows s(scores.data() + thread * scores.dim(1) * scores.dim(2), block_rows,
           n_ctx, Strided(scores.dim(2)));
    for (std::int64_t b = block_begin; b < block_end; ++b) {
      const std::int64_t kv_head = one_token ? b : b / group;
      const std::int64_t first_head = one_token ? b * group : b;
      ConstRows q_b(q.data() + first_head * hd, block_rows, hd, Strided(row_stride));
      ConstRows k(keys.data() + kv_head * hd, n_ctx, hd, Strided(keys.cols()));
      ConstRows v(values.data() + kv_head * hd, n_ctx, hd, Strided(values.cols()));
      Rows out_b(out.data() + first_head * hd, block_rows, hd, Strided(row_stride));

      s.noalias() = (q_b * k.transpose()) * scale;
      for (std::int64_t r = 0; r < block_rows; ++r) {
        // the causal bound t <= start_pos + i, for the token i of row r
        const std::int64_t visible = start_pos + (one_token ? 0 : r) + 1;
        softmax(&s(r, 0), visible);
        s.row(r).tail(n_ctx - visible).setZero();
      }
      out_b.noalias() = s * v;
    }
  });
}

}  // namespace kvlm
