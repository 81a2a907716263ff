#pragma once
// The scalar reference for every weight type: plain loops that read like the math. They are
// always compiled, they are what the SIMD kernels (kernels/avx2.hpp, kernels/avx512.hpp) are
// tested against, and kernels/kernels.hpp runs them on CPUs without AVX2.
//
// A row of n elements of type t occupies row_bytes(t, n) bytes: n floats, n 16-bit floats, or
// n / 32 consecutive blocks (BlockQ8_0, BlockQ4_0; layouts in dtype.hpp) for the quantized types,
// whose n must be a multiple of 32.
//
// The integer path quantizes the activation like a Q8_0 weight, one BlockQ8_0 per 32 values with
// q in [-127, 127] (never -128, which the SIMD kernels rely on); a weight block times an
// activation block is then an int32 sum of products, scaled once by d_w * d_x.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvlm/detail/assert.hpp"
#include "kvlm/dtype.hpp"

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

/// Dequantizes a row of n elements of type t into out[n].
inline void to_float(DType t, const void* row, float* out, std::int64_t n) {
  switch (t) {
    case DType::kF32: std::memcpy(out, row, static_cast<std::size_t>(n) * sizeof(float)); return;
    case DType::kF16: return to_float_f16(static_cast<const std::uint16_t*>(row), out, n);
    case DType::kBF16: return to_float_bf16(static_cast<const std::uint16_t*>(row), out, n);
    case DType::kQ8_0: return to_float_q8_0(static_cast<const BlockQ8_0*>(row), out, n);
    case DType::kQ4_0: return to_float_q4_0(static_cast<const BlockQ4_0*>(row), out, n);
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

/// Quantizes (or converts) x[n] into a row of type t, exactly as llama.cpp's `llama-quantize`
/// writes it: F16 and BF16 round to nearest even, Q8_0 and Q4_0 use ggml's reference quantizers.
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
  }
  KVLM_ASSERT(false && "from_float: unknown DType");
}

/// row · x: the sum over i of w[i] * x[i], with w the dequantized row; x: [n].
inline float dot(DType t, const void* row, const float* x, std::int64_t n) {
  // Dequantize 32 weights (one block of a quantized type) at a time.
  constexpr std::int64_t kChunk = 32;
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

}  // namespace kvlm::kernels::scalar
