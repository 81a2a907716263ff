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
  std::int64_t q_dim() const { return std::int64_t{n_heads} * head_dim; }
  std::int64_t kv_dim() const { return std::int64_t{n_kv_heads} * head_dim; }
};

/// Buffers of attention(), sized once per session: per thread, one tile's worth; per chunk of a
/// decode step, one output row. Nothing grows with the batch or the context.
class AttentionScratch {
 public:
  // Cache positions per tile: the unit of the online softmax, and of conversion to float when
  // the cache is not F32.
  static constexpr std::int64_t kTilePositions = 64;
  // Query rows of one head per block in a batch.
  static constexpr std::int64_t kTileQueries = 64;
  // A decode step splits the positions into at most kMaxChunks chunks of whole tiles, each at
  // least kMinChunkPositions long, whatever the thread count: threads take whole chunks, and the
  // chunks' softmaxes are merged in order, so every thread count gives the same bits.
  static constexpr std::int64_t kMaxChunks = 64;
  static constexpr std::int64_t kMinChunkPositions = 2 * kTilePositions;

  AttentionScratch(int n_threads, const AttentionShape& shape)
      : scores_({n_threads, query_rows(shape), kTilePositions}),
        stats_({n_threads, kTileQueries, 2}),
        tiles_({n_threads, kTilePositions, shape.kv_dim()}),
        panels_({n_threads, panel_floats(shape)}),
        products_({n_threads, kTileQueries, shape.head_dim}),
        chunk_outputs_({kMaxChunks, shape.q_dim()}),
        chunk_stats_({kMaxChunks, shape.n_heads, 2}) {}

  /// What the constructor allocates, in bytes.
  static std::size_t bytes_needed(int n_threads, const AttentionShape& shape) {
    const std::int64_t tile = kTilePositions * shape.kv_dim();
    const std::int64_t per_thread = query_rows(shape) * kTilePositions + kTileQueries * 2 + tile +
                                    panel_floats(shape) + kTileQueries * shape.head_dim;
    const std::int64_t per_chunk = shape.q_dim() + std::int64_t{shape.n_heads} * 2;
    return static_cast<std::size_t>(n_threads * per_thread + kMaxChunks * per_chunk) *
           sizeof(float);
  }

  // Query rows a thread works on at once: a batch's block, or all the heads of one token.
  static std::int64_t query_rows(const AttentionShape& shape) {
    return std::max<std::int64_t>(kTileQueries, shape.n_heads);
  }

  // A thread's scores for one tile, [query_rows, kTilePositions].
  float* scores(int thread) { return scores_.view().row(thread * scores_.view().dim(1)); }
  // A thread's running (max, sum) of each row's softmax in a batch, [kTileQueries, 2].
  float* stats(int thread) { return stats_.view().row(thread * kTileQueries); }
  // A thread's tile of cache rows as floats, [kTilePositions, kv_dim].
  float* tile(int thread) { return tiles_.view().row(thread * kTilePositions); }
  // A thread's panel of keys or values (kernels/panel.hpp).
  float* panel(int thread) { return panels_.view().row(thread); }
  // A thread's product of a tile's scores and values, [kTileQueries, head_dim].
  float* product(int thread) { return products_.view().row(thread * kTileQueries); }
  // A decode step's chunk c: its heads' outputs, not yet divided by their softmax sums,
  // [n_heads * head_dim]; and their (max, sum), [n_heads, 2].
  float* chunk_output(std::int64_t c) { return chunk_outputs_.view().row(c); }
  float* chunk_stats(std::int64_t c) {
    return chunk_stats_.view().row(c * chunk_stats_.view().dim(1));
  }

  std::size_t byte_size() const {
    return scores_.byte_size() + stats_.byte_size() + tiles_.byte_size() + panels_.byte_size() +
           products_.byte_size() + chunk_outputs_.byte_size() + chunk_stats_.byte_size();
  }

 private:
  // A panel holds a key tile (head_dim columns) or a value tile (kTilePositions columns).
  static std::int64_t panel_floats(const AttentionShape& shape) {
    return kernels::panel_floats(std::max<std::int64_t>(shape.head_dim, kTilePositions));
  }

  Tensor<float> scores_;    // [n_threads, query_rows, kTilePositions]
  Tensor<float> stats_;     // [n_threads, kTileQueries, 2]
  Tensor<float> tiles_;     // [n_threads, kTilePositions, kv_dim]
  Tensor<float> panels_;    // [n_threads, panel_floats]
  Tensor<float> products_;  // [n_threads, kTileQueries, head_dim]
  Tensor<float> chunk_outputs_;  // [kMaxChunks, n_heads * head_dim]
  Tensor<float> chunk_stats_;    // [kMaxChunks, n_heads, 2]
};

namespace detail {

// Query rows that one thread takes over a range of cached positions together: a batch's block
// (one head over up to kTileQueries tokens) or one token's heads. Row r is at q + r * ld; its
// output so far (weighted values not yet divided by the softmax sum) at out + r * ld, its running
// max and sum at stats[2r], stats[2r + 1]. It reads KV head first_kv_head + r / group and sees the
// positions up to last_position + r * token_step.
struct QueryRows {
  const float* q;
  float* out;
  float* stats;
  std::int64_t ld;
  std::int64_t n;
  std::int64_t group;
  std::int64_t first_kv_head;
  std::int64_t last_position;
  std::int64_t token_step;  // 1 for a batch's tokens, 0 for one token's heads

  std::int64_t n_kv_heads() const { return (n + group - 1) / group; }
};

}  // namespace detail

/// out = softmax(Q K^T / sqrt(head_dim), causal) V for tokens at positions
/// [start_pos, start_pos + n_tokens): token i attends to positions t <= start_pos + i.
///   q:      [n_tokens, n_heads * head_dim], already rotated
///   keys:   [>= start_pos + n_tokens, n_kv_heads * head_dim], rows [0, start_pos + n_tokens) valid
///   values: the same shape and type as keys
///   out:    [n_tokens, n_heads * head_dim]
/// Flash-style: the cache is read a tile of kTilePositions positions at a time, each row's softmax
/// kept online (a running max and sum, earlier outputs rescaled when the max grows), and tiles past
/// a row's last visible position are never read, so the scratch is per thread and per tile.
///
/// A batch splits its query rows across threads: blocks of one head over up to kTileQueries
/// tokens, whose products are matrix-matrix. One token (a decode step) has too few rows for that:
/// it splits the positions instead, into chunks that each thread reads whole rows of, in address
/// order, for all heads at once (flash-decoding), and merges the chunks' softmaxes at the end.
inline void attention(TensorView<const float> q, const KVRows& keys, const KVRows& values,
                      const AttentionShape& shape, int start_pos, AttentionScratch& scratch,
                      TensorView<float> out, ThreadPool& threads) {
  using Strided = Eigen::OuterStride<>;
  using ConstRows = Eigen::Map<const RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  using Rows = Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Strided>;
  using detail::QueryRows;
  constexpr std::int64_t kTile = AttentionScratch::kTilePositions;
  const std::int64_t n_tokens = q.rows();
  const std::int64_t n_ctx = start_pos + n_tokens;  // positions visible to the last token
  const int hd = shape.head_dim;
  const int group = shape.group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const bool one_token = n_tokens == 1;
  KVLM_ASSERT(q.cols() == shape.q_dim() && out.cols() == q.cols());
  KVLM_ASSERT(keys.rows >= n_ctx && values.rows >= n_ctx && keys.type == values.type);
  const std::int64_t work = std::int64_t{shape.n_heads} * n_tokens * n_ctx * hd * 2;

  // A batch reads an F32 cache in place. Any other cache, and any cache in a decode step, is
  // converted (or copied) a tile at a time into the thread's float tile: just the columns of the
  // rows' KV heads when those are whole blocks, else whole rows. A step's rows are all its heads,
  // so it copies whole rows, in address order: the one order in which this machine's prefetchers
  // stream the cache at full bandwidth (reading it a head at a time down the rows, as the
  // products do, is 25-30% slower), and the products then read the tile from L2.
  const bool in_place = keys.type == DType::kF32 && !one_token;
  const auto& to_float = kernels::kernels(keys.type).to_float;
  const int block_size = info(keys.type).block_size, block_bytes = info(keys.type).block_bytes;
  // A batch's products run on the path's float GEMM, one token's on its attention kernels; the
  // scalar path's on Eigen.
  const kernels::PanelKernels* panels = one_token ? nullptr : kernels::panel_kernels();
  const kernels::AttentionKernels* step = one_token ? kernels::attention_kernels() : nullptr;

  // Adds positions [p_begin, p_end) (whole tiles but perhaps the last) to the rows' online
  // softmax, on thread `thread`'s scratch.
  const auto attend = [&](const QueryRows& rows, std::int64_t p_begin, std::int64_t p_end,
                          int thread) {
    float* const tile = in_place ? nullptr : scratch.tile(thread);  // [kTile, kv_dim]
    float* const scores = scratch.scores(thread);                   // [rows.n, kTile]
    float* const panel = scratch.panel(thread);
    float* const product = scratch.product(thread);  // [rows.n, head_dim]
    const std::int64_t first_column = rows.first_kv_head * hd, n_columns = rows.n_kv_heads() * hd;
    const bool whole_blocks = first_column % block_size == 0 && n_columns % block_size == 0;
    // Positions [t0, t0 + n) of `cache` into the tile: [n, kv_dim], the rows' columns valid.
    const auto convert = [&](const KVRows& cache, std::int64_t t0, std::int64_t n) {
      if (in_place) return;
      for (std::int64_t i = 0; i < n; ++i) {
        float* dst = tile + i * cache.cols;
        if (whole_blocks) {
          to_float(cache.row(t0 + i) + first_column / block_size * block_bytes, dst + first_column,
                   n_columns);
        } else {
          to_float(cache.row(t0 + i), dst, cache.cols);
        }
      }
    };
    // The rows' first KV head in positions t0 on, as floats cache.cols apart: the cache itself,
    // or the tile.
    const auto cached = [&](const KVRows& cache, std::int64_t t0) {
      return (in_place ? reinterpret_cast<const float*>(cache.row(t0)) : tile) + first_column;
    };
    const auto q_rows = [&](std::int64_t r0, std::int64_t n) {  // [n, head_dim]
      return ConstRows(rows.q + r0 * rows.ld, n, hd, Strided(rows.ld));
    };
    const auto out_rows = [&](std::int64_t r0, std::int64_t n) {  // [n, head_dim]
      return Rows(rows.out + r0 * rows.ld, n, hd, Strided(rows.ld));
    };
    const auto score_rows = [&](std::int64_t r0, std::int64_t n, std::int64_t n_positions) {
      return Rows(scores + r0 * kTile, n, n_positions, Strided(kTile));
    };
    // Without the float GEMM, the products go KV head by KV head: rows [r0, r0 + n) read head
    // h's [n_positions, head_dim] rows.
    const auto for_each_kv_head = [&](auto&& fn) {
      for (std::int64_t h = 0; h < rows.n_kv_heads(); ++h) {
        const std::int64_t r0 = h * rows.group;
        fn(h, r0, std::min(rows.group, rows.n - r0));
      }
    };
    // The scores for positions [t0, t0 + n), then their share of the outputs. On the float GEMM
    // (a batch's one KV head), 32 keys or 32 output columns per panel.
    const auto tile_scores = [&](std::int64_t t0, std::int64_t n) {
      const float* k = cached(keys, t0);
      if (panels == nullptr) {
        return for_each_kv_head([&](std::int64_t h, std::int64_t r0, std::int64_t n_rows) {
          if (step != nullptr) {
            return step->scores(rows.q + r0 * rows.ld, rows.ld, n_rows, k + h * hd, keys.cols, n,
                                hd, scale, scores + r0 * kTile, kTile);
          }
          const ConstRows k_h(k + h * hd, n, hd, Strided(keys.cols));
          score_rows(r0, n_rows, n).noalias() = (q_rows(r0, n_rows) * k_h.transpose()) * scale;
        });
      }
      for (std::int64_t j = 0; j < n; j += kernels::kPanelRows) {
        const std::int64_t n_keys = std::min<std::int64_t>(kernels::kPanelRows, n - j);
        panels->pack(k + j * keys.cols, keys.cols, n_keys, hd, panel);
        panels->gemm(panel, n_keys, hd, rows.q, rows.ld, rows.n, scores + j, kTile);
      }
      score_rows(0, rows.n, n) *= scale;
    };
    const auto tile_outputs = [&](std::int64_t t0, std::int64_t n) {
      const float* v = cached(values, t0);
      if (panels == nullptr) {
        return for_each_kv_head([&](std::int64_t h, std::int64_t r0, std::int64_t n_rows) {
          if (step != nullptr) {
            return step->add_weighted_rows(scores + r0 * kTile, kTile, n_rows, v + h * hd,
                                           values.cols, n, hd, rows.out + r0 * rows.ld, rows.ld);
          }
          const ConstRows v_h(v + h * hd, n, hd, Strided(values.cols));
          out_rows(r0, n_rows).noalias() += score_rows(r0, n_rows, n) * v_h;
        });
      }
      for (std::int64_t d = 0; d < hd; d += kernels::kPanelRows) {
        const std::int64_t n_dims = std::min<std::int64_t>(kernels::kPanelRows, hd - d);
        kernels::pack_panel_from_columns(v + d, values.cols, n_dims, n, panel);
        panels->gemm(panel, n_dims, n, scores, kTile, rows.n, product + d, hd);
      }
      out_rows(0, rows.n) += ConstRows(product, rows.n, hd, Strided(hd));
    };

    for (std::int64_t t0 = p_begin; t0 < p_end; t0 += kTile) {
      const std::int64_t n = std::min(kTile, p_end - t0);
      convert(keys, t0, n);
      tile_scores(t0, n);
      // Online softmax: each row's scores become exp(score - running max), its sum and its
      // output so far are rescaled to the new max.
      for (std::int64_t r = 0; r < rows.n; ++r) {
        // positions t0 + [0, visible) of this tile are visible to row r
        const std::int64_t last = rows.last_position + r * rows.token_step;
        const std::int64_t visible = std::clamp<std::int64_t>(last + 1 - t0, 0, n);
        Eigen::Map<Eigen::ArrayXf> s(scores + r * kTile, n);
        s.tail(n - visible).setZero();
        if (visible == 0) continue;
        auto p = s.head(visible);
        float& max = rows.stats[2 * r];
        const float new_max = std::max(max, p.maxCoeff());
        const float rescale = std::exp(max - new_max);  // 0 for the first tile
        exp_shifted(p.data(), visible, new_max);
        rows.stats[2 * r + 1] = rows.stats[2 * r + 1] * rescale + p.sum();
        max = new_max;
        if (rescale != 1.0f) out_rows(r, 1) *= rescale;
      }
      convert(values, t0, n);
      tile_outputs(t0, n);
    }
  };
  // Empties the rows' softmax and outputs.
  const auto start = [&](const QueryRows& rows) {
    for (std::int64_t r = 0; r < rows.n; ++r) {
      rows.stats[2 * r] = -std::numeric_limits<float>::infinity();
      rows.stats[2 * r + 1] = 0.0f;
    }
    Rows(rows.out, rows.n, hd, Strided(rows.ld)).setZero();
  };

  if (!one_token) {
    // Block b is head b / n_query_tiles over query tile b % n_query_tiles.
    const std::int64_t n_query_tiles =
        (n_tokens + AttentionScratch::kTileQueries - 1) / AttentionScratch::kTileQueries;
    detail::parallel_for_rows(shape.n_heads * n_query_tiles, work, threads, 1,
                              [&](std::int64_t block_begin, std::int64_t block_end, int thread) {
      for (std::int64_t b = block_begin; b < block_end; ++b) {
        const std::int64_t head = b / n_query_tiles;
        const std::int64_t first_token = b % n_query_tiles * AttentionScratch::kTileQueries;
        const std::int64_t n = std::min(AttentionScratch::kTileQueries, n_tokens - first_token);
        const QueryRows rows{q.data() + first_token * q.cols() + head * hd,
                             out.data() + first_token * out.cols() + head * hd,
                             scratch.stats(thread), q.cols(), n, n, head / group,
                             start_pos + first_token, 1};
        start(rows);
        // Tiles past the block's last token's position are all masked.
        attend(rows, 0, start_pos + first_token + n, thread);
        for (std::int64_t r = 0; r < n; ++r) {
          Eigen::Map<Eigen::VectorXf>(rows.out + r * rows.ld, hd) /= rows.stats[2 * r + 1];
        }
      }
    });
    return;
  }

  // One token: chunk c holds positions [c * chunk, (c + 1) * chunk) of [0, n_ctx).
  const std::int64_t chunk = std::max(
      AttentionScratch::kMinChunkPositions,
      (n_ctx + AttentionScratch::kMaxChunks * kTile - 1) / (AttentionScratch::kMaxChunks * kTile) *
          kTile);
  const std::int64_t n_chunks = (n_ctx + chunk - 1) / chunk;
  const auto chunk_rows = [&](std::int64_t c) {
    return QueryRows{q.data(), scratch.chunk_output(c), scratch.chunk_stats(c), hd,
                     shape.n_heads, group, 0, start_pos, 0};
  };
  detail::parallel_for_rows(n_chunks, work, threads, 1,
                            [&](std::int64_t chunk_begin, std::int64_t chunk_end, int thread) {
    for (std::int64_t c = chunk_begin; c < chunk_end; ++c) {
      const QueryRows rows = chunk_rows(c);
      start(rows);
      attend(rows, c * chunk, std::min(n_ctx, (c + 1) * chunk), thread);
    }
  });
  // Each head's chunks merged in order: out = sum_c e^(max_c - max) out_c / sum_c e^(max_c - max)
  // sum_c, every chunk holding at least one visible position.
  for (std::int64_t h = 0; h < shape.n_heads; ++h) {
    float max = -std::numeric_limits<float>::infinity();
    for (std::int64_t c = 0; c < n_chunks; ++c) max = std::max(max, scratch.chunk_stats(c)[2 * h]);
    Eigen::Map<Eigen::VectorXf> o(out.data() + h * hd, hd);
    o.setZero();
    float sum = 0.0f;
    for (std::int64_t c = 0; c < n_chunks; ++c) {
      const float weight = std::exp(scratch.chunk_stats(c)[2 * h] - max);
      sum += weight * scratch.chunk_stats(c)[2 * h + 1];
      o += weight * Eigen::Map<const Eigen::VectorXf>(scratch.chunk_output(c) + h * hd, hd);
    }
    o /= sum;
  }
}

}  // namespace kvlm
