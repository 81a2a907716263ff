#pragma once
// The scalar reference for every weight type: plain loops that read like the math. They are
// always compiled, they are what the SIMD kernels (kernels/avx2.hpp, kernels/avx512.hpp) are
// tested against, and kernels/kernels.hpp runs them on CPUs without AVX2.
//
// A row of n elements of type t occupies row_bytes(t, n) bytes: n floats, n 16-bit floats, or
// n / 32 consecutive blocks (BlockQ8_0, BlockQ4_0) or n / 256 (BlockQ4_K, BlockQ5_K, BlockQ6_K;
// layouts in dtype.hpp) for the quantized types, whose n must be a multiple of the block size.
//
// The integer path quantizes the activation like a Q8_0 weight, one BlockQ8_0 per 32 values with
// q in [-127, 127] (never -128, which the SIMD kernels rely on); a weight block times an
// activation block is then an int32 sum of products, scaled once by d_w * d_x. The K types
// multiply by BlockQ8_K activations instead (quantize_activation_k, dot_q8k): 256 values per
// block, whose per-16 sums (bsums) account for the weights' minimums or offsets.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvlm/detail/assert.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/kernels/interleaved.hpp"
#include "kvlm/kernels/panel.hpp"

namespace kvlm::kernels::scalar {

inline void to_float_f16(const std::uint16_t* row, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(row[i]);
}

inline void to_float_bf16(const std::uint16_t* row, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = bf16_to_fp32(row[i]);
}

inline void to_float_q8_0(const BlockQ8_0* row, float* out, std::int64_t n) {
  for (std::int64_t b = 0; b < n / BlockQ8_0::kSize; ++b) {
    const float d = fp16_to_fp32(row[b].d);
    for (int j = 0; j < BlockQ8_0::kSize; ++j) out[b * BlockQ8_0::kSize + j] = d * row[b].qs[j];
  }
}

inline void to_float_q4_0(const BlockQ4_0* row, float* out, std::int64_t n) {
  constexpr int kHalf = BlockQ4_0::kSize / 2;
  for (std::int64_t b = 0; b < n / BlockQ4_0::kSize; ++b) {
    const float d = fp16_to_fp32(row[b].d);
    float* o = out + b * BlockQ4_0::kSize;
    for (int j = 0; j < kHalf; ++j) {
      o[j] = d * static_cast<float>((row[b].qs[j] & 0x0F) - 8);
      o[j + kHalf] = d * static_cast<float>((row[b].qs[j] >> 4) - 8);
    }
  }
}

// --- K types: dequantization -------------------------------------------------------------------
// ggml writes a Q4_K / Q5_K weight as d1 * q - m1 (d1 = d * sc, m1 = dmin * m), which compilers
// contract into one fused multiply-add where the target has FMA (GCC's default) and not where it
// has not. kvlm always fuses, on every path (std::fma here; glibc runs it on the FMA unit when
// there is one), so that all paths agree bit for bit whatever the build flags.

// Q4_K and Q5_K: q (in [0, 31]) of the 256 weights of one block in order.
inline void k_block_q(const BlockQ4_K& b, std::uint8_t* q) {
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      q[64 * c + l] = b.qs[32 * c + l] & 0x0F;
      q[64 * c + 32 + l] = b.qs[32 * c + l] >> 4;
    }
  }
}

inline void k_block_q(const BlockQ5_K& b, std::uint8_t* q) {
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      q[64 * c + l] = static_cast<std::uint8_t>((b.qs[32 * c + l] & 0x0F) | ((b.qh[l] >> (2 * c)) & 1) << 4);
      q[64 * c + 32 + l] = static_cast<std::uint8_t>((b.qs[32 * c + l] >> 4) | ((b.qh[l] >> (2 * c + 1)) & 1) << 4);
    }
  }
}

// Q6_K: q - 32 (in [-32, 31]) of the 256 weights of one block in order.
inline void k_block_q(const BlockQ6_K& b, std::int8_t* q) {
  for (int h = 0; h < 2; ++h) {
    const std::uint8_t* ql = b.ql + 64 * h;
    const std::uint8_t* qh = b.qh + 32 * h;
    std::int8_t* o = q + 128 * h;
    for (int l = 0; l < 32; ++l) {
      o[l] = static_cast<std::int8_t>(((ql[l] & 0x0F) | ((qh[l] >> 0) & 3) << 4) - 32);
      o[l + 32] = static_cast<std::int8_t>(((ql[l + 32] & 0x0F) | ((qh[l] >> 2) & 3) << 4) - 32);
      o[l + 64] = static_cast<std::int8_t>(((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32);
      o[l + 96] = static_cast<std::int8_t>(((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32);
    }
  }
}

// Q4_K and Q5_K (ggml's dequantize_row_q4_K / q5_K, fused as said above).
template <typename Block>
void to_float_k4(const Block* row, float* out, std::int64_t n) {
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    std::uint8_t q[kQK_K];
    k_block_q(row[b], q);
    const float d = fp16_to_fp32(row[b].d);
    const float dmin = fp16_to_fp32(row[b].dmin);
    float* o = out + b * kQK_K;
    for (int j = 0; j < 8; ++j) {
      const ScaleMin sm = scale_min_k4(row[b].scales, j);
      const float d1 = d * static_cast<float>(sm.scale);
      const float m1 = dmin * static_cast<float>(sm.min);
      for (int l = 0; l < 32; ++l) o[32 * j + l] = std::fma(d1, static_cast<float>(q[32 * j + l]), -m1);
    }
  }
}

// ggml's dequantize_row_q6_K: (d * scale) * q, two roundings.
inline void to_float_q6_k(const BlockQ6_K* row, float* out, std::int64_t n) {
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    std::int8_t q[kQK_K];
    k_block_q(row[b], q);
    const float d = fp16_to_fp32(row[b].d);
    float* o = out + b * kQK_K;
    for (int j = 0; j < 16; ++j) {
      const float d1 = d * static_cast<float>(row[b].scales[j]);
      for (int l = 0; l < 16; ++l) o[16 * j + l] = d1 * static_cast<float>(q[16 * j + l]);
    }
  }
}

/// Dequantizes a row of n elements of type t into out[n].
inline void to_float(DType t, const void* row, float* out, std::int64_t n) {
  switch (t) {
    case DType::kF32: std::memcpy(out, row, static_cast<std::size_t>(n) * sizeof(float)); return;
    case DType::kF16: return to_float_f16(static_cast<const std::uint16_t*>(row), out, n);
    case DType::kBF16: return to_float_bf16(static_cast<const std::uint16_t*>(row), out, n);
    case DType::kQ8_0: return to_float_q8_0(static_cast<const BlockQ8_0*>(row), out, n);
    case DType::kQ4_0: return to_float_q4_0(static_cast<const BlockQ4_0*>(row), out, n);
    case DType::kQ4_K: return to_float_k4(static_cast<const BlockQ4_K*>(row), out, n);
    case DType::kQ5_K: return to_float_k4(static_cast<const BlockQ5_K*>(row), out, n);
    case DType::kQ6_K: return to_float_q6_k(static_cast<const BlockQ6_K*>(row), out, n);
    case DType::kQ8_K: break;  // an activation type, never a weight
  }
  KVLM_ASSERT(false && "to_float: unknown DType");
}

// Q8_0 blocks of x: d = max|x| / 127 and q = round(x / d), rounding with `round`.
template <typename Round>
void quantize_q8_0_blocks(const float* x, BlockQ8_0* out, std::int64_t n, Round round) {
  for (std::int64_t b = 0; b < n / BlockQ8_0::kSize; ++b) {
    const float* xb = x + b * BlockQ8_0::kSize;
    float amax = 0.0f;
    for (int j = 0; j < BlockQ8_0::kSize; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = fp32_to_fp16(d);
    for (int j = 0; j < BlockQ8_0::kSize; ++j) out[b].qs[j] = static_cast<std::int8_t>(round(xb[j] * id));
  }
}

// ggml's quantize_row_q8_0_ref: ties round away from zero.
inline void from_float_q8_0(const float* x, BlockQ8_0* row, std::int64_t n) {
  quantize_q8_0_blocks(x, row, n, [](float v) { return std::round(v); });
}

// ggml's quantize_row_q4_0_ref: the element of largest magnitude (the first one on ties), with
// its sign, maps to -8, so d = max / -8; q = trunc(x / d + 8.5) capped at 15.
inline void from_float_q4_0(const float* x, BlockQ4_0* row, std::int64_t n) {
  constexpr int kHalf = BlockQ4_0::kSize / 2;
  for (std::int64_t b = 0; b < n / BlockQ4_0::kSize; ++b) {
    const float* xb = x + b * BlockQ4_0::kSize;
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < BlockQ4_0::kSize; ++j) {
      if (amax < std::fabs(xb[j])) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    row[b].d = fp32_to_fp16(d);
    const auto quantize = [id](float v) {
      // The product is rounded to float before 8.5f is added, as in ggml's reference (built
      // without FMA): a compiler allowed to contract (GCC's default for GNU C++) would fuse the
      // two into one FMA, and a product within half an ulp of a rounding boundary would then
      // truncate to a different q. The volatile keeps the two roundings apart.
      volatile float scaled = v * id;
      return std::min(15, static_cast<int>(static_cast<std::int8_t>(scaled + 8.5f)));
    };
    for (int j = 0; j < kHalf; ++j) {
      row[b].qs[j] = static_cast<std::uint8_t>(quantize(xb[j]) | (quantize(xb[j + kHalf]) << 4));
    }
  }
}

// --- K types: ggml's reference quantizers (without importance weights) ------------------------
// The same algorithm as quantize_row_q4_K_ref / q5_K_ref / q6_K_ref, so the quality matches
// llama.cpp's; the bytes may differ from llama.cpp's in rare last-bit cases (its builds may
// contract a multiply-add that kvlm's does not, or the other way round).

// ggml's nearest_int: round to nearest, ties to even, via the float adder (exact for
// |v| < 2^22; larger values wrap, and every caller clamps).
inline int nearest_int(float v) {
  const float shifted = v + 12582912.0f;  // 1.5 * 2^23: the integer lands in the low mantissa bits
  std::int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007FFFFF) - 0x00400000;
}

// ggml's make_qkx2_quants: x[0, n) ~ scale * L - min with L in [0, nmax] and min >= 0 (returned
// through the_min), minimizing the weighted squared error over a few candidate scales
// (nmax + rmin + rdelta * k, k = 0..nstep, over the range) each refined by least squares.
inline float make_qkx2_quants(int n, int nmax, const float* x, const float* weights,
                              std::uint8_t* L, float* the_min, std::uint8_t* Laux, float rmin,
                              float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<std::uint8_t>(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    const float diff = scale * L[i] + min - x[i];
    best_error += weights[i] * diff * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = static_cast<std::uint8_t>(l);
      const float w = weights[i];
      sum_l += w * static_cast<float>(l);
      sum_l2 += w * static_cast<float>(l) * static_cast<float>(l);
      sum_xl += w * static_cast<float>(l) * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * Laux[i] + this_min - x[i];
        cur_error += weights[i] * diff * diff;
      }
      if (cur_error < best_error) {
        std::memcpy(L, Laux, static_cast<std::size_t>(n));
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// ggml's smallest group maximum worth quantizing (GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// ggml's make_qx_quants with rmse_type 1 and no importance weights: x[0, n) ~ scale * (L - nmax)
// with L in [0, 2 nmax), weighting each element by x^2, over 19 candidate scales.
inline float make_qx_quants(int n, int nmax, const float* x, std::int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const auto fit = [&](float iscale, float& sumlx, float& suml2, bool store) {
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      if (store) L[i] = static_cast<std::int8_t>(l + nmax);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * static_cast<float>(l);
      suml2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
  };
  float sumlx, suml2;
  fit(-static_cast<float>(nmax) / max, sumlx, suml2, true);
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    const float iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    fit(iscale, sumlx, suml2, false);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      fit(iscale, sumlx, suml2, true);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q4_K and Q5_K (ggml's quantize_row_q4_K_ref / q5_K_ref): each sub-block of 32 gets a scale and
// a minimum from make_qkx2_quants, weighted by rms + |x|; those are quantized to 6 bits against
// the block's largest (d, dmin), and the q recomputed with the 6-bit ones.
template <typename Block>
void from_float_k4(const float* x, Block* row, std::int64_t n) {
  constexpr bool kFiveBits = std::is_same_v<Block, BlockQ5_K>;
  constexpr int kMaxQ = kFiveBits ? 31 : 15;
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    Block& y = row[b];
    std::uint8_t L[kQK_K], Laux[32];
    float weights[32], scales[8], mins[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += xb[32 * j + l] * xb[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xb[32 * j + l]);
      scales[j] = kFiveBits ? make_qkx2_quants(32, kMaxQ, xb + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15)
                            : make_qkx2_quants(32, kMaxQ, xb + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    std::memset(y.scales, 0, sizeof y.scales);
    for (int j = 0; j < 8; ++j) {
      const int ls = std::min(63, nearest_int(inv_scale * scales[j]));
      const int lm = std::min(63, nearest_int(inv_min * mins[j]));
      if (j < 4) {
        y.scales[j] = static_cast<std::uint8_t>(ls);
        y.scales[j + 4] = static_cast<std::uint8_t>(lm);
      } else {
        y.scales[j + 4] = static_cast<std::uint8_t>((ls & 0x0F) | (lm & 0x0F) << 4);
        y.scales[j - 4] |= static_cast<std::uint8_t>((ls >> 4) << 6);
        y.scales[j] |= static_cast<std::uint8_t>((lm >> 4) << 6);
      }
    }
    y.d = fp32_to_fp16(max_scale / 63.0f);
    y.dmin = fp32_to_fp16(max_min / 63.0f);
    for (int j = 0; j < 8; ++j) {
      const ScaleMin sm = scale_min_k4(y.scales, j);
      const float d = fp16_to_fp32(y.d) * static_cast<float>(sm.scale);
      if (d == 0.0f) continue;
      const float dm = fp16_to_fp32(y.dmin) * static_cast<float>(sm.min);
      for (int l = 0; l < 32; ++l) {
        L[32 * j + l] = static_cast<std::uint8_t>(std::clamp(nearest_int((xb[32 * j + l] + dm) / d), 0, kMaxQ));
      }
    }
    if constexpr (kFiveBits) std::memset(y.qh, 0, sizeof y.qh);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        const int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
        y.qs[32 * c + l] = static_cast<std::uint8_t>((l1 & 0x0F) | (l2 & 0x0F) << 4);
        if constexpr (kFiveBits) {
          y.qh[l] |= static_cast<std::uint8_t>((l1 >> 4) << (2 * c) | (l2 >> 4) << (2 * c + 1));
        }
      }
    }
  }
}

// Q6_K (ggml's quantize_row_q6_K_ref): each sub-block of 16 gets a signed scale from
// make_qx_quants; those are quantized to int8 against the block's largest (d = max / -128), and
// the q recomputed with the 8-bit ones.
inline void from_float_q6_k(const float* x, BlockQ6_K* row, std::int64_t n) {
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    BlockQ6_K& y = row[b];
    std::int8_t L[kQK_K];
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = make_qx_quants(16, 32, xb + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y, 0, sizeof y);
      continue;
    }
    const float iscale = -128.0f / max_scale;
    y.d = fp32_to_fp16(1 / iscale);
    for (int j = 0; j < 16; ++j) {
      y.scales[j] = static_cast<std::int8_t>(std::min(127, nearest_int(iscale * scales[j])));
    }
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(y.d) * static_cast<float>(y.scales[j]);
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; ++l) {
        L[16 * j + l] = static_cast<std::int8_t>(std::clamp(nearest_int(xb[16 * j + l] / d), -32, 31) + 32);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const std::int8_t* Lh = L + 128 * h;
      for (int l = 0; l < 32; ++l) {
        y.ql[64 * h + l] = static_cast<std::uint8_t>((Lh[l] & 0x0F) | (Lh[l + 64] & 0x0F) << 4);
        y.ql[64 * h + l + 32] = static_cast<std::uint8_t>((Lh[l + 32] & 0x0F) | (Lh[l + 96] & 0x0F) << 4);
        y.qh[32 * h + l] = static_cast<std::uint8_t>((Lh[l] >> 4) | (Lh[l + 32] >> 4) << 2 |
                                                     (Lh[l + 64] >> 4) << 4 | (Lh[l + 96] >> 4) << 6);
      }
    }
  }
}

/// Quantizes (or converts) x[n] into a row of type t, exactly as llama.cpp's `llama-quantize`
/// writes it: F16 and BF16 round to nearest even, Q8_0 and Q4_0 use ggml's reference quantizers;
/// the K types follow ggml's reference quantizers' algorithm (see above).
inline void from_float(DType t, const float* x, void* row, std::int64_t n) {
  switch (t) {
    case DType::kF32: std::memcpy(row, x, static_cast<std::size_t>(n) * sizeof(float)); return;
    case DType::kF16:
      for (std::int64_t i = 0; i < n; ++i) static_cast<std::uint16_t*>(row)[i] = fp32_to_fp16(x[i]);
      return;
    case DType::kBF16:
      for (std::int64_t i = 0; i < n; ++i) static_cast<std::uint16_t*>(row)[i] = fp32_to_bf16(x[i]);
      return;
    case DType::kQ8_0: return from_float_q8_0(x, static_cast<BlockQ8_0*>(row), n);
    case DType::kQ4_0: return from_float_q4_0(x, static_cast<BlockQ4_0*>(row), n);
    case DType::kQ4_K: return from_float_k4(x, static_cast<BlockQ4_K*>(row), n);
    case DType::kQ5_K: return from_float_k4(x, static_cast<BlockQ5_K*>(row), n);
    case DType::kQ6_K: return from_float_q6_k(x, static_cast<BlockQ6_K*>(row), n);
    case DType::kQ8_K: break;  // activations: quantize_activation_k
  }
  KVLM_ASSERT(false && "from_float: unknown DType");
}

/// row · x: the sum over i of w[i] * x[i], with w the dequantized row; x: [n].
inline float dot(DType t, const void* row, const float* x, std::int64_t n) {
  // Dequantize 256 weights (whole blocks of every quantized type) at a time.
  constexpr std::int64_t kChunk = kQK_K;
  const auto* bytes = static_cast<const std::byte*>(row);
  float w[kChunk];
  float sum = 0.0f;
  for (std::int64_t i = 0; i < n; i += kChunk) {
    const std::int64_t m = std::min(kChunk, n - i);
    to_float(t, bytes + row_bytes(t, i), w, m);
    for (std::int64_t j = 0; j < m; ++j) sum += w[j] * x[i + j];
  }
  return sum;
}

/// The integer path's activation quantizer: the Q8_0 rule (d = max|x| / 127, q = x / d) but
/// rounding to nearest even (std::nearbyint in the default rounding mode), which is what SIMD
/// rounding instructions do, so the vector versions match it bit for bit. x: [n], out: [n / 32].
inline void quantize_activation(const float* x, BlockQ8_0* out, std::int64_t n) {
  quantize_q8_0_blocks(x, out, n, [](float v) { return std::nearbyint(v); });
}

/// The integers of one weight block, q[32] with weight j = d * q[j]; returns d.
inline float block_ints(DType t, const void* block, std::int8_t* q) {
  if (t == DType::kQ8_0) {
    const auto* b = static_cast<const BlockQ8_0*>(block);
    std::memcpy(q, b->qs, BlockQ8_0::kSize);
    return fp16_to_fp32(b->d);
  }
  KVLM_ASSERT(t == DType::kQ4_0);
  const auto* b = static_cast<const BlockQ4_0*>(block);
  constexpr int kHalf = BlockQ4_0::kSize / 2;
  for (int j = 0; j < kHalf; ++j) {
    q[j] = static_cast<std::int8_t>((b->qs[j] & 0x0F) - 8);
    q[j + kHalf] = static_cast<std::int8_t>((b->qs[j] >> 4) - 8);
  }
  return fp16_to_fp32(b->d);
}

/// row · x for a Q8_0 or Q4_0 row and a quantized activation xq: [n / 32] blocks: per block the
/// int32 sum of q_w * q_x, times d_w * d_x, summed in float.
inline float dot_q8(DType t, const void* row, const BlockQ8_0* xq, std::int64_t n) {
  KVLM_ASSERT(t == DType::kQ8_0 || t == DType::kQ4_0);
  const auto* bytes = static_cast<const std::byte*>(row);
  const std::size_t block_bytes = static_cast<std::size_t>(info(t).block_bytes);
  float sum = 0.0f;
  for (std::int64_t b = 0; b < n / BlockQ8_0::kSize; ++b) {
    std::int8_t q[BlockQ8_0::kSize];
    const float d_w = block_ints(t, bytes + static_cast<std::size_t>(b) * block_bytes, q);
    std::int32_t isum = 0;
    for (int j = 0; j < BlockQ8_0::kSize; ++j) isum += q[j] * xq[b].qs[j];
    sum += static_cast<float>(isum) * (d_w * fp16_to_fp32(xq[b].d));
  }
  return sum;
}

// --- K types: the integer path ------------------------------------------------------------------

/// The K types' activation quantizer: per 256 values d = max|x| / 127 (kept as a float), q =
/// x / d rounded to nearest even (so q in [-127, 127], never -128), and bsums[j] = the sum of
/// q[16j .. 16j + 16). Like ggml's quantize_row_q8_K but with quantize_activation's rounding and
/// sign convention, which the SIMD versions match bit for bit. x: [n], out: [n / 256].
inline void quantize_activation_k(const float* x, BlockQ8_K* out, std::int64_t n) {
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    float amax = 0.0f;
    for (int j = 0; j < kQK_K; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    for (int j = 0; j < kQK_K; ++j) out[b].qs[j] = static_cast<std::int8_t>(std::nearbyint(xb[j] * id));
    for (int j = 0; j < kQK_K / 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += out[b].qs[16 * j + l];
      out[b].bsums[j] = static_cast<std::int16_t>(sum);
    }
  }
}

/// row · x for a Q4_K, Q5_K or Q6_K row and a quantized activation xq: [n / 256] blocks. Per
/// block, exactly in int32: Q4_K / Q5_K: sumi = sum_j sc_j * (sum over sub-block j of q * q_x)
/// and summ = sum_j m_j * (sum of q_x over sub-block j, from bsums); the block adds
/// d_x * (d * sumi - dmin * summ). Q6_K: sumi = sum_j scale_j * (sum of (q - 32) * q_x); the block
/// adds d_x * d * sumi. Blocks are summed in float.
inline float dot_q8k(DType t, const void* row, const BlockQ8_K* xq, std::int64_t n) {
  KVLM_ASSERT(t == DType::kQ4_K || t == DType::kQ5_K || t == DType::kQ6_K);
  float sum = 0.0f;
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    const BlockQ8_K& x = xq[b];
    if (t == DType::kQ6_K) {
      const BlockQ6_K& w = static_cast<const BlockQ6_K*>(row)[b];
      std::int8_t q[kQK_K];
      k_block_q(w, q);
      std::int32_t sumi = 0;
      for (int j = 0; j < 16; ++j) {
        std::int32_t s = 0;
        for (int l = 0; l < 16; ++l) s += q[16 * j + l] * x.qs[16 * j + l];
        sumi += w.scales[j] * s;
      }
      sum += x.d * (fp16_to_fp32(w.d) * static_cast<float>(sumi));
      continue;
    }
    std::uint8_t q[kQK_K];
    const std::uint8_t* scales;
    float d, dmin;
    if (t == DType::kQ4_K) {
      const BlockQ4_K& w = static_cast<const BlockQ4_K*>(row)[b];
      k_block_q(w, q);
      scales = w.scales;
      d = fp16_to_fp32(w.d);
      dmin = fp16_to_fp32(w.dmin);
    } else {
      const BlockQ5_K& w = static_cast<const BlockQ5_K*>(row)[b];
      k_block_q(w, q);
      scales = w.scales;
      d = fp16_to_fp32(w.d);
      dmin = fp16_to_fp32(w.dmin);
    }
    std::int32_t sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      const ScaleMin sm = scale_min_k4(scales, j);
      std::int32_t s = 0;
      for (int l = 0; l < 32; ++l) s += q[32 * j + l] * x.qs[32 * j + l];
      sumi += sm.scale * s;
      summ += sm.min * (x.bsums[2 * j] + x.bsums[2 * j + 1]);
    }
    sum += x.d * (d * static_cast<float>(sumi) - dmin * static_cast<float>(summ));
  }
  return sum;
}

namespace detail {

// sum plus lane `lane` of block w times the activation blocks a (Block16::kSize / 32 of them),
// as the AVX-512 kernel adds it: each 32 weights' int32 sum exact (the stored offset taken off),
// then one rounded product and one fused multiply-add (Q4_K: and one for the minimum).
inline float add_block(const BlockQ4_0x16& w, int lane, const ActivationBlock* a, float sum) {
  std::int32_t dot = a->minus_8_sum;
  for (int j = 0; j < 32; ++j) {
    // Element j sits in chunk j % 16 / 4, byte j % 4 of the row's four; elements 16..31 are the
    // high nibbles of the chunks of elements 0..15.
    const std::uint8_t byte = w.qs[j % 16 / 4][4 * lane + j % 4];
    dot += (j < 16 ? byte & 0x0F : byte >> 4) * a->q[j];
  }
  return std::fma(static_cast<float>(dot) * a->d, fp16_to_fp32(w.d[lane]), sum);
}

inline float add_block(const BlockQ8_0x16& w, int lane, const ActivationBlock* a, float sum) {
  std::int32_t dot = a->minus_128_sum;
  for (int j = 0; j < 32; ++j) dot += w.qs[j / 4][4 * lane + j % 4] * a->q[j];
  return std::fma(static_cast<float>(dot) * a->d, fp16_to_fp32(w.d[lane]), sum);
}

// Q4_K and Q5_K.
template <typename Block16>
float add_k4_block(const Block16& w, int lane, const ActivationBlock* a, float sum) {
  const BlockQ4_Kx16& k4 = q4_fields(w);
  const float d = fp16_to_fp32(k4.d[lane]), dmin = fp16_to_fp32(k4.dmin[lane]);
  for (int j = 0; j < 8; ++j) {
    std::int32_t dot = 0;
    for (int l = 0; l < 32; ++l) dot += q_of(w, j, l, lane) * a[j].q[l];
    const ScaleMin sm = scale_min(k4, j, lane);
    sum = std::fma(static_cast<float>(dot) * a[j].d, d * static_cast<float>(sm.scale), sum);
    sum = std::fma(-(dmin * static_cast<float>(sm.min)), a[j].d_sum, sum);
  }
  return sum;
}

inline float add_block(const BlockQ4_Kx16& w, int lane, const ActivationBlock* a, float sum) {
  return add_k4_block(w, lane, a, sum);
}

inline float add_block(const BlockQ5_Kx16& w, int lane, const ActivationBlock* a, float sum) {
  return add_k4_block(w, lane, a, sum);
}

// Q6_K: each half of a sub-block of 32 has its own scale; the two int32 sums are scaled and
// added in float, then multiplied by the activation's scale.
inline float add_block(const BlockQ6_Kx16& w, int lane, const ActivationBlock* a, float sum) {
  const float d = fp16_to_fp32(w.d[lane]);
  for (int j = 0; j < 8; ++j) {
    std::int32_t dot[2] = {a[j].minus_32_sums[0], a[j].minus_32_sums[1]};
    for (int l = 0; l < 32; ++l) dot[l / 16] += q_of(w, j, l, lane) * a[j].q[l];
    const float scale[2] = {d * static_cast<float>(w.scales[2 * j][lane]),
                            d * static_cast<float>(w.scales[2 * j + 1][lane])};
    const float scaled =
        std::fma(static_cast<float>(dot[1]), scale[1], static_cast<float>(dot[0]) * scale[0]);
    sum = std::fma(scaled, a[j].d, sum);
  }
  return sum;
}

}  // namespace detail

/// The interleaved kernels' reference (layouts in kernels/interleaved.hpp):
/// y[t * ldy + r] = row r · token t for r in [row_begin, row_end); w: the interleaved copy
/// (Block16: BlockQ4_0x16, BlockQ8_0x16, BlockQ4_Kx16, BlockQ5_Kx16 or BlockQ6_Kx16) of a
/// matrix of cols columns; x: [n_tokens, cols / 32] from prepare_interleaved. The blocks are
/// added in order, in float.
template <typename Block16>
void gemm_interleaved(const void* w, std::int64_t row_begin, std::int64_t row_end,
                      std::int64_t cols, const ActivationBlock* x, std::int64_t n_tokens, float* y,
                      std::int64_t ldy) {
  constexpr int kActivationBlocks = Block16::kSize / BlockQ8_0::kSize;
  const std::int64_t n_blocks = cols / Block16::kSize, x_stride = cols / BlockQ8_0::kSize;
  const auto* groups = static_cast<const Block16*>(w);
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const Block16* row = groups + r / kInterleave * n_blocks;
    const int lane = static_cast<int>(r % kInterleave);
    for (std::int64_t t = 0; t < n_tokens; ++t) {
      float sum = 0.0f;
      for (std::int64_t b = 0; b < n_blocks; ++b) {
        sum = detail::add_block(row[b], lane, x + t * x_stride + b * kActivationBlocks, sum);
      }
      y[t * ldy + r] = sum;
    }
  }
}

/// The float GEMM's twin: y[t * ldy + r] = row r · token t for the n_rows rows of panel
/// (kernels/panel.hpp: [cols, kPanelRows]); token t at x + t * ldx. Each sum runs over the
/// columns in order, one fused multiply-add each, as every lane of the SIMD kernels does: they
/// match it bit for bit.
inline void gemm_panel(const float* panel, std::int64_t n_rows, std::int64_t cols, const float* x,
                       std::int64_t ldx, std::int64_t n_tokens, float* y, std::int64_t ldy) {
  for (std::int64_t t = 0; t < n_tokens; ++t) {
    for (std::int64_t r = 0; r < n_rows; ++r) {
      float sum = 0.0f;
      for (std::int64_t k = 0; k < cols; ++k) {
        sum = std::fma(panel[k * kPanelRows + r], x[t * ldx + k], sum);
      }
      y[t * ldy + r] = sum;
    }
  }
}

/// A token's value as the BF16 GEMM takes it: rounded to bfloat16 as vcvtneps2bf16 rounds, to
/// nearest even, with subnormals read as zero and NaN kept quiet. x: [n]; out: [n].
inline void to_bf16(const float* x, std::uint16_t* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const bool subnormal = std::fpclassify(x[i]) == FP_SUBNORMAL;
    out[i] = fp32_to_bf16(subnormal ? std::copysign(0.0f, x[i]) : x[i]);
  }
}

/// The BF16 GEMM's twin: y[t * ldy + r] = row r · token t for the n_rows rows of the pair panel
/// (kernels/panel.hpp: [cols / 2, kPanelRows] pairs); token t's bfloat16 values at x + t * ldx.
/// Each pair adds the product of its odd columns, then that of its even ones, to the sum, each
/// rounded to float with subnormals flushed to zero: what vdpbf16ps does on every lane (Intel's
/// definition, which Zen 4 follows bit for bit). A product of two bfloat16 is exact in float.
inline void gemm_pair_panel(const std::uint32_t* panel, std::int64_t n_rows, std::int64_t cols,
                            const std::uint16_t* x, std::int64_t ldx, std::int64_t n_tokens,
                            float* y, std::int64_t ldy) {
  const auto flush = [](float v) {
    return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v;
  };
  const auto value = [&](std::uint32_t bits) {
    return flush(bf16_to_fp32(static_cast<std::uint16_t>(bits)));
  };
  for (std::int64_t t = 0; t < n_tokens; ++t) {
    for (std::int64_t r = 0; r < n_rows; ++r) {
      float sum = 0.0f;
      for (std::int64_t p = 0; p < cols / 2; ++p) {
        const std::uint32_t w = panel[p * kPanelRows + r];
        const std::uint16_t* xp = x + t * ldx + 2 * p;
        sum = flush(sum + value(w >> 16) * value(xp[1]));
        sum = flush(sum + value(w & 0xFFFF) * value(xp[0]));
      }
      y[t * ldy + r] = sum;
    }
  }
}

// --- One token's attention: a KV head's query heads against its cached rows ---------------------

/// s[g * lds + t] = scale * (q_g · row_t) for g < n_q and t < n_rows, with q_g at q + g * ldq and
/// row_t at rows + t * ld, cols floats each. The SIMD kernels sum in another order, so they
/// match it within a dot product's rounding.
inline void scores(const float* q, std::int64_t ldq, std::int64_t n_q, const float* rows,
                   std::int64_t ld, std::int64_t n_rows, std::int64_t cols, float scale, float* s,
                   std::int64_t lds) {
  for (std::int64_t g = 0; g < n_q; ++g) {
    for (std::int64_t t = 0; t < n_rows; ++t) {
      float dot = 0.0f;
      for (std::int64_t c = 0; c < cols; ++c) dot += q[g * ldq + c] * rows[t * ld + c];
      s[g * lds + t] = scale * dot;
    }
  }
}

/// out[g * ldo + c] += sum over t < n_rows of p[g * ldp + t] * row_t[c], for g < n_q and
/// c < cols, row_t at rows + t * ld: the rows in order, one fused multiply-add each, as every
/// lane of the SIMD kernels does: they match it bit for bit.
inline void add_weighted_rows(const float* p, std::int64_t ldp, std::int64_t n_q,
                              const float* rows, std::int64_t ld, std::int64_t n_rows,
                              std::int64_t cols, float* out, std::int64_t ldo) {
  for (std::int64_t g = 0; g < n_q; ++g) {
    for (std::int64_t c = 0; c < cols; ++c) {
      float sum = out[g * ldo + c];
      for (std::int64_t t = 0; t < n_rows; ++t) {
        sum = std::fma(p[g * ldp + t], rows[t * ld + c], sum);
      }
      out[g * ldo + c] = sum;
    }
  }
}

// --- Elementwise math: exp, and what softmax and SwiGLU make of it -----------------------------

/// The constants of exp: x = n ln2 + r, with n = round(x / ln2) and ln2 split in two so that
/// n * kLn2Hi is exact; e^r for |r| <= ln2 / 2 is 1 + r + r^2 P(r), P of degree 5 (Cephes's
/// expf coefficients). x is first clamped to [kExpMin, kExpMax]: e^x is 0 in float below
/// kExpMin and infinite above kExpMax, and n stays in [-150, 128].
struct ExpConstants {
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                  4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
  static constexpr float kExpMin = -104.0f;
  static constexpr float kExpMax = 89.0f;
};

// 2^k as a float, for k in [-126, 127].
inline float pow2(int k) {
  const std::uint32_t bits = static_cast<std::uint32_t>(k + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// e^x in float: at most 1 ulp from e^x rounded to float for every float x (kernels_test checks
/// every 64th; all of [-104, 89] were checked once), so 0 or +inf where e^x underflows or
/// overflows; 0 for NaN. One fused multiply-add per step and 2^n applied as two exact powers of
/// two (2^(n >> 1), then the rest, so that a subnormal result is rounded once), as every lane of
/// the SIMD kernels does: they match it bit for bit.
inline float exp(float x) {
  using C = ExpConstants;
  x = std::fmin(std::fmax(x, C::kExpMin), C::kExpMax);  // fmax(NaN, lo) is lo
  const float n = std::nearbyint(x * C::kLog2e);
  float r = std::fma(n, -C::kLn2Hi, x);
  r = std::fma(n, -C::kLn2Lo, r);
  float p = C::kP[0];
  for (int i = 1; i < 6; ++i) p = std::fma(p, r, C::kP[i]);
  p = std::fma(p, r * r, r) + 1.0f;
  const int k = static_cast<int>(n);
  return p * pow2(k >> 1) * pow2(k - (k >> 1));
}

/// x[i] = e^(x[i] - shift) for i in [0, n): softmax's numerators, shift being the row's max.
inline void exp_shifted(float* x, std::int64_t n, float shift) {
  for (std::int64_t i = 0; i < n; ++i) x[i] = exp(x[i] - shift);
}

/// gate[i] = silu(gate[i]) * up[i] for i in [0, n), silu(g) = g / (1 + e^-g): SwiGLU's gate.
inline void silu_mul(float* gate, const float* up, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + exp(-gate[i])) * up[i];
}

}  // namespace kvlm::kernels::scalar
