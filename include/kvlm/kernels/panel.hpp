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

#include <cstdint>

namespace kvlm::kernels {

/// Rows per panel.
constexpr int kPanelRows = 32;

/// Floats in a panel of `cols` columns.
inline std::int64_t panel_floats(std::int64_t cols) { return cols * kPanelRows; }

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

}  // namespace kvlm::kernels
