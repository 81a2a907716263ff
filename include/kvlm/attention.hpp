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
///   scores: scratch, [n_threads, >= n_tokens, >= start_pos + n_tokens]
///   out:    [n_tokens, n_heads * head_dim]
inline void attention(TensorView<const float> q, TensorView<const float> keys,
                      TensorView<const float> values, const AttentionShape& shape, int start_pos,
                      TensorView<float> scores, TensorView<float> out, int n_threads) {
  using Strided = Eigen::OuterStride<>;
  using ConstHeads = Eigen::Map<const RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  using Heads = Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  const std::int64_t n_tokens = q.rows();
  const std::int64_t n_ctx = start_pos + n_tokens;  // positions visible to the last token
  const int hd = shape.head_dim;
  const int group = shape.group();
  KVLM_ASSERT(q.cols() == std::int64_t{shape.n_heads} * hd && keys.rows() >= n_ctx);
  KVLM_ASSERT(scores.rank() == 3 && scores.dim(1) >= n_tokens && scores.dim(2) >= n_ctx);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const std::int64_t work = std::int64_t{shape.n_heads} * n_tokens * n_ctx * hd * 2;

  detail::parallel_for_rows(shape.n_heads, work, n_threads, 1,
                            [&](std::int64_t head_begin, std::int64_t head_end) {
    const int thread = detail::thread_index();
    // [n_tokens, n_ctx] with row stride scores.dim(2)
    Heads s(scores.data() + thread * scores.dim(1) * scores.dim(2), n_tokens, n_ctx,
            Strided(scores.dim(2)));
    for (std::int64_t h = head_begin; h < head_end; ++h) {
      const std::int64_t kv_h = h / group;
      ConstHeads q_h(q.data() + h * hd, n_tokens, hd, Strided(q.cols()));
      ConstHeads k_h(keys.data() + kv_h * hd, n_ctx, hd, Strided(keys.cols()));
      ConstHeads v_h(values.data() + kv_h * hd, n_ctx, hd, Strided(values.cols()));
      Heads out_h(out.data() + h * hd, n_tokens, hd, Strided(out.cols()));

      s.noalias() = (q_h * k_h.transpose()) * scale;
      for (std::int64_t i = 0; i < n_tokens; ++i) {
        const std::int64_t visible = start_pos + i + 1;  // the causal bound t <= start_pos + i
        softmax(&s(i, 0), visible);
        s.row(i).tail(n_ctx - visible).setZero();
      }
      out_h.noalias() = s * v_h;
    }
  });
}

}  // namespace kvlm
