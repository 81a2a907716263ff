#pragma once
// DType: how the elements of a weight matrix are stored, with ggml's type ids and block layouts,
// so GGUF files map straight onto it. Quantized types store a row as consecutive blocks; a block
// holds `block_size` weights in `block_bytes` bytes. Also the scalar conversions between float32
// and the 16-bit float formats, which every kernel and the writer share.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

namespace kvlm {

/// Element types of weight matrices. The values are ggml's type ids (as stored in GGUF files).
enum class DType : std::uint32_t {
  kF32 = 0,
  kF16 = 1,    // IEEE binary16
  kQ4_0 = 2,   // BlockQ4_0
  kQ8_0 = 8,   // BlockQ8_0
  kQ4_K = 12,  // BlockQ4_K
  kQ5_K = 13,  // BlockQ5_K
  kQ6_K = 14,  // BlockQ6_K
  kQ8_K = 15,  // BlockQ8_K: the K types' quantized activation, never a weight type
  kBF16 = 30,  // bfloat16: the top 16 bits of a float32
};

/// What a DType is: its name as GGUF tools print it and its block geometry.
struct DTypeInfo {
  const char* name;
  int block_size;   // weights per block (1 for the float types)
  int block_bytes;  // bytes per block
};

/// The DType of a ggml type id, or nothing if kvlm does not implement that type.
inline std::optional<DType> dtype_from_ggml(std::uint32_t id) {
  switch (static_cast<DType>(id)) {
    case DType::kF32:
    case DType::kF16:
    case DType::kQ4_0:
    case DType::kQ8_0:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
    case DType::kBF16:
      return static_cast<DType>(id);
    case DType::kQ8_K:  // ggml only ever multiplies by it; no file stores weights as Q8_K
      return std::nullopt;
  }
  return std::nullopt;
}

// Q8_0: 32 weights as one float16 scale d and 32 int8 q; weight i = d * q[i].
struct BlockQ8_0 {
  static constexpr int kSize = 32;
  std::uint16_t d;            // float16 bits
  std::int8_t qs[kSize];
};
static_assert(sizeof(BlockQ8_0) == 34, "ggml's block_q8_0 is 34 bytes");

// Q4_0: 32 weights as one float16 scale d and 16 bytes of 4-bit q, offset by 8: weight j
// (j < 16) is d * ((qs[j] & 0x0F) - 8) and weight j + 16 is d * ((qs[j] >> 4) - 8), so the low
// nibbles hold the first half of the block and the high nibbles the second.
struct BlockQ4_0 {
  static constexpr int kSize = 32;
  std::uint16_t d;            // float16 bits
  std::uint8_t qs[kSize / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "ggml's block_q4_0 is 18 bytes");

// --- The K types: super-blocks of 256 weights in sub-blocks with their own small scales ---------

/// Weights per K super-block (ggml's QK_K).
constexpr int kQK_K = 256;

// Q4_K: 256 weights in 8 sub-blocks of 32; weight i of sub-block j is d * sc[j] * q[i] -
// dmin * m[j] with q in [0, 15] and sc, m in [0, 63].
//  - scales[12] packs the 8 six-bit sc and 8 six-bit m: for j < 4, sc[j] = scales[j] & 63 and
//    m[j] = scales[j + 4] & 63; for j >= 4, sc[j] = (scales[j + 4] & 0x0F) | (scales[j - 4] >> 6) << 4
//    and m[j] = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4 (ggml's get_scale_min_k4): the top two
//    bits of bytes 0..7 hold the high bits of sc[4..7] and m[4..7], bytes 8..11 their low nibbles.
//  - qs[128]: the 256 q in four runs of 32 bytes, run c (qs[32c .. 32c + 32)) holding weights
//    64c .. 64c + 31 (sub-block 2c) in its low nibbles and 64c + 32 .. 64c + 63 (sub-block 2c + 1)
//    in its high nibbles.
struct BlockQ4_K {
  static constexpr int kSize = kQK_K;
  std::uint16_t d;             // float16 bits: scale of the sub-block scales
  std::uint16_t dmin;          // float16 bits: scale of the sub-block minimums
  std::uint8_t scales[12];     // sc[8] and m[8], 6 bits each, packed as above
  std::uint8_t qs[kSize / 2];  // 4-bit q, packed as above
};
static_assert(sizeof(BlockQ4_K) == 144, "ggml's block_q4_K is 144 bytes");

// Q5_K: as Q4_K with q in [0, 31]: the low 4 bits in qs exactly as Q4_K's nibbles, the fifth bit
// (value 16) of weight 64c + l (l < 32) in bit 2c of qh[l] and of weight 64c + 32 + l in bit
// 2c + 1 of qh[l]. Note qh comes before qs.
struct BlockQ5_K {
  static constexpr int kSize = kQK_K;
  std::uint16_t d;             // float16 bits
  std::uint16_t dmin;          // float16 bits
  std::uint8_t scales[12];     // as BlockQ4_K's
  std::uint8_t qh[kSize / 8];  // the fifth bits
  std::uint8_t qs[kSize / 2];  // the low 4 bits
};
static_assert(sizeof(BlockQ5_K) == 176, "ggml's block_q5_K is 176 bytes");

// Q6_K: 256 weights in 16 sub-blocks of 16; weight i of sub-block j is d * scales[j] * (q[i] - 32)
// with q in [0, 63] and scales signed 8-bit. The block is two halves of 128 weights; in half h,
// with ql = ql_all + 64h and qh = qh_all + 32h, for l < 32:
//   weight 128h + l      = ql[l] & 0x0F      | ((qh[l] >> 0) & 3) << 4
//   weight 128h + 32 + l = ql[l + 32] & 0x0F | ((qh[l] >> 2) & 3) << 4
//   weight 128h + 64 + l = ql[l] >> 4        | ((qh[l] >> 4) & 3) << 4
//   weight 128h + 96 + l = ql[l + 32] >> 4   | ((qh[l] >> 6) & 3) << 4
// Note d comes last.
struct BlockQ6_K {
  static constexpr int kSize = kQK_K;
  std::uint8_t ql[kSize / 2];      // the low 4 bits
  std::uint8_t qh[kSize / 4];      // the high 2 bits
  std::int8_t scales[kSize / 16];  // one per 16 weights
  std::uint16_t d;                 // float16 bits
};
static_assert(sizeof(BlockQ6_K) == 210, "ggml's block_q6_K is 210 bytes");

// Q8_K: the activation the K types' integer kernels multiply by (ggml's block_q8_K): 256 values
// as a float32 scale d and int8 q (value i = d * q[i], q in [-127, 127]), plus bsums[j], the sum
// of q[16j .. 16j + 16), which the kernels need for the weights' offsets and minimums.
struct BlockQ8_K {
  static constexpr int kSize = kQK_K;
  float d;
  std::int8_t qs[kSize];
  std::int16_t bsums[kSize / 16];
};
static_assert(sizeof(BlockQ8_K) == 292, "ggml's block_q8_K is 292 bytes");

/// Sub-block j's six-bit scale and minimum (j < 8) from a Q4_K or Q5_K block's scales[12]
/// (ggml's get_scale_min_k4; layout at BlockQ4_K).
struct ScaleMin {
  int scale;
  int min;
};
inline ScaleMin scale_min_k4(const std::uint8_t* scales, int j) {
  if (j < 4) return {scales[j] & 63, scales[j + 4] & 63};
  return {(scales[j + 4] & 0x0F) | (scales[j - 4] >> 6) << 4, (scales[j + 4] >> 4) | (scales[j] >> 6) << 4};
}

/// All of scale_min_k4 at once, with word operations: out[j] = scale j and out[8 + j] = min j.
inline void unpack_scales_k4(const std::uint8_t* scales, std::uint8_t* out) {
  constexpr std::uint32_t kLow6 = 0x3F3F3F3F, kLow4 = 0x0F0F0F0F, kLow2 = 0x03030303;
  std::uint32_t w[3];
  std::memcpy(w, scales, 12);
  const std::uint32_t u[4] = {
      w[0] & kLow6,                                     // scales 0..3
      (w[2] & kLow4) | ((w[0] >> 6) & kLow2) << 4,      // scales 4..7
      w[1] & kLow6,                                     // mins 0..3
      ((w[2] >> 4) & kLow4) | ((w[1] >> 6) & kLow2) << 4  // mins 4..7
  };
  std::memcpy(out, u, 16);
}

inline DTypeInfo info(DType dtype) {
  switch (dtype) {
    case DType::kF32: return {"F32", 1, 4};
    case DType::kF16: return {"F16", 1, 2};
    case DType::kBF16: return {"BF16", 1, 2};
    case DType::kQ8_0: return {"Q8_0", BlockQ8_0::kSize, sizeof(BlockQ8_0)};
    case DType::kQ4_0: return {"Q4_0", BlockQ4_0::kSize, sizeof(BlockQ4_0)};
    case DType::kQ4_K: return {"Q4_K", BlockQ4_K::kSize, sizeof(BlockQ4_K)};
    case DType::kQ5_K: return {"Q5_K", BlockQ5_K::kSize, sizeof(BlockQ5_K)};
    case DType::kQ6_K: return {"Q6_K", BlockQ6_K::kSize, sizeof(BlockQ6_K)};
    case DType::kQ8_K: return {"Q8_K", BlockQ8_K::kSize, sizeof(BlockQ8_K)};
  }
  return {"unknown", 1, 0};
}

inline const char* to_string(DType dtype) { return info(dtype).name; }

/// Bytes one row of `cols` elements occupies; cols must be a multiple of the block size
/// (loaders check it).
inline std::size_t row_bytes(DType dtype, std::int64_t cols) {
  const DTypeInfo i = info(dtype);
  return static_cast<std::size_t>(cols / i.block_size) * static_cast<std::size_t>(i.block_bytes);
}

inline float bits_to_float(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline std::uint32_t float_to_bits(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

/// IEEE binary16 -> binary32, exact (subnormals, infinities and NaNs included).
inline float fp16_to_fp32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1F;
  const std::uint32_t mantissa = h & 0x3FF;
  if (exponent == 0x1F) return bits_to_float(sign | 0x7F800000 | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa * 2^-24
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

/// binary32 -> binary16, rounding to nearest even (what F16C's vcvtps2ph does with rounding
/// mode 0, and ggml's scalar conversion): overflow gives infinity, NaN stays a quiet NaN.
inline std::uint16_t fp32_to_fp16(float f) {
  const std::uint32_t bits = float_to_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  const std::uint32_t abs = bits & 0x7FFFFFFF;
  if (abs > 0x7F800000) return static_cast<std::uint16_t>(sign | 0x7E00 | ((abs >> 13) & 0x3FF));
  if (abs >= 0x477FF000) return static_cast<std::uint16_t>(sign | 0x7C00);  // rounds past 65504
  if (abs < 0x38800000) {
    // Result is subnormal (or zero): round abs / 2^-24 to the nearest integer, ties to even.
    // Adding 0.5f (2^-1) as a float performs exactly that rounding on the low bits.
    const float scaled = bits_to_float(abs) + 0.5f;
    return static_cast<std::uint16_t>(sign | (float_to_bits(scaled) - 0x3F000000));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even.
  const std::uint32_t rounded = abs + 0xFFF + ((abs >> 13) & 1);
  return static_cast<std::uint16_t>(sign | ((rounded - 0x38000000) >> 13));
}

/// bfloat16 -> binary32: exact, the bits shifted into the top half.
inline float bf16_to_fp32(std::uint16_t h) { return bits_to_float(static_cast<std::uint32_t>(h) << 16); }

/// binary32 -> bfloat16, rounding to nearest even; NaN stays a quiet NaN (ggml's rule).
inline std::uint16_t fp32_to_bf16(float f) {
  const std::uint32_t bits = float_to_bits(f);
  if ((bits & 0x7FFFFFFF) > 0x7F800000) return static_cast<std::uint16_t>((bits >> 16) | 64);
  return static_cast<std::uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

}  // namespace kvlm
