#pragma once
// Interleaved rows: Q8_0 and Q4_0 matrices rearranged at load time so that one vector holds the
// same 4 weights of 16 rows. One VNNI instruction (dpbusd) then multiplies 16 rows by 4 bytes of
// the activation broadcast to every lane, and a block's two scale multiplies serve 16 rows
// instead of one: as stored, every 32-weight block of every row costs a convert, a scale product
// and an FMA per token (kernels/avx512.hpp's gemm), which bound sessions decoding together and
// prefill. The idea is ik_llama.cpp's Q4_0_R8 / Q8_0_R8.
//
// The copy has the stored matrix's size exactly (the scales stay float16), so decoding reads as
// many bytes as before. Model makes it at load time (LoadOptions::interleave) where the path has
// kernels for it, and lets the file's pages go.
//
// Layout of a [rows, cols] matrix: ceil(rows / 16) groups of 16 rows, each group cols / 32
// consecutive Block16 (below), one per block column; rows past the last are zero (scale 0).
// The kernels take the activation as ActivationBlock, prepared once per matmul.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvlm/dtype.hpp"

namespace kvlm::kernels {

/// Rows per interleaved group.
constexpr int kInterleave = 16;

/// Block column b of 16 Q4_0 rows. Row r's qs[4k + i] (i < 4) is at qs[k][4r + i]: its low
/// nibble is the row's element 4k + i and its high nibble element 16 + 4k + i, both as q + 8.
struct BlockQ4_0x16 {
  std::uint16_t d[kInterleave];           // row r's scale, float16 bits
  std::uint8_t qs[4][4 * kInterleave];
};
static_assert(sizeof(BlockQ4_0x16) == kInterleave * sizeof(BlockQ4_0));

/// Block column b of 16 Q8_0 rows. Row r's element 4k + i (i < 4) is at qs[k][4r + i], as
/// q + 128 in [0, 255], so that the weights are dpbusd's unsigned side.
struct BlockQ8_0x16 {
  std::uint16_t d[kInterleave];           // row r's scale, float16 bits
  std::uint8_t qs[8][4 * kInterleave];
};
static_assert(sizeof(BlockQ8_0x16) == kInterleave * sizeof(BlockQ8_0));

/// One block of one token's activation as the interleaved kernels take it: quantize_activation's
/// BlockQ8_0 with its scale as a float and the sums that take the weights' offsets off.
struct ActivationBlock {
  std::int8_t q[32];
  float d;
  std::int32_t minus_8_sum;    // -8 x the sum of q: Q4_0 stores q + 8
  std::int32_t minus_128_sum;  // -128 x the sum of q: Q8_0x16 stores q + 128
};

/// Bytes of the interleaved copy of a [rows, cols] matrix of type t (Q4_0 or Q8_0).
inline std::size_t interleaved_bytes(DType t, std::int64_t rows, std::int64_t cols) {
  const auto groups = static_cast<std::size_t>((rows + kInterleave - 1) / kInterleave);
  return groups * kInterleave * row_bytes(t, cols);
}

namespace detail {

template <typename Block, typename Block16>
void interleave_rows(const Block* w, std::int64_t rows, std::int64_t n_blocks, Block16* out) {
  constexpr int kChunks = sizeof(Block16::qs) / sizeof(Block16::qs[0]);
  // Q8_0x16 stores q + 128: each q's bits with the sign bit flipped.
  constexpr std::uint32_t kFlip = std::is_same_v<Block, BlockQ8_0> ? 0x80808080u : 0u;
  // Every byte is written below but the padding rows of a last, partial group: zero them.
  if (rows % kInterleave != 0) {
    std::memset(out + rows / kInterleave * n_blocks, 0,
                static_cast<std::size_t>(n_blocks) * sizeof(Block16));
  }
  // Row by row, so that each row is read in one pass; a group's blocks stay in cache meanwhile.
  for (std::int64_t r = 0; r < rows; ++r) {
    Block16* group = out + r / kInterleave * n_blocks;
    const int lane = static_cast<int>(r % kInterleave);
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const Block& in = w[r * n_blocks + b];
      group[b].d[lane] = in.d;
      for (int k = 0; k < kChunks; ++k) {
        std::uint32_t four;
        std::memcpy(&four, in.qs + 4 * k, sizeof four);
        four ^= kFlip;
        std::memcpy(&group[b].qs[k][4 * lane], &four, sizeof four);
      }
    }
  }
}

}  // namespace detail

/// Writes the interleaved copy of w: [rows, cols] of type t (Q4_0 or Q8_0) to out
/// (interleaved_bytes(t, rows, cols) bytes).
inline void interleave(DType t, const void* w, std::int64_t rows, std::int64_t cols, void* out) {
  const std::int64_t n_blocks = cols / 32;
  if (t == DType::kQ4_0) {
    detail::interleave_rows(static_cast<const BlockQ4_0*>(w), rows, n_blocks,
                            static_cast<BlockQ4_0x16*>(out));
  } else {
    detail::interleave_rows(static_cast<const BlockQ8_0*>(w), rows, n_blocks,
                            static_cast<BlockQ8_0x16*>(out));
  }
}

/// x: [cols / 32] blocks from quantize_activation; out: [cols / 32].
inline void prepare_interleaved(const BlockQ8_0* x, std::int64_t cols, ActivationBlock* out) {
  for (std::int64_t b = 0; b < cols / BlockQ8_0::kSize; ++b) {
    std::int32_t sum = 0;
    for (int i = 0; i < BlockQ8_0::kSize; ++i) {
      out[b].q[i] = x[b].qs[i];
      sum += x[b].qs[i];
    }
    out[b].d = fp16_to_fp32(x[b].d);
    out[b].minus_8_sum = -8 * sum;
    out[b].minus_128_sum = -128 * sum;
  }
}

}  // namespace kvlm::kernels
