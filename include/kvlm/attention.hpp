#pragma once
// Causal scaled dot-product attention over one cache layer, for multi-head, grouped-query and
// multi-query attention alike: query head h reads KV head h / group, group = n_heads / n_kv_heads.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvlm/detail/assert.hpp"
#include "kvlm/detail/parallel.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/kernels/kernels.hpp"
#include "kvlm/kv_cache.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;

  int group() const { return n_heads / n_kv_heads; }
};

/// Per-thread buffers of attention(), sized once per session.
class AttentionScratch {
 public:
  // Cache positions converted to float at a time when the cache is not F32.
  static constexpr std::int64_t kTilePositions = 64;

  /// max_rows: most query rows of one block (max(max_batch, group)); max_seq_len: most positions;
  /// kv_dim: n_kv_heads * head_dim; cache_type: what the cache stores (F32 needs no tiles).
  AttentionScratch(int n_threads, std::int64_t max_rows, std::int64_t max_seq_len,
                   std::int64_t kv_dim, DType cache_type)
      : scores_({n_threads, max_rows, max_seq_len}),
        tiles_(cache_type == DType::kF32 ? Tensor<float>()
                                         : Tensor<float>({n_threads, kTilePositions, kv_dim})) {}

  // [n_threads, max_rows, max_seq_len]
  TensorView<float> scores() { return scores_.view(); }
  // A thread's tile of cache rows as floats: [kTilePositions, kv_dim].
  float* tile(int thread) { return tiles_.view().row(thread * kTilePositions); }
  std::size_t byte_size() const { return scores_.byte_size() + tiles_.byte_size(); }

 private:
  Tensor<float> scores_;
  Tensor<float> tiles_;
};

/// out = softmax(Q K^T / sqrt(head_dim), causal) V for tokens at positions
/// [start_pos, start_pos + n_tokens): token i attends to positions t <= start_pos + i.
///   q:      [n_tokens, n_heads * head_dim], already rotated
///   keys:   [>= start_pos + n_tokens, n_kv_heads * head_dim], rows [0, start_pos + n_tokens) valid
///   values: the same shape and type as keys
///   scratch: scores for n_threads x max(n_tokens, group) x (start_pos + n_tokens)
///   out:    [n_tokens, n_heads * head_dim]
inline void attention(TensorView<const float> q, const KVRows& keys, const KVRows& values,
                      const AttentionShape& shape, int start_pos, AttentionScratch& scratch,
                      TensorView<float> out, int n_threads) {
  using Strided = Eigen::OuterStride<>;
  using ConstRows = Eigen::Map<const RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  using Rows = Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  const std::int64_t n_tokens = q.rows();
  const std::int64_t n_ctx = start_pos + n_tokens;  // positions visible to the last token
  const int hd = shape.head_dim;
  const int group = shape.group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const TensorView<float> scores = scratch.scores();

  // Query rows are taken in blocks that share one KV head. For one token, a block is the
  // group's heads, [group, head_dim] and contiguous, so each cached K/V row is read once per
  // group: GQA's saving in decode. For a batch, a block is one head over all the tokens,
  // [n_tokens, head_dim] with row stride n_heads * head_dim, so the products are matrix-matrix.
  const bool one_token = n_tokens == 1;
  const std::int64_t n_blocks = one_token ? shape.n_kv_heads : shape.n_heads;
  const std::int64_t block_rows = one_token ? group : n_tokens;
  const std::int64_t row_stride = one_token ? hd : q.cols();
  KVLM_ASSERT(q.cols() == std::int64_t{shape.n_heads} * hd && out.cols() == q.cols());
  KVLM_ASSERT(keys.rows >= n_ctx && values.rows >= n_ctx && keys.type == values.type);
  KVLM_ASSERT(scores.rank() == 3 && scores.dim(1) >= block_rows && scores.dim(2) >= n_ctx);
  const std::int64_t work = std::int64_t{shape.n_heads} * n_tokens * n_ctx * hd * 2;

  // An F32 cache is read in place, all positions at once. Any other is converted a tile of
  // positions at a time into the thread's float tile, and in decode one conversion serves all
  // the thread's KV heads (a pass): just their columns of each row when those are whole blocks,
  // else whole rows. A batch takes one block per pass; its conversions are shared by n_tokens
  // query rows anyway.
  const bool in_place = keys.type == DType::kF32;
  const std::int64_t tile_positions = in_place ? n_ctx : AttentionScratch::kTilePositions;
  const auto& to_float = kernels::kernels(keys.type).to_float;
  const int block_size = info(keys.type).block_size, block_bytes = info(keys.type).block_bytes;
  const std::int64_t blocks_per_pass =
      one_token && !in_place ? std::max<std::int64_t>(1, scores.dim(1) / block_rows) : 1;

  detail::parallel_for_rows(n_blocks, work, n_threads, 1,
                            [&](std::int64_t block_begin, std::int64_t block_end, int thread) {
    float* tile = in_place ? nullptr : scratch.tile(thread);  // [kTilePositions, kv_dim]
    for (std::int64_t b0 = block_begin; b0 < block_end; b0 += blocks_per_pass) {
      const std::int64_t b1 = std::min(block_end, b0 + blocks_per_pass);
      // The KV heads of this pass, [h0, h1), and the columns of the rows they occupy.
      const std::int64_t h0 = one_token ? b0 : b0 / group, h1 = one_token ? b1 : h0 + 1;
      const std::int64_t first_column = h0 * hd, n_columns = (h1 - h0) * hd;
      const bool whole_blocks = first_column % block_size == 0 && n_columns % block_size == 0;
      // Positions [t0, t0 + n) of `cache` into the tile: [n, kv_dim], those columns valid.
      const auto convert = [&](const KVRows& cache, std::int64_t t0, std::int64_t n) {
        if (in_place) return;
        for (std::int64_t i = 0; i < n; ++i) {
          float* dst = tile + i * cache.cols;
          if (whole_blocks) {
            to_float(cache.row(t0 + i) + first_column / block_size * block_bytes,
                     dst + first_column, n_columns);
          } else {
            to_float(cache.row(t0 + i), dst, cache.cols);
          }
        }
      };
      // KV head h's rows [t0, t0 + n) as floats, [n, head_dim]: the cache itself, or the tile.
      const auto head_rows = [&](const KVRows& cache, std::int64_t t0, std::int64_t n,
                                 std::int64_t kv_head) {
        const float* base = in_place ? reinterpret_cast<const float*>(cache.row(t0)) : tile;
        return ConstRows(base + kv_head * hd, n, hd, Strided(cache.cols));
      };
      // Block b's query rows, scores and outputs.
      const auto q_of = [&](std::int64_t b) {
        return ConstRows(q.data() + (one_token ? b * group : b) * hd, block_rows, hd,
                         Strided(row_stride));
      };
      const auto out_of = [&](std::int64_t b) {
        return Rows(out.data() + (one_token ? b * group : b) * hd, block_rows, hd,
                    Strided(row_stride));
      };
      const auto scores_of = [&](std::int64_t b) {  // [block_rows, n_ctx], row stride dim(2)
        return Rows(scores.data() + (thread * scores.dim(1) + (b - b0) * block_rows) * scores.dim(2),
                    block_rows, n_ctx, Strided(scores.dim(2)));
      };
      const auto kv_head_of = [&](std::int64_t b) { return one_token ? b : b / group; };

      for (std::int64_t t0 = 0; t0 < n_ctx; t0 += tile_positions) {
        const std::int64_t n = std::min(tile_positions, n_ctx - t0);
        convert(keys, t0, n);
        for (std::int64_t b = b0; b < b1; ++b) {
          scores_of(b).middleCols(t0, n).noalias() =
              (q_of(b) * head_rows(keys, t0, n, kv_head_of(b)).transpose()) * scale;
        }
      }
      for (std::int64_t b = b0; b < b1; ++b) {
        Rows s = scores_of(b);
        for (std::int64_t r = 0; r < block_rows; ++r) {
          // the causal bound t <= start_pos + i, for the token i of row r
          const std::int64_t visible = start_pos + (one_token ? 0 : r) + 1;
          softmax(&s(r, 0), visible);
          s.row(r).tail(n_ctx - visible).setZero();
        }
        out_of(b).setZero();
      }
      for (std::int64_t t0 = 0; t0 < n_ctx; t0 += tile_positions) {
        const std::int64_t n = std::min(tile_positions, n_ctx - t0);
        convert(values, t0, n);
        for (std::int64_t b = b0; b < b1; ++b) {
          out_of(b).noalias() +=
              scores_of(b).middleCols(t0, n) * head_rows(values, t0, n, kv_head_of(b));
        }
      }
    }
  });
}

}  // namespace kvlm
