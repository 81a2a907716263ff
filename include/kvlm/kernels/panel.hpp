#pragma once
// Packed panels: the float GEMM's layout of the weights. A product of many tokens (prefill) by
// float weights, or by weights dequantized to float, copies 32 rows at a time into a panel in
// which one vector holds the same column of 16 rows: the kernels (gemm_panel in
// kernels/avx512.hpp and kernels/avx2.hpp) then multiply a panel by each token with one FMA per
// 16 rows and column, the token's value broadcast, and every (row, token) sum stays in a
// register from the first column to the last. That is the outer-product form of a matrix product
// (BLIS, tinyBLAS): as stored, a row times a token is a dot product whose lanes have to be added
// across at the end.
//
// A panel lives only while a thread multiplies by it: a per-thread buffer of the session's
// scratch, [cols, 32] floats, packed again for every call. Attention uses the same kernels for a
// batch's scores (the keys packed as rows) and outputs (the values packed as columns). Packing costs about 6% of a
// 512-token product; the rows are read from memory then, once for all the tokens.
//
// Layout of a panel of n <= 32 rows of a [rows, cols] matrix: cols groups of 32 floats, group k
// holding column k of rows 0..31 (rows past n are zero).
//
// BF16 weights, on a CPU with AVX512-BF16, have a GEMM of their own over pair panels: vdpbf16ps
// multiplies 16 pairs of bfloat16 by 16 pairs and adds both products to 16 floats, twice the
// multiply-adds of an FMA per instruction. A pair panel of n <= 32 rows of a [rows, cols] BF16
// matrix (cols even) is cols / 2 groups of 32 pairs, group p holding columns 2p and 2p + 1 of rows
// 0..31, column 2p in the low half (rows past n are zero): the 32-bit words of the stored rows,
// transposed as a float panel's floats are. The tokens are rounded to bfloat16 once per product
// (scalar::to_bf16), as llama.cpp does for BF16 weights.

#include <cstdint>

namespace kvlm::kernels {

/// Rows per panel.
constexpr int kPanelRows = 32;

/// Floats in a panel of `cols` columns.
inline std::int64_t panel_floats(std::int64_t cols) { return cols * kPanelRows; }

/// Pairs in a pair panel of `cols` (even) columns.
inline std::int64_t pair_panel_pairs(std::int64_t cols) { return cols / 2 * kPanelRows; }

/// Packs n_rows (at most kPanelRows) rows of `cols` floats, row r at rows + r * ld, into panel
/// ([cols, kPanelRows]).
inline void pack_panel(const float* rows, std::int64_t ld, std::int64_t n_rows, std::int64_t cols,
                       float* panel) {
  for (std::int64_t k = 0; k < cols; ++k) {
    for (std::int64_t r = 0; r < kPanelRows; ++r) {
      panel[k * kPanelRows + r] = r < n_rows ? rows[r * ld + k] : 0.0f;
    }
  }
}

/// The same for a matrix stored by columns: column k of the n_rows rows is the n_rows floats at
/// columns + k * ld (attention's values, whose positions are the product's columns).
inline void pack_panel_from_columns(const float* columns, std::int64_t ld, std::int64_t n_rows,
                                    std::int64_t cols, float* panel) {
  for (std::int64_t k = 0; k < cols; ++k) {
    for (std::int64_t r = 0; r < kPanelRows; ++r) {
      panel[k * kPanelRows + r] = r < n_rows ? columns[k * ld + r] : 0.0f;
    }
  }
}

/// Packs n_rows (at most kPanelRows) BF16 rows of `cols` (even) values, row r at rows + r * ld,
/// into a pair panel ([cols / 2, kPanelRows] pairs).
inline void pack_pair_panel(const std::uint16_t* rows, std::int64_t ld, std::int64_t n_rows,
                            std::int64_t cols, std::uint32_t* panel) {
  for (std::int64_t p = 0; p < cols / 2; ++p) {
    for (std::int64_t r = 0; r < kPanelRows; ++r) {
      const std::int64_t i = r * ld + 2 * p;  // row r's columns 2p and 2p + 1
      panel[p * kPanelRows + r] = r < n_rows ? rows[i] | std::uint32_t{rows[i + 1]} << 16 : 0;
    }
  }
}

}  // namespace kvlm::kernels
