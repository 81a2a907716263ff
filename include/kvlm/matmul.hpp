#pragma once
// matmul: y = x W^T for weights of any DType, the one door through which the forward pass
// multiplies by a weight matrix. The type decides what runs behind it:
//  - F32 weights, for up to kMaxF32GemvTokens tokens, run the gemv_f32 kernel for every token
//    (over tiles of kGemvTileRows rows held in cache when there are several), so a token's
//    outputs do not depend on the batch; more tokens run the path's float GEMM
//    (kernels/panel.hpp), which packs kPanelRows rows at a time into a panel and multiplies every
//    token by it;
//  - types whose path has a gemm kernel (Q8_0, Q4_0 and the K types on AVX-512) run it for any
//    number of tokens, over tiles of kGemvTileRows rows as stored, which stay in cache while the
//    tokens pass over them; the activation is quantized to 8-bit blocks (Q8_0 blocks for Q8_0
//    and Q4_0, Q8_K blocks of 256 for the K types) and prepared for the kernel once per call,
//    where each row's gemv would redo that work. gemm gives each token what gemv gives it alone,
//    so a token's outputs do not depend on the batch. Decoding tinyllama-1.1b's shape on 2
//    threads, one token through gemm instead of gemv ran at 1.48x in Q4_0 (its rows as stored)
//    and 1.09x in Q4_K_M;
//  - other types, for up to kMaxGemvTokens tokens (decode, and sessions decoding together), run
//    their gemv kernel for every token over the same tiles, on the activation quantized once per
//    call where the type decodes with 8-bit ones; each output is the same whatever the number
//    of tokens, so sessions batched together compute what each computes alone;
//  - BF16 weights, for more tokens (prefill), on a CPU with AVX512-BF16, run the BF16 GEMM
//    (pair panels, kernels/panel.hpp) on the tokens rounded to bfloat16 once per call;
//  - the others, for more tokens (prefill), dequantize kPanelRows weight rows at a time into a
//    per-thread buffer and run the float GEMM on them;
//  - weights with an interleaved copy (WeightView::interleaved) run the type's gemm_interleaved
//    on it for any number of tokens, the activation quantized and prepared once per call.
// Every kernel is chosen at run time (kernels/kernels.hpp), so a host compiled without -march
// runs them too. The scalar path has no float GEMM: there, Eigen's matrix product (compiled for
// the host) takes its place.
// Rows of all the products are split across the threads, so each thread reads only its share of
// the weights and the threads meet once per call.

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "kvlm/config.hpp"
#include "kvlm/detail/assert.hpp"
#include "kvlm/detail/parallel.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/kernels/kernels.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

/// Buffers a matmul needs, sized once (per session) so that a decode step allocates nothing.
class MatmulScratch {
 public:
  // Up to this many tokens a non-F32 product without a gemm kernel runs the gemv kernels on
  // the stored rows; beyond it, dequantizing a tile once and sharing it across the batch is
  // faster (the gemv kernels take one token at a time: on tinyllama-1.1b's shape, prefilling
  // 512 tokens with them ran at 0.60x for Q4_0 and 0.86x for Q4_K_M). The gemm kernels beat the
  // tiles at any size: 512 tokens prefill 1.5x (Q4_0), 1.8x (Q8_0) and 1.05x (Q4_K_M) faster
  // with them.
  static constexpr std::int64_t kMaxGemvTokens = 64;
  // F32 products of up to this many tokens run gemv_f32. One token decodes as fast as with
  // Eigen's matrix-vector product (tinyllama-1.1b's shape, 2 threads, interleaved twice: 1.50
  // and 1.49 s against 1.56 and 1.47 s per 16 tokens). Sessions decoding together on
  // stories110M's shape (aggregate over one session): gemv 1.6x, 2.3x, 3.2x and Eigen's product
  // 0.8x, 1.6x, 3.6x at 2, 4 and 8 sessions.
  static constexpr std::int64_t kMaxF32GemvTokens = 4;
  // Rows the tokens pass over at a time: 64 rows of 5632 Q8_0 weights are 380 KB, within L2.
  static constexpr std::int64_t kGemvTileRows = 64;

  /// The widest input (columns of x) each buffer serves, 0 for a buffer not allocated: what the
  /// products a session will run need (add), or every buffer (all).
  struct Uses {
    std::int64_t quantized = 0;    // Q8_0 activations: Q8_0/Q4_0 gemv, and gemm's source
    std::int64_t quantized_k = 0;  // Q8_K activations: the K types' gemv
    std::int64_t prepared = 0;     // gemm's activations
    std::int64_t interleaved = 0;  // gemm_interleaved's activations
    std::int64_t rows = 0;         // a thread's dequantized weight rows
    std::int64_t panel = 0;        // a thread's packed panel (on a path with a float GEMM)
    std::int64_t bf16 = 0;         // the BF16 GEMM's activations
    std::int64_t pair_panel = 0;   // a thread's pair panel (on a path with a BF16 GEMM)

    static Uses all(std::int64_t max_in) {
      return {max_in, max_in, max_in, max_in, max_in, max_in, max_in, max_in};
    }
    /// Widens the buffers that products by w of up to max_batch tokens read, on this process's
    /// path and whichever product shares a call with w.
    void add(const WeightView& w, std::int64_t max_batch);
  };

  /// max_batch: most rows of x; n_threads: most threads.
  MatmulScratch(std::int64_t max_batch, const Uses& uses, int n_threads)
      : uses_(uses),
        quantized_({max_batch, blocks(uses.quantized, BlockQ8_0::kSize)}),
        quantized_k_({max_batch, blocks(uses.quantized_k, BlockQ8_K::kSize)}),
        prepared_({max_batch, static_cast<std::int64_t>(kernels::prepared_bytes(uses.prepared))}),
        interleaved_({max_batch, blocks(uses.interleaved, BlockQ8_0::kSize)}),
        rows_({std::max(n_threads, 1), kernels::kPanelRows, uses.rows}),
        panels_({std::max(n_threads, 1), kernels::panel_floats(uses.panel)}),
        bf16_({max_batch, uses.bf16}),
        pair_panels_({std::max(n_threads, 1), kernels::pair_panel_pairs(uses.pair_panel)}) {}
  /// Every buffer, for any weights with up to max_in columns.
  MatmulScratch(std::int64_t max_batch, std::int64_t max_in, int n_threads)
      : MatmulScratch(max_batch, Uses::all(max_in), n_threads) {}

  /// byte_size() of a scratch constructed with these arguments, without constructing it.
  static std::size_t bytes_needed(std::int64_t max_batch, const Uses& uses, int n_threads) {
    const auto n = [](std::int64_t count) { return static_cast<std::size_t>(count); };
    const std::int64_t threads = std::max(n_threads, 1);
    return n(max_batch * blocks(uses.quantized, BlockQ8_0::kSize)) * sizeof(BlockQ8_0) +
           n(max_batch * blocks(uses.quantized_k, BlockQ8_K::kSize)) * sizeof(BlockQ8_K) +
           n(max_batch) * kernels::prepared_bytes(uses.prepared) +
           n(max_batch * blocks(uses.interleaved, BlockQ8_0::kSize)) *
               sizeof(kernels::ActivationBlock) +
           n(threads * (kernels::kPanelRows * uses.rows + kernels::panel_floats(uses.panel))) *
               sizeof(float) +
           n(max_batch * uses.bf16) * sizeof(std::uint16_t) +
           n(threads * kernels::pair_panel_pairs(uses.pair_panel)) * sizeof(std::uint32_t);
  }

  const Uses& uses() const { return uses_; }
  std::size_t byte_size() const {
    return quantized_.byte_size() + quantized_k_.byte_size() + prepared_.byte_size() +
           interleaved_.byte_size() + rows_.byte_size() + panels_.byte_size() +
           bf16_.byte_size() + pair_panels_.byte_size();
  }
  // Row t of x as Q8_0 blocks: [uses().quantized / 32] blocks.
  BlockQ8_0* quantized(std::int64_t t) { return quantized_.view().row(t); }
  // The rows of x prepared for a gemm kernel: [max_batch, prepared_bytes(uses().prepared)] bytes.
  std::byte* prepared() { return prepared_.data(); }
  // The rows of x prepared for gemm_interleaved: [max_batch, uses().interleaved / 32] blocks,
  // consecutive.
  kernels::ActivationBlock* interleaved() { return interleaved_.data(); }
  // Row t of x as Q8_K blocks (the K types' activation): [uses().quantized_k / 256] blocks.
  BlockQ8_K* quantized_k(std::int64_t t) { return quantized_k_.view().row(t); }
  // A thread's buffer of weight rows as floats: [kPanelRows, uses().rows].
  float* rows(int thread) { return rows_.view().row(thread * kernels::kPanelRows); }
  // A thread's panel: [panel_floats(uses().panel)].
  float* panel(int thread) { return panels_.view().row(thread); }
  // The rows of x rounded to bfloat16: [max_batch, uses().bf16], consecutive.
  std::uint16_t* bf16() { return bf16_.data(); }
  // A thread's pair panel: [pair_panel_pairs(uses().pair_panel)].
  std::uint32_t* pair_panel(int thread) { return pair_panels_.view().row(thread); }

 private:
  static std::int64_t blocks(std::int64_t in, std::int64_t block_size) {
    return (in + block_size - 1) / block_size;
  }

  Uses uses_;
  Tensor<BlockQ8_0> quantized_;  // [max_batch, ceil(uses.quantized / 32)]
  Tensor<BlockQ8_K> quantized_k_;  // [max_batch, ceil(uses.quantized_k / 256)]
  Tensor<std::byte> prepared_;   // [max_batch, prepared_bytes(uses.prepared)]
  Tensor<kernels::ActivationBlock> interleaved_;  // [max_batch, ceil(uses.interleaved / 32)]
  Tensor<float> rows_;           // [n_threads, kPanelRows, uses.rows]
  Tensor<float> panels_;         // [n_threads, panel_floats(uses.panel)]
  Tensor<std::uint16_t> bf16_;   // [max_batch, uses.bf16]
  Tensor<std::uint32_t> pair_panels_;  // [n_threads, pair_panel_pairs(uses.pair_panel)]
};

/// One product y = x W^T of a matmul: w is [out, in] as stored, y is [n_tokens, out].
struct Product {
  const WeightView& w;
  TensorView<float> y;
};

namespace detail {

// What a product runs (the list at the top of this file).
enum class Route {
  kGemv,             // the type's gemv for each token, on its decode_activation
  kGemm,             // the type's gemm on the prepared activations, for any number of tokens
  kInterleaved,      // gemm_interleaved on the interleaved copy
  kFloatGemm,        // F32 rows on the float GEMM
  kPairGemm,         // BF16 rows on the BF16 GEMM, the tokens rounded to bfloat16
  kDequantizedGemm,  // rows dequantized kPanelRows at a time, then the float GEMM
};

// The route of a product whose type's gemm cannot run (its activation is prepared differently
// from the gemm that took the call's preparation).
inline Route without_gemm(std::int64_t n_tokens) {
  return n_tokens <= MatmulScratch::kMaxGemvTokens ? Route::kGemv : Route::kDequantizedGemm;
}

// The route of a product of n_tokens tokens by w, if its gemm may run.
inline Route route(const WeightView& w, std::int64_t n_tokens) {
  if (w.dtype == DType::kF32) {
    return n_tokens > MatmulScratch::kMaxF32GemvTokens ? Route::kFloatGemm : Route::kGemv;
  }
  if (w.interleaved != nullptr) return Route::kInterleaved;
  if (kernels::kernels(w.dtype).gemm != nullptr) return Route::kGemm;
  if (w.dtype == DType::kBF16 && n_tokens > MatmulScratch::kMaxGemvTokens && w.cols % 2 == 0 &&
      kernels::pair_panel_kernels() != nullptr) {
    return Route::kPairGemm;
  }
  return without_gemm(n_tokens);
}

using Prepare = void (*)(const void* x, std::int64_t cols, void* out);

// The route of product p in a call whose gemm activations are prepared by `prepared`.
inline Route route(const WeightView& w, std::int64_t n_tokens, Prepare prepared) {
  const Route r = route(w, n_tokens);
  return r == Route::kGemm && kernels::kernels(w.dtype).prepare != prepared ? without_gemm(n_tokens)
                                                                              : r;
}

// y[t * ldy + i] = row i · token t for the `rows` (at most kPanelRows) float rows w: [rows, in],
// on the path's float GEMM, or Eigen on the scalar path.
inline void float_rows_product(TensorView<const float> x, const float* w, std::int64_t rows,
                               float* y, std::int64_t ldy, MatmulScratch& scratch, int thread) {
  const std::int64_t n_tokens = x.rows(), in = x.cols();
  if (const kernels::PanelKernels* panels = kernels::panel_kernels()) {
    panels->pack(w, in, rows, in, scratch.panel(thread));
    panels->gemm(scratch.panel(thread), rows, in, x.data(), in, n_tokens, y, ldy);
    return;
  }
  const Eigen::Map<const RowMajorMatrix<float>> w_rows(w, rows, in);  // [rows, in]
  Eigen::Map<RowMajorMatrix<float>, Eigen::Unaligned, Eigen::OuterStride<>> y_rows(
      y, n_tokens, rows, Eigen::OuterStride<>(ldy));  // [n_tokens, rows]
  y_rows.noalias() = x.matrix() * w_rows.transpose();
}

// Rows [lo, hi) of one product, on route r. The scratch holds x as r needs it.
inline void matmul_rows(TensorView<const float> x, const Product& p, Route r, std::int64_t lo,
                        std::int64_t hi, MatmulScratch& scratch, int thread) {
  const std::int64_t n_tokens = x.rows(), in = x.cols(), n = hi - lo;
  const kernels::TypeKernels& k = kernels::kernels(p.w.dtype);
  switch (r) {
    case Route::kFloatGemm:
      for (std::int64_t i = lo; i < hi; i += kernels::kPanelRows) {
        const std::int64_t rows = std::min<std::int64_t>(kernels::kPanelRows, hi - i);
        float_rows_product(x, p.w.f32().row(i), rows, p.y.data() + i, p.y.cols(), scratch, thread);
      }
      return;
    case Route::kPairGemm: {
      const kernels::PairPanelKernels& pairs = *kernels::pair_panel_kernels();
      for (std::int64_t i = lo; i < hi; i += kernels::kPanelRows) {
        const std::int64_t rows = std::min<std::int64_t>(kernels::kPanelRows, hi - i);
        pairs.pack(reinterpret_cast<const std::uint16_t*>(p.w.row(i)), in, rows, in,
                   scratch.pair_panel(thread));
        pairs.gemm(scratch.pair_panel(thread), rows, in, scratch.bf16(), in, n_tokens,
                   p.y.data() + i, p.y.cols());
      }
      return;
    }
    case Route::kInterleaved:
      k.gemm_interleaved(p.w.interleaved, lo, hi, in, scratch.interleaved(), n_tokens, p.y.data(),
                         p.y.cols());
      return;
    case Route::kGemm:
      // The tokens pass over tiles of rows that stay in cache.
      for (std::int64_t i = lo; i < hi; i += MatmulScratch::kGemvTileRows) {
        const std::int64_t rows = std::min(MatmulScratch::kGemvTileRows, hi - i);
        k.gemm(p.w.row(i), rows, in, scratch.prepared(), n_tokens, p.y.data() + i, p.y.cols());
      }
      return;
    case Route::kGemv: {
      // One token reads its rows in one pass, which the kernels prefetch as a stream.
      const std::int64_t tile = n_tokens == 1 ? n : MatmulScratch::kGemvTileRows;
      for (std::int64_t i = lo; i < hi; i += tile) {
        const std::int64_t rows = std::min(tile, hi - i);
        for (std::int64_t t = 0; t < n_tokens; ++t) {
          if (k.decode_activation == DType::kQ8_0) {
            k.gemv(p.w.row(i), rows, in, scratch.quantized(t), p.y.row(t) + i);
          } else if (k.decode_activation == DType::kQ8_K) {
            k.gemv(p.w.row(i), rows, in, scratch.quantized_k(t), p.y.row(t) + i);
          } else {
            k.gemv_f32(p.w.row(i), rows, in, x.row(t), p.y.row(t) + i);
          }
        }
      }
      return;
    }
    case Route::kDequantizedGemm: {
      float* w_rows = scratch.rows(thread);
      for (std::int64_t i = lo; i < hi; i += kernels::kPanelRows) {
        const std::int64_t rows = std::min<std::int64_t>(kernels::kPanelRows, hi - i);
        for (std::int64_t j = 0; j < rows; ++j) k.to_float(p.w.row(i + j), w_rows + j * in, in);
        float_rows_product(x, w_rows, rows, p.y.data() + i, p.y.cols(), scratch, thread);
      }
      return;
    }
  }
}

}  // namespace detail

inline void MatmulScratch::Uses::add(const WeightView& w, std::int64_t max_batch) {
  const auto widen = [&w](std::int64_t& in) { in = std::max(in, w.cols); };
  const kernels::TypeKernels& k = kernels::kernels(w.dtype);
  const bool float_gemm = kernels::panel_kernels() != nullptr;
  // Token counts on each side of the routes' thresholds.
  for (std::int64_t n_tokens : {std::int64_t{1}, std::int64_t{2}, kMaxF32GemvTokens + 1,
                                kMaxGemvTokens + 1}) {
    if (n_tokens > max_batch) break;
    const detail::Route r = detail::route(w, n_tokens);
    // A gemm product may meet another's preparation and take the route without it instead.
    for (detail::Route taken : {r, r == detail::Route::kGemm ? detail::without_gemm(n_tokens) : r}) {
      switch (taken) {
        case detail::Route::kGemv:
          if (k.decode_activation == DType::kQ8_0) widen(quantized);
          if (k.decode_activation == DType::kQ8_K) widen(quantized_k);
          break;
        case detail::Route::kGemm:
          widen(k.decode_activation == DType::kQ8_K ? quantized_k : quantized);
          widen(prepared);
          break;
        case detail::Route::kInterleaved:
          widen(quantized);
          widen(interleaved);
          break;
        case detail::Route::kFloatGemm:
          if (float_gemm) widen(panel);
          break;
        case detail::Route::kPairGemm:
          widen(bf16);
          widen(pair_panel);
          break;
        case detail::Route::kDequantizedGemm:
          widen(rows);
          if (float_gemm) widen(panel);
          break;
      }
    }
  }
}

/// y = x W^T for each product, all with the same input x: [n_tokens, in], n_tokens at most the
/// scratch's max_batch, and the scratch sized for these weights (MatmulScratch::Uses::add).
inline void matmul(TensorView<const float> x, std::initializer_list<Product> products,
                   MatmulScratch& scratch, ThreadPool& threads) {
  const std::int64_t n_tokens = x.rows();
  std::int64_t total_rows = 0;
  // The gemm kernels' activation is prepared once, for the first product's type that uses one;
  // a product of another type whose gemm wants a different preparation takes another route.
  detail::Prepare prepare = nullptr;
  bool prepare_from_k = false;  // whether prepare takes Q8_K blocks (else Q8_0)
  for (const Product& p : products) {
    KVLM_ASSERT(p.w.cols == x.cols() && p.y.cols() == p.w.rows && p.y.rows() == n_tokens);
    total_rows += p.w.rows;
    if (prepare == nullptr && detail::route(p.w, n_tokens) == detail::Route::kGemm) {
      const kernels::TypeKernels& k = kernels::kernels(p.w.dtype);
      prepare = k.prepare;
      prepare_from_k = k.decode_activation == DType::kQ8_K;
    }
  }
  bool quantize = false, quantize_k = false, interleaved = false, bf16 = false;
  for (const Product& p : products) {
    const detail::Route r = detail::route(p.w, n_tokens, prepare);
    const DType activation = kernels::kernels(p.w.dtype).decode_activation;
    const bool integer = r == detail::Route::kGemm || r == detail::Route::kGemv;
    quantize = quantize || r == detail::Route::kInterleaved ||
               (integer && activation == DType::kQ8_0);
    quantize_k = quantize_k || (integer && activation == DType::kQ8_K);
    interleaved = interleaved || r == detail::Route::kInterleaved;
    bf16 = bf16 || r == detail::Route::kPairGemm;
  }
  KVLM_ASSERT(!quantize || x.cols() <= scratch.uses().quantized);
  KVLM_ASSERT(!quantize_k || x.cols() <= scratch.uses().quantized_k);
  KVLM_ASSERT(prepare == nullptr || x.cols() <= scratch.uses().prepared);
  KVLM_ASSERT(!interleaved || x.cols() <= scratch.uses().interleaved);
  KVLM_ASSERT(!bf16 || x.cols() <= scratch.uses().bf16);
  // Once for every product and thread; x.cols() is a multiple of 32 (of 256 for quantize_k) here.
  const std::size_t prepared_bytes = kernels::prepared_bytes(x.cols());
  for (std::int64_t t = 0; t < n_tokens; ++t) {
    if (quantize) kernels::quantize_activation(x.row(t), scratch.quantized(t), x.cols());
    if (quantize_k) kernels::quantize_activation_k(x.row(t), scratch.quantized_k(t), x.cols());
    if (prepare != nullptr) {
      const void* blocks = prepare_from_k ? static_cast<const void*>(scratch.quantized_k(t))
                                          : static_cast<const void*>(scratch.quantized(t));
      prepare(blocks, x.cols(), scratch.prepared() + t * prepared_bytes);
    }
    if (interleaved) {
      kernels::prepare_interleaved(scratch.quantized(t), x.cols(),
                                   scratch.interleaved() + t * (x.cols() / BlockQ8_0::kSize));
    }
    if (bf16) {
      kernels::pair_panel_kernels()->to_bf16(x.row(t), scratch.bf16() + t * x.cols(), x.cols());
    }
  }
  detail::parallel_for_rows(total_rows, n_tokens * total_rows * x.cols(), threads, 16,
                            [&](std::int64_t begin, std::int64_t end, int thread) {
    std::int64_t first_row = 0;  // of the current product, in the concatenated rows
    for (const Product& p : products) {
      const std::int64_t lo = std::max(begin, first_row) - first_row;
      const std::int64_t hi = std::min(end, first_row + p.w.rows) - first_row;
      first_row += p.w.rows;
      if (lo < hi) {
        detail::matmul_rows(x, p, detail::route(p.w, n_tokens, prepare), lo, hi, scratch, thread);
      }
    }
  });
}

/// y = x W^T: x: [n_tokens, in]; w: [out, in] as stored; y: [n_tokens, out].
inline void matmul(TensorView<const float> x, const WeightView& w, TensorView<float> y,
                   MatmulScratch& scratch, ThreadPool& threads) {
  matmul(x, {Product{w, y}}, scratch, threads);
}

/// out[i] = row tokens[i] of the embedding table, dequantized. table: [vocab_size, dim];
/// out: [n_tokens, dim]. Token ids are validated by the caller (Session), so they index the table.
inline void embed(const Token* tokens, const WeightView& table, TensorView<float> out) {
  const kernels::TypeKernels& k = kernels::kernels(table.dtype);
  for (std::int64_t i = 0; i < out.rows(); ++i) k.to_float(table.row(tokens[i]), out.row(i), table.cols);
}

}  // namespace kvlm
