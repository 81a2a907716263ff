#pragma once
// Interleaved rows: Q8_0, Q4_0 and K-quant matrices rearranged at load time so that one vector
// holds the same 4 weights of 16 rows. One VNNI instruction (dpbusd) then multiplies 16 rows by 4
// bytes of the activation broadcast to every lane, and a block's scale products serve 16 rows
// instead of one: as stored, every block of every row costs its own converts, scale products and
// horizontal work per token (kernels/avx512.hpp's gemm), which bound sessions decoding together
// and prefill. The idea is ik_llama.cpp's Q4_0_R8 / Q8_0_R8 / Q4_K_R8 / Q6_K_R4.
//
// The copy has the stored matrix's size exactly (the scales stay float16, the K-quants' sub-block
// scales 6 or 8 bits), so decoding reads as many bytes as before. Model makes it at load time
// (LoadOptions::interleave) where the path has kernels for it, and lets the file's pages go.
//
// Layout of a [rows, cols] matrix: ceil(rows / 16) groups of 16 rows, each group cols / kSize
// consecutive blocks (below), one per block column; rows past the last are zero (scale 0).
// The kernels take the activation as ActivationBlock, 32 weights' worth per block (the K-quants
// too: each of their sub-blocks of 32 meets one activation block), prepared once per matmul.

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvlm/detail/assert.hpp"
#include "kvlm/dtype.hpp"

namespace kvlm::kernels {

/// Rows per interleaved group.
constexpr int kInterleave = 16;

/// Block column b of 16 Q4_0 rows. Row r's qs[4k + i] (i < 4) is at qs[k][4r + i]: its low
/// nibble is the row's element 4k + i and its high nibble element 16 + 4k + i, both as q + 8.
struct BlockQ4_0x16 {
  static constexpr int kSize = 32;        // weights per row
  std::uint16_t d[kInterleave];           // row r's scale, float16 bits
  std::uint8_t qs[4][4 * kInterleave];
};
static_assert(sizeof(BlockQ4_0x16) == kInterleave * sizeof(BlockQ4_0));

/// Block column b of 16 Q8_0 rows. Row r's element 4k + i (i < 4) is at qs[k][4r + i], as
/// q + 128 in [0, 255], so that the weights are dpbusd's unsigned side.
struct BlockQ8_0x16 {
  static constexpr int kSize = 32;
  std::uint16_t d[kInterleave];           // row r's scale, float16 bits
  std::uint8_t qs[8][4 * kInterleave];
};
static_assert(sizeof(BlockQ8_0x16) == kInterleave * sizeof(BlockQ8_0));

/// Block column b of 16 Q4_K rows (BlockQ4_K's fields, in lanes). Sub-block j's 6-bit scale and
/// minimum of row r: their low 4 bits in scales_low[j][r] (the scale's in the low nibble), their
/// top 2 bits in scales_high[j % 4][r], nibble j / 4 (the scale's in its bits 0-1, the
/// minimum's in 2-3). Row r's qs[32c + 4k + i] (i < 4) is at qs[c][k][4r + i]: its low nibble is
/// sub-block 2c's element 4k + i, its high nibble sub-block 2c + 1's.
struct BlockQ4_Kx16 {
  static constexpr int kSize = kQK_K;
  std::uint16_t d[kInterleave];     // float16 bits
  std::uint16_t dmin[kInterleave];  // float16 bits
  std::uint8_t scales_low[8][kInterleave];
  std::uint8_t scales_high[4][kInterleave];
  std::uint8_t qs[4][8][4 * kInterleave];
};
static_assert(sizeof(BlockQ4_Kx16) == kInterleave * sizeof(BlockQ4_K));

/// Block column b of 16 Q5_K rows: the scales, minimums and low 4 bits of q as BlockQ4_Kx16's,
/// and the fifth bits: bit j of qh[k][4r + i] is that of row r's sub-block j's element 4k + i.
struct BlockQ5_Kx16 {
  static constexpr int kSize = kQK_K;
  BlockQ4_Kx16 q4;
  std::uint8_t qh[8][4 * kInterleave];
};
static_assert(sizeof(BlockQ5_Kx16) == kInterleave * sizeof(BlockQ5_K));

/// Block column b of 16 Q6_K rows. Row r's scale of its sub-block s of 16 is scales[s][r]. Of
/// its sub-block j of 32 (two sub-blocks of 16), element 4k + i's q (in [0, 63], the weight being
/// d x scale x (q - 32)) has its low 4 bits in qs[j / 2][k][4r + i] as BlockQ4_Kx16's (the low
/// nibble for j even), its top 2 bits in bits 2 (j % 4) and 2 (j % 4) + 1 of qh[j / 4][k][4r + i].
struct BlockQ6_Kx16 {
  static constexpr int kSize = kQK_K;
  std::uint16_t d[kInterleave];  // float16 bits
  std::int8_t scales[16][kInterleave];
  std::uint8_t qs[4][8][4 * kInterleave];
  std::uint8_t qh[2][8][4 * kInterleave];
};
static_assert(sizeof(BlockQ6_Kx16) == kInterleave * sizeof(BlockQ6_K));

/// Sub-block j's scale and minimum of lane r of w.
inline ScaleMin scale_min(const BlockQ4_Kx16& w, int j, int r) {
  const int low = w.scales_low[j][r], high = w.scales_high[j % 4][r] >> (4 * (j / 4));
  return {(low & 0x0F) | (high & 3) << 4, low >> 4 | (high >> 2 & 3) << 4};
}

/// The fields Q4_K and Q5_K share.
inline const BlockQ4_Kx16& q4_fields(const BlockQ4_Kx16& w) { return w; }
inline const BlockQ4_Kx16& q4_fields(const BlockQ5_Kx16& w) { return w.q4; }

/// The q of element l of sub-block j (of 32) of lane r of w: in [0, 15] for Q4_K, [0, 31] for
/// Q5_K, [0, 63] for Q6_K.
inline int q_of(const std::uint8_t (&qs)[4][8][4 * kInterleave], int j, int l, int r) {
  const std::uint8_t byte = qs[j / 2][l / 4][4 * r + l % 4];
  return j % 2 == 0 ? byte & 0x0F : byte >> 4;
}
inline int q_of(const BlockQ4_Kx16& w, int j, int l, int r) { return q_of(w.qs, j, l, r); }
inline int q_of(const BlockQ5_Kx16& w, int j, int l, int r) {
  return q_of(w.q4, j, l, r) | (w.qh[l / 4][4 * r + l % 4] >> j & 1) << 4;
}
inline int q_of(const BlockQ6_Kx16& w, int j, int l, int r) {
  return q_of(w.qs, j, l, r) | (w.qh[j / 4][l / 4][4 * r + l % 4] >> (2 * (j % 4)) & 3) << 4;
}

/// One block of one token's activation as the interleaved kernels take it: quantize_activation's
/// BlockQ8_0 with its scale as a float and the sums that take the weights' offsets off.
struct ActivationBlock {
  std::int8_t q[32];
  float d;
  std::int32_t minus_8_sum;    // -8 x the sum of q: Q4_0 stores q + 8
  std::int32_t minus_128_sum;  // -128 x the sum of q: Q8_0x16 stores q + 128
  float d_sum;                 // d x the sum of q: what Q4_K's and Q5_K's minimums multiply
  std::int32_t minus_32_sums[2];  // -32 x the sums of q[0, 16) and q[16, 32): Q6_K stores q + 32
};

/// Bytes of the interleaved copy of a [rows, cols] matrix of type t (Q4_0, Q8_0 or a K-quant).
inline std::size_t interleaved_bytes(DType t, std::int64_t rows, std::int64_t cols) {
  const auto groups = static_cast<std::size_t>((rows + kInterleave - 1) / kInterleave);
  return groups * kInterleave * row_bytes(t, cols);
}

namespace detail {

// Zeroes the padding rows of a last, partial group (every other byte is written).
template <typename Block16>
void zero_padding(std::int64_t rows, std::int64_t n_blocks, Block16* out) {
  if (rows % kInterleave != 0) {
    std::memset(out + rows / kInterleave * n_blocks, 0,
                static_cast<std::size_t>(n_blocks) * sizeof(Block16));
  }
}

// Row r's four bytes from `in` to lane r of `out`, xor `flip`.
inline void put_four(const std::uint8_t* in, int lane, std::uint8_t* out, std::uint32_t flip = 0) {
  std::uint32_t four;
  std::memcpy(&four, in, sizeof four);
  four ^= flip;
  std::memcpy(out + 4 * lane, &four, sizeof four);
}

inline void interleave_block(const BlockQ4_0& in, int lane, BlockQ4_0x16& out) {
  out.d[lane] = in.d;
  for (int k = 0; k < 4; ++k) put_four(in.qs + 4 * k, lane, out.qs[k]);
}

// Q8_0x16 stores q + 128: each q's bits with the sign bit flipped.
inline void interleave_block(const BlockQ8_0& in, int lane, BlockQ8_0x16& out) {
  out.d[lane] = in.d;
  for (int k = 0; k < 8; ++k) {
    put_four(reinterpret_cast<const std::uint8_t*>(in.qs) + 4 * k, lane, out.qs[k], 0x80808080u);
  }
}

// Q4_K's fields, which Q5_K shares: the scales and minimums, and the low 4 bits of q.
template <typename Block>
void interleave_q4_fields(const Block& in, int lane, BlockQ4_Kx16& out) {
  out.d[lane] = in.d;
  out.dmin[lane] = in.dmin;
  std::uint8_t scale_min[16];  // 8 scales, 8 minimums
  unpack_scales_k4(in.scales, scale_min);
  for (int j = 0; j < 4; ++j) out.scales_high[j][lane] = 0;
  for (int j = 0; j < 8; ++j) {
    const int scale = scale_min[j], min = scale_min[8 + j];
    out.scales_low[j][lane] = static_cast<std::uint8_t>((scale & 0x0F) | (min & 0x0F) << 4);
    out.scales_high[j % 4][lane] |=
        static_cast<std::uint8_t>((scale >> 4 | (min >> 4) << 2) << (4 * (j / 4)));
  }
  for (int c = 0; c < 4; ++c) {
    for (int k = 0; k < 8; ++k) put_four(in.qs + 32 * c + 4 * k, lane, out.qs[c][k]);
  }
}

inline void interleave_block(const BlockQ4_K& in, int lane, BlockQ4_Kx16& out) {
  interleave_q4_fields(in, lane, out);
}

// BlockQ5_K's qh[l] already holds bit j = sub-block j's fifth bit of element l.
inline void interleave_block(const BlockQ5_K& in, int lane, BlockQ5_Kx16& out) {
  interleave_q4_fields(in, lane, out.q4);
  for (int k = 0; k < 8; ++k) put_four(in.qh + 4 * k, lane, out.qh[k]);
}

// BlockQ6_K's qh[32h + l] already holds bits 2m, 2m + 1 = sub-block 4h + m's top bits of element
// l; its ql[64h + l] and ql[64h + 32 + l] hold sub-blocks 4h and 4h + 1 in their low nibbles,
// 4h + 2 and 4h + 3 in their high ones, which qs[c] pairs as sub-blocks 2c and 2c + 1.
inline void interleave_block(const BlockQ6_K& in, int lane, BlockQ6_Kx16& out) {
  out.d[lane] = in.d;
  for (int s = 0; s < 16; ++s) out.scales[s][lane] = in.scales[s];
  for (int c = 0; c < 4; ++c) {
    const std::uint8_t* ql = in.ql + 64 * (c / 2);
    const int shift = 4 * (c % 2);
    for (int k = 0; k < 8; ++k) {  // elements 4k .. 4k + 3, a byte each in 32-bit words
      std::uint32_t first, second;
      std::memcpy(&first, ql + 4 * k, sizeof first);
      std::memcpy(&second, ql + 32 + 4 * k, sizeof second);
      const std::uint32_t pairs =
          (first >> shift & 0x0F0F0F0Fu) | (second >> shift & 0x0F0F0F0Fu) << 4;
      std::memcpy(out.qs[c][k] + 4 * lane, &pairs, sizeof pairs);
    }
  }
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 8; ++k) put_four(in.qh + 32 * h + 4 * k, lane, out.qh[h][k]);
  }
}

template <typename Block, typename Block16>
void interleave_rows(const void* stored, std::int64_t rows, std::int64_t n_blocks, void* copy) {
  const auto* w = static_cast<const Block*>(stored);
  auto* out = static_cast<Block16*>(copy);
  zero_padding(rows, n_blocks, out);
  // Row by row, so that each row is read in one pass; a group's blocks stay in cache meanwhile.
  for (std::int64_t r = 0; r < rows; ++r) {
    Block16* group = out + r / kInterleave * n_blocks;
    const int lane = static_cast<int>(r % kInterleave);
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      interleave_block(w[r * n_blocks + b], lane, group[b]);
    }
  }
}

}  // namespace detail

/// Writes the interleaved copy of w: [rows, cols] of type t (Q4_0, Q8_0 or a K-quant) to out
/// (interleaved_bytes(t, rows, cols) bytes).
inline void interleave(DType t, const void* w, std::int64_t rows, std::int64_t cols, void* out) {
  using detail::interleave_rows;
  const std::int64_t n_blocks = cols / info(t).block_size;
  switch (t) {
    case DType::kQ4_0: return interleave_rows<BlockQ4_0, BlockQ4_0x16>(w, rows, n_blocks, out);
    case DType::kQ8_0: return interleave_rows<BlockQ8_0, BlockQ8_0x16>(w, rows, n_blocks, out);
    case DType::kQ4_K: return interleave_rows<BlockQ4_K, BlockQ4_Kx16>(w, rows, n_blocks, out);
    case DType::kQ5_K: return interleave_rows<BlockQ5_K, BlockQ5_Kx16>(w, rows, n_blocks, out);
    default:
      KVLM_ASSERT(t == DType::kQ6_K);
      return interleave_rows<BlockQ6_K, BlockQ6_Kx16>(w, rows, n_blocks, out);
  }
}

/// x: [cols / 32] blocks from quantize_activation; out: [cols / 32].
inline void prepare_interleaved(const BlockQ8_0* x, std::int64_t cols, ActivationBlock* out) {
  for (std::int64_t b = 0; b < cols / BlockQ8_0::kSize; ++b) {
    std::int32_t halves[2] = {0, 0};  // the sums of q[0, 16) and q[16, 32)
    for (int i = 0; i < BlockQ8_0::kSize; ++i) {
      out[b].q[i] = x[b].qs[i];
      halves[i / 16] += x[b].qs[i];
    }
    const std::int32_t sum = halves[0] + halves[1];
    out[b].d = fp16_to_fp32(x[b].d);
    out[b].minus_8_sum = -8 * sum;
    out[b].minus_128_sum = -128 * sum;
    out[b].d_sum = out[b].d * static_cast<float>(sum);
    for (int h = 0; h < 2; ++h) out[b].minus_32_sums[h] = -32 * halves[h];
  }
}

}  // namespace kvlm::kernels
