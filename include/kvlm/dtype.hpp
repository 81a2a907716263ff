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
    case DType::kBF16:
      return static_cast<DType>(id);
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

inline DTypeInfo info(DType dtype) {
  switch (dtype) {
    case DType::kF32: return {"F32", 1, 4};
    case DType::kF16: return {"F16", 1, 2};
    case DType::kBF16: return {"BF16", 1, 2};
    case DType::kQ8_0: return {"Q8_0", BlockQ8_0::kSize, sizeof(BlockQ8_0)};
    case DType::kQ4_0: return {"Q4_0", BlockQ4_0::kSize, sizeof(BlockQ4_0)};
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
