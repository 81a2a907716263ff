#pragma once
// Causal scaled dot-product attention over one cache layer, for multi-head, grouped-query and
// multi-query attention alike: query head h reads KV head h / group, group = n_heads / n_kv_heads.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

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

/// Per-thread buffers of attention(), sized once per session: O(n_threads x tile), whatever the
/// batch size or the context length.
class AttentionScratch {
 public:
  // Cache positions per tile: the unit of the online softmax, and of conversion to float when
  // the cache is not F32.
  static constexpr std::int64_t kTilePositions = 64;
  // Query rows of one head per block in a batch.
  static constexpr std::int64_t kTileQueries = 64;

  /// group: n_heads / n_kv_heads; kv_dim: n_kv_heads * head_dim; cache_type: what the cache
  /// stores (F32 is read in place and needs no tiles).
  AttentionScratch(int n_threads, int group, std::int64_t kv_dim, DType cache_type)
      : scores_({n_threads, pass_rows(group), kTilePositions}),
        stats_({n_threads, pass_rows(group), 2}),
        tiles_(cache_type == DType::kF32 ? Tensor<float>()
                                         : Tensor<float>({n_threads, kTilePositions, kv_dim})),
        panels_({n_threads, panel_floats(kv_dim)}),
        products_({n_threads, kTileQueries, kv_dim}) {}

  /// What the constructor allocates, in bytes.
  static std::size_t bytes_needed(int n_threads, int group, std::int64_t kv_dim, DType cache_type) {
    const std::int64_t rows = pass_rows(group);
    const std::int64_t tile = cache_type == DType::kF32 ? 0 : kTilePositions * kv_dim;
    return static_cast<std::size_t>(n_threads * (rows * kTilePositions + rows * 2 + tile +
                                                 panel_floats(kv_dim) + kTileQueries * kv_dim)) *
           sizeof(float);
  }

  // Query rows one thread works on at once: a batch's block, or the heads of one or more groups.
  static std::int64_t pass_rows(int group) { return std::max<std::int64_t>(kTileQueries, group); }

  // A thread's scores for one tile, [pass_rows, kTilePositions].
  float* scores(int thread) { return scores_.view().row(thread * scores_.view().dim(1)); }
  // A thread's running (max, sum) of each row's softmax, [pass_rows, 2].
  float* stats(int thread) { return stats_.view().row(thread * stats_.view().dim(1)); }
  // A thread's tile of cache rows as floats, [kTilePositions, kv_dim].
  float* tile(int thread) { return tiles_.view().row(thread * kTilePositions); }
  // A thread's panel of keys or values (kernels/panel.hpp), [panel_floats(kv_dim)].
  float* panel(int thread) { return panels_.view().row(thread); }
  // A thread's product of a tile's scores and values, [kTileQueries, kv_dim].
  float* product(int thread) { return products_.view().row(thread * kTileQueries); }
  std::size_t byte_size() const {
    return scores_.byte_size() + stats_.byte_size() + tiles_.byte_size() + panels_.byte_size() +
           products_.byte_size();
  }

 private:
  // A panel holds a key tile (head_dim columns) or a value tile (kTilePositions columns).
  static std::int64_t panel_floats(std::int64_t kv_dim) {
    return kernels::panel_floats(std::max(kv_dim, kTilePositions));
  }

  Tensor<float> scores_;  // [n_threads, pass_rows, kTilePositions]
  Tensor<float> stats_;   // [n_threads, pass_rows, 2]
  Tensor<float> tiles_;   // [n_threads, kTilePositions, kv_dim], empty for an F32 cache
  Tensor<float> panels_;  // [n_threads, panel_floats(kv_dim)]
  Tensor<float> products_;  // [n_threads, kTileQueries, kv_dim]
};

/// out = softmax(Q K^T / sqrt(head_dim), causal) V for tokens at positions
/// [start_pos, start_pos + n_tokens): token i attends to positions t <= start_pos + i.
///   q:      [n_tokens, n_heads * head_dim], already rotated
///   keys:   [>= start_pos + n_tokens, n_kv_heads * head_dim], rows [0, start_pos + n_tokens) valid
///   values: the same shape and type as keys
///   out:    [n_tokens, n_heads * head_dim]
/// Flash-style: the cache is read a tile of kTilePositions positions at a time, each row's softmax
/// kept online (a running max and sum, earlier outputs rescaled when the max grows), and tiles past
/// a block's last visible position are never read, so the scratch is per thread and per tile.
inline void attention(TensorView<const float> q, const KVRows& keys, const KVRows& values,
                      const AttentionShape& shape, int start_pos, AttentionScratch& scratch,
                      TensorView<float> out, int n_threads) {
  using Strided = Eigen::OuterStride<>;
  using ConstRows = Eigen::Map<const RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  using Rows = Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  constexpr std::int64_t kTile = AttentionScratch::kTilePositions;
  const std::int64_t n_tokens = q.rows();
  const std::int64_t n_ctx = start_pos + n_tokens;  // positions visible to the last token
  const int hd = shape.head_dim;
  const int group = shape.group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // Query rows are taken in blocks that share one KV head. For one token, a block is the
  // group's heads, [group, head_dim] and contiguous, so each cached K/V row is read once per
  // group: GQA's saving in decode. For a batch, a block is one head over up to kTileQueries
  // tokens, [rows, head_dim] with row stride n_heads * head_dim, so the products are
  // matrix-matrix; block b is head b / n_query_tiles, tile b % n_query_tiles.
  const bool one_token = n_tokens == 1;
  const std::int64_t n_query_tiles = (n_tokens + AttentionScratch::kTileQueries - 1) /
                                     AttentionScratch::kTileQueries;
  const std::int64_t n_blocks = one_token ? shape.n_kv_heads : shape.n_heads * n_query_tiles;
  const std::int64_t row_stride = one_token ? hd : q.cols();
  KVLM_ASSERT(q.cols() == std::int64_t{shape.n_heads} * hd && out.cols() == q.cols());
  KVLM_ASSERT(keys.rows >= n_ctx && values.rows >= n_ctx && keys.type == values.type);
  const std::int64_t work = std::int64_t{shape.n_heads} * n_tokens * n_ctx * hd * 2;

  // An F32 cache is read in place. Any other is converted a tile at a time into the thread's
  // float tile, and in decode one conversion serves all the thread's KV heads that fit in a pass:
  // just their columns of each row when those are whole blocks, else whole rows. A batch takes
  // one block per pass; its conversions are shared by its query rows anyway.
  const bool in_place = keys.type == DType::kF32;
  const auto& to_float = kernels::kernels(keys.type).to_float;
  const int block_size = info(keys.type).block_size, block_bytes = info(keys.type).block_bytes;
  const std::int64_t blocks_per_pass =
      one_token && !in_place ? std::max<std::int64_t>(1, AttentionScratch::pass_rows(group) / group)
                             : 1;
  // A batch's products run on the path's float GEMM where there is one; one token's (a few
  // heads against each key) and the scalar path's on Eigen.
  const kernels::PanelKernels* panels = one_token ? nullptr : kernels::panel_kernels();

  detail::parallel_for_rows(n_blocks, work, n_threads, 1,
                            [&](std::int64_t block_begin, std::int64_t block_end, int thread) {
    float* tile = in_place ? nullptr : scratch.tile(thread);  // [kTile, kv_dim]
    float* const scores = scratch.scores(thread);             // [pass rows, kTile]
    float* const stats = scratch.stats(thread);               // [pass rows, 2]: max, sum
    float* const panel = scratch.panel(thread);
    float* const product = scratch.product(thread);           // [kTileQueries, head_dim]
    for (std::int64_t b0 = block_begin; b0 < block_end; b0 += blocks_per_pass) {
      const std::int64_t b1 = std::min(block_end, b0 + blocks_per_pass);
      // The pass's query rows: block b's first token and head, its row count, its rows' offset
      // in the pass, and its KV head.
      const std::int64_t first_token = one_token ? 0 : b0 % n_query_tiles * AttentionScratch::kTileQueries;
      const std::int64_t block_rows = one_token ? group
                                                : std::min(AttentionScratch::kTileQueries,
                                                           n_tokens - first_token);
      const std::int64_t pass_rows = (b1 - b0) * block_rows;
      const auto head_of = [&](std::int64_t b) { return one_token ? b * group : b / n_query_tiles; };
      const auto kv_head_of = [&](std::int64_t b) { return one_token ? b : b / n_query_tiles / group; };
      const auto q_of = [&](std::int64_t b) {
        return ConstRows(q.data() + first_token * q.cols() + head_of(b) * hd, block_rows, hd,
                         Strided(row_stride));
      };
      const auto out_of = [&](std::int64_t b) {
        return Rows(out.data() + first_token * out.cols() + head_of(b) * hd, block_rows, hd,
                    Strided(row_stride));
      };
      const auto scores_of = [&](std::int64_t b, std::int64_t n) {  // [block_rows, n]
        return Rows(scores + (b - b0) * block_rows * kTile, block_rows, n, Strided(kTile));
      };
      // The KV heads of this pass, [h0, h1), and the columns of the rows they occupy.
      const std::int64_t h0 = kv_head_of(b0), h1 = kv_head_of(b1 - 1) + 1;
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
      // KV head h's rows from position t0 on as floats, cache.cols apart: the cache itself, or
      // the tile.
      const auto head_data = [&](const KVRows& cache, std::int64_t t0, std::int64_t kv_head) {
        return (in_place ? reinterpret_cast<const float*>(cache.row(t0)) : tile) + kv_head * hd;
      };
      const auto head_rows = [&](const KVRows& cache, std::int64_t t0, std::int64_t n,
                                 std::int64_t kv_head) {  // [n, head_dim]
        return ConstRows(head_data(cache, t0, kv_head), n, hd, Strided(cache.cols));
      };
      // A batch's products run on the path's float GEMM, 32 keys or 32 output columns per panel:
      // block b's scores for keys [t0, t0 + n), then the tile's share of its outputs.
      const auto batch_scores = [&](std::int64_t b, std::int64_t t0, std::int64_t n) {
        const float* k_rows = head_data(keys, t0, kv_head_of(b));
        for (std::int64_t j = 0; j < n; j += kernels::kPanelRows) {
          const std::int64_t rows = std::min<std::int64_t>(kernels::kPanelRows, n - j);
          panels->pack(k_rows + j * keys.cols, keys.cols, rows, hd, panel);
          panels->gemm(panel, rows, hd, q_of(b).data(), row_stride, block_rows,
                       scores_of(b, n).data() + j, kTile);
        }
        scores_of(b, n) *= scale;
      };
      const auto batch_outputs = [&](std::int64_t b, std::int64_t t0, std::int64_t n) {
        const float* v_rows = head_data(values, t0, kv_head_of(b));
        for (std::int64_t d = 0; d < hd; d += kernels::kPanelRows) {
          const std::int64_t rows = std::min<std::int64_t>(kernels::kPanelRows, hd - d);
          kernels::pack_panel_from_columns(v_rows + d, values.cols, rows, n, panel);
          panels->gemm(panel, rows, n, scores_of(b, n).data(), kTile, block_rows, product + d, hd);
        }
        out_of(b) += ConstRows(product, block_rows, hd, Strided(hd));
      };

      for (std::int64_t r = 0; r < pass_rows; ++r) {
        stats[2 * r] = -std::numeric_limits<float>::infinity();
        stats[2 * r + 1] = 0.0f;
      }
      for (std::int64_t b = b0; b < b1; ++b) out_of(b).setZero();
      // Positions the pass's last token sees; tiles after them are all masked.
      const std::int64_t n_visible = one_token ? n_ctx : start_pos + first_token + block_rows;
      for (std::int64_t t0 = 0; t0 < n_visible; t0 += kTile) {
        const std::int64_t n = std::min(kTile, n_visible - t0);
        convert(keys, t0, n);
        for (std::int64_t b = b0; b < b1; ++b) {
          if (panels != nullptr) {
            batch_scores(b, t0, n);
          } else {
            scores_of(b, n).noalias() =
                (q_of(b) * head_rows(keys, t0, n, kv_head_of(b)).transpose()) * scale;
          }
        }
        // Online softmax: each row's scores become exp(score - running max), its sum and its
        // output so far are rescaled to the new max.
        for (std::int64_t r = 0; r < pass_rows; ++r) {
          const std::int64_t token = first_token + (one_token ? 0 : r);
          // positions t0 + [0, visible) of this tile are <= start_pos + token
          const std::int64_t visible = std::clamp<std::int64_t>(start_pos + token + 1 - t0, 0, n);
          Eigen::Map<Eigen::ArrayXf> s(scores + r * kTile, n);
          s.tail(n - visible).setZero();
          if (visible == 0) continue;
          auto p = s.head(visible);
          float& max = stats[2 * r];
          const float new_max = std::max(max, p.maxCoeff());
          const float rescale = std::exp(max - new_max);  // 0 for the first tile
          exp_shifted(p.data(), visible, new_max);
          stats[2 * r + 1] = stats[2 * r + 1] * rescale + p.sum();
          max = new_max;
          if (rescale != 1.0f) out_of(b0 + r / block_rows).row(r % block_rows) *= rescale;
        }
        convert(values, t0, n);
        for (std::int64_t b = b0; b < b1; ++b) {
          if (panels != nullptr) {
            batch_outputs(b, t0, n);
          } else {
            out_of(b).noalias() += scores_of(b, n) * head_rows(values, t0, n, kv_head_of(b));
          }
        }
      }
      for (std::int64_t r = 0; r < pass_rows; ++r) {
        out_of(b0 + r / block_rows).row(r % block_rows) /= stats[2 * r + 1];
      }
    }
  });
}

}  // namespace kvlm
