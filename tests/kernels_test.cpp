// kernels: the scalar reference against hand-computed values and double precision, and every
// SIMD path this CPU has against the scalar reference: gemv and gemv_f32 within a named
// tolerance, to_float and quantize_activation(_k) bit for bit, on random and extreme blocks; the
// float GEMM and the elementwise math (exp within 1 ulp) bit for bit against their scalar twins,
// one token's attention products within a dot product's rounding (scores) and bit for bit
// (weighted rows). The K types also against an independent decoding of ggml's byte layout and
// llama.cpp's own files, and their quantizers' round-trip error. Also the fp16 conversions
// against the hardware's, and the KVLM_SIMD choice.

#include "kvlm/kernels/kernels.hpp"

#include <gtest/gtest.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/gguf/reader.hpp"
#include "models.hpp"

namespace kvlm::kernels {
namespace {

constexpr DType kAllTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0};
constexpr DType kQuantizedTypes[] = {DType::kQ8_0, DType::kQ4_0};

// A dot product of n terms summed in float, in any order, is within n * 2^-24 * sum |w_i x_i| of
// the exact value (each partial sum and product rounded once); two such sums differ by at most
// n * 2^-23 of it. The few extra roundings of the block kernels (the scale applied to a block's
// sum, the product of two scales) are the + 4. A wrong element or block is off by O(1).
double order_tolerance(std::int64_t n) {
  return static_cast<double>(n + 4) * std::numeric_limits<float>::epsilon();
}

// The integer path quantizes x to d_x * q with |x - d_x * q| <= d_x / 2, and d_x is stored as
// fp16 (relative error 2^-11, times |q| <= 127: another 0.062 d_x), so per element the error is
// below this fraction of d_x = max |x| / 127 over its block.
constexpr double kActivationQuantizationError = 0.6;

std::vector<Simd> supported_paths() {
  std::vector<Simd> paths;
  for (Simd simd : {Simd::kScalar, Simd::kAvx2, Simd::kAvx512}) {
    if (simd_supported(simd)) paths.push_back(simd);
  }
  return paths;
}

bool is_quantized(DType t) { return t == DType::kQ8_0 || t == DType::kQ4_0; }

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float std_dev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, std_dev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// --- Independent decoding, in double, of what a row means (dtype.hpp's layouts) ---------------

std::vector<double> decode(DType t, const std::uint8_t* row, std::int64_t n) {
  std::vector<double> w(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    switch (t) {
      case DType::kF32: {
        float f;
        std::memcpy(&f, row + 4 * i, 4);
        w[i] = f;
        break;
      }
      case DType::kF16:
      case DType::kBF16: {
        std::uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        w[i] = t == DType::kF16 ? fp16_to_fp32(h) : bits_to_float(std::uint32_t{h} << 16);
        break;
      }
      case DType::kQ8_0: {
        const std::uint8_t* block = row + 34 * (i / 32);  // 2 bytes of fp16 d, then 32 int8
        const double d = fp16_to_fp32(static_cast<std::uint16_t>(block[0] | block[1] << 8));
        w[i] = d * static_cast<std::int8_t>(block[2 + i % 32]);
        break;
      }
      case DType::kQ4_0: {
        const std::uint8_t* block = row + 18 * (i / 32);  // 2 bytes of fp16 d, then 16 bytes
        const double d = fp16_to_fp32(static_cast<std::uint16_t>(block[0] | block[1] << 8));
        const int j = static_cast<int>(i % 32);
        const int nibble = j < 16 ? block[2 + j] & 0x0F : block[2 + j - 16] >> 4;
        w[i] = d * (nibble - 8);
        break;
      }
      case DType::kQ4_K:
      case DType::kQ5_K:
      case DType::kQ6_K:
      case DType::kQ8_K:
        ADD_FAILURE() << "decode: the K types are decoded by decode_k";
        return w;
    }
  }
  return w;
}

// --- Test matrices -----------------------------------------------------------------------------

// [rows, cols] of type t, row after row. Float types: N(0, 1) values converted by from_float.
// Quantized types: random bytes for the q (every int8, every nibble) and random fp16 scales of
// either sign, so that extremes such as Q8_0's -128 (which the quantizer never writes) occur.
std::vector<std::uint8_t> random_matrix(DType t, std::int64_t rows, std::int64_t cols,
                                        std::uint32_t seed) {
  std::vector<std::uint8_t> m(row_bytes(t, cols) * static_cast<std::size_t>(rows));
  if (!is_quantized(t)) {
    const std::vector<float> values = random_floats(static_cast<std::size_t>(rows * cols), seed);
    scalar::from_float(t, values.data(), m.data(), rows * cols);
    return m;
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  const std::size_t block_bytes = static_cast<std::size_t>(info(t).block_bytes);
  for (std::size_t b = 0; b < m.size() / block_bytes; ++b) {
    std::uint8_t* block = m.data() + b * block_bytes;
    const std::uint16_t d = fp32_to_fp16(scale(rng));
    std::memcpy(block, &d, 2);
    for (std::size_t j = 2; j < block_bytes; ++j) block[j] = static_cast<std::uint8_t>(byte(rng));
  }
  return m;
}

// A block of type t (Q8_0 or Q4_0) with scale bits d and every q byte equal to `fill`.
std::vector<std::uint8_t> uniform_block(DType t, std::uint16_t d, std::uint8_t fill) {
  std::vector<std::uint8_t> block(static_cast<std::size_t>(info(t).block_bytes), fill);
  std::memcpy(block.data(), &d, 2);
  return block;
}

// sum_i |w_i x_i| for each row: the scale of the rounding errors of row · x.
std::vector<double> magnitudes(DType t, const std::vector<std::uint8_t>& w, std::int64_t rows,
                               std::int64_t cols, const std::vector<double>& x) {
  std::vector<double> m(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::vector<double> wr = decode(t, w.data() + r * row_bytes(t, cols), cols);
    for (std::int64_t i = 0; i < cols; ++i) m[r] += std::fabs(wr[i] * x[i]);
  }
  return m;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

std::vector<double> decode_activation(const std::vector<BlockQ8_0>& xq) {
  std::vector<double> x;
  for (const BlockQ8_0& b : xq) {
    for (std::int8_t q : b.qs) x.push_back(static_cast<double>(fp16_to_fp32(b.d)) * q);
  }
  return x;
}

std::vector<BlockQ8_0> quantized(const std::vector<float>& x) {
  std::vector<BlockQ8_0> xq(x.size() / 32);
  scalar::quantize_activation(x.data(), xq.data(), static_cast<std::int64_t>(x.size()));
  return xq;
}

std::string shape_name(DType t, std::int64_t rows, std::int64_t cols) {
  return std::string(to_string(t)) + " [" + std::to_string(rows) + ", " + std::to_string(cols) +
         "]";
}

// The shapes each gemv is tried on: row counts around multiples of 4, 8 and 16, and column counts
// that are not multiples of a vector (float types) or of two blocks (quantized types).
const std::vector<std::int64_t> kRowCounts = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 33};
std::vector<std::int64_t> column_counts(DType t) {
  if (is_quantized(t)) return {32, 64, 96, 160, 544};
  return {1, 7, 8, 17, 53, 64, 172, 263};
}

// Checks y against the reference y_ref row by row within order_tolerance of the magnitudes.
void expect_close(const std::vector<float>& y, const std::vector<float>& y_ref,
                  const std::vector<double>& magnitude, std::int64_t cols) {
  for (std::size_t r = 0; r < y.size(); ++r) {
    EXPECT_NEAR(y[r], y_ref[r], order_tolerance(cols) * magnitude[r]) << "row " << r;
  }
}

// --- fp16 and bf16 conversions -----------------------------------------------------------------

__attribute__((target("f16c"))) std::uint16_t hardware_fp32_to_fp16(float f) {
  return static_cast<std::uint16_t>(_cvtss_sh(f, 0));
}

__attribute__((target("f16c"))) float hardware_fp16_to_fp32(std::uint16_t h) { return _cvtsh_ss(h); }

bool is_fp16_nan(std::uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0; }

TEST(KernelsFp16, EveryValueRoundTripsAndMatchesHardware) {
  const bool f16c = simd_supported(Simd::kAvx2);
  for (std::uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f = fp16_to_fp32(h);
    if (is_fp16_nan(h)) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << bits;
      EXPECT_TRUE(is_fp16_nan(fp32_to_fp16(f))) << std::hex << bits;
      continue;
    }
    EXPECT_EQ(fp32_to_fp16(f), h) << std::hex << bits;
    if (f16c) {
      EXPECT_EQ(float_to_bits(f), float_to_bits(hardware_fp16_to_fp32(h))) << std::hex << bits;
    }
  }
  EXPECT_EQ(fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xC000), -2.0f);
}

TEST(KernelsFp16, RoundingMatchesHardwareOnEveryBoundary) {
  if (!simd_supported(Simd::kAvx2)) GTEST_SKIP() << "no F16C on this CPU";
  std::int64_t checked = 0;
  const auto check = [&checked](std::uint32_t bits) {
    const float f = bits_to_float(bits);
    const std::uint16_t mine = fp32_to_fp16(f);
    const std::uint16_t hardware = hardware_fp32_to_fp16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(is_fp16_nan(mine) && is_fp16_nan(hardware)) << std::hex << bits;
    } else {
      EXPECT_EQ(mine, hardware) << std::hex << bits << " = " << f;
    }
    ++checked;
  };
  // Each fp16 value, the midpoint to the next one (the tie), and their fp32 neighbours: every
  // rounding boundary, including 65504 / 65520 (the overflow threshold) and the subnormals.
  for (std::uint32_t h = 0; h < 0x7C00; ++h) {
    const float lo = fp16_to_fp32(static_cast<std::uint16_t>(h));
    const float hi = h + 1 == 0x7C00 ? 65536.0f : fp16_to_fp32(static_cast<std::uint16_t>(h + 1));
    for (std::uint32_t sign : {0u, 0x80000000u}) {
      for (float f : {lo, (lo + hi) / 2}) {
        const std::uint32_t bits = float_to_bits(f);
        for (std::uint32_t b : {bits - 1, bits, bits + 1}) check(b | sign);
      }
    }
  }
  // Every fp32 below fp16's smallest normal (subnormal results, round to zero), then a stride
  // through all 2^32 patterns (large values, infinities, NaNs).
  for (std::uint32_t bits = float_to_bits(std::ldexp(1.0f, -26)); bits <= 0x38800000; bits += 7) {
    check(bits);
  }
  for (std::uint64_t bits = 0; bits <= 0xFFFFFFFFu; bits += 4099) check(static_cast<std::uint32_t>(bits));
  check(float_to_bits(65504.0f));
  check(float_to_bits(65520.0f));
  check(float_to_bits(65520.0f) - 1);
  EXPECT_EQ(fp32_to_fp16(65519.996f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);
  EXPECT_GT(checked, 3000000);
}

TEST(KernelsBf16, RoundsToNearestEven) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(bits_to_float(0x3F808000)), 0x3F80);  // tie, down to even
  EXPECT_EQ(fp32_to_bf16(bits_to_float(0x3F818000)), 0x3F82);  // tie, up to even
  EXPECT_EQ(fp32_to_bf16(bits_to_float(0x3F808001)), 0x3F81);  // above the tie
  EXPECT_EQ(fp32_to_bf16(bits_to_float(0xBF807FFF)), 0xBF80);  // below the tie
  EXPECT_EQ(bf16_to_fp32(0xC040), -3.0f);
}

// --- The reference quantizers, against hand-computed blocks -------------------------------------

TEST(KernelsFromFloat, Q8_0RoundsHalfAwayFromZero) {
  std::vector<float> x(96, 0.0f);
  // Block 0: max |x| = 127, so d = 1 and q = round(x).
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.49f;
  x[4] = -127.0f;
  x[5] = 63.5f;
  // Block 1: max |x| = 254, so d = 2 and q = round(x / 2).
  x[32] = -254.0f;
  x[33] = 5.0f;
  x[34] = -5.0f;
  x[35] = 1.0f;
  // Block 2: all zero, so d = 0 and every q = 0.
  std::vector<BlockQ8_0> q(3);
  scalar::from_float(DType::kQ8_0, x.data(), q.data(), 96);
  EXPECT_EQ(q[0].d, 0x3C00);  // 1.0
  const std::vector<int> expected0 = {127, 3, -3, 0, -127, 64};
  for (std::size_t j = 0; j < expected0.size(); ++j) EXPECT_EQ(q[0].qs[j], expected0[j]) << j;
  for (std::size_t j = expected0.size(); j < 32; ++j) EXPECT_EQ(q[0].qs[j], 0) << j;
  EXPECT_EQ(q[1].d, 0x4000);  // 2.0
  const std::vector<int> expected1 = {-127, 3, -3, 1};
  for (std::size_t j = 0; j < expected1.size(); ++j) EXPECT_EQ(q[1].qs[j], expected1[j]) << j;
  EXPECT_EQ(q[2].d, 0);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q[2].qs[j], 0) << j;
}

// The nibble of element j (0..31) of a Q4_0 block: low nibbles hold 0..15, high ones 16..31.
int nibble(const BlockQ4_0& b, int j) { return j < 16 ? b.qs[j] & 0x0F : b.qs[j - 16] >> 4; }

TEST(KernelsFromFloat, Q4_0MapsTheSignedMaximumToMinusEight) {
  std::vector<float> x(96, 0.0f);
  // Block 0: the largest magnitude is -8, so d = 1 and q = min(15, trunc(x + 8.5)).
  const std::vector<std::pair<float, int>> block0 = {
      {-8.0f, 0}, {0.0f, 8}, {7.0f, 15}, {7.4f, 15}, {7.5f, 15}, {-7.6f, 0}, {-7.5f, 1},
      {0.5f, 9}, {-0.5f, 8}, {3.2f, 11}};
  // Spread over both halves of the block, to check where each nibble goes.
  const std::vector<int> positions = {0, 1, 2, 3, 16, 17, 18, 19, 30, 31};
  for (std::size_t k = 0; k < block0.size(); ++k) x[positions[k]] = block0[k].first;
  // Block 1: -4 and 4 tie for the largest magnitude and the first one wins: d = -4 / -8 = 0.5,
  // so -4 -> 0 and 4 -> min(15, 16) = 15 (the other way round, it would be 15 and 0).
  x[32] = -4.0f;
  x[33] = 4.0f;
  x[34] = 1.0f;  // 2 + 8.5 -> 10
  // Block 2: all zero, so d = -0 (as ggml writes it) and every q = 8.
  std::vector<BlockQ4_0> q(3);
  scalar::from_float(DType::kQ4_0, x.data(), q.data(), 96);
  EXPECT_EQ(q[0].d, 0x3C00);
  for (std::size_t k = 0; k < block0.size(); ++k) {
    EXPECT_EQ(nibble(q[0], positions[k]), block0[k].second) << "x = " << block0[k].first;
  }
  EXPECT_EQ(nibble(q[0], 4), 8);
  EXPECT_EQ(q[1].d, 0x3800);  // 0.5
  EXPECT_EQ(nibble(q[1], 0), 0);
  EXPECT_EQ(nibble(q[1], 1), 15);
  EXPECT_EQ(nibble(q[1], 2), 10);
  EXPECT_EQ(q[2].d, 0x8000);  // 0 / -8 = -0
  for (int j = 0; j < 32; ++j) EXPECT_EQ(nibble(q[2], j), 8) << j;
}

TEST(KernelsFromFloat, Q4_0RoundsTheProductBeforeAddingTheOffset) {
  // ggml computes fl(fl(x * id) + 8.5). Here x * id is just below -7.5 but rounds to -7.5 in
  // float, so q = trunc(1.0) = 1; one fused multiply-add would give trunc(0.99999994) = 0.
  const float max = -0x1.8d0e56p+0f;
  const float x = -0x1.743d7p+0f;
  const float id = 1.0f / (max / -8.0f);
  ASSERT_EQ(x * id, -7.5f);
  ASSERT_LT(static_cast<double>(x) * static_cast<double>(id), -7.5);
  std::vector<float> block(32, 0.0f);
  block[0] = max;
  block[1] = x;
  BlockQ4_0 q;
  scalar::from_float(DType::kQ4_0, block.data(), &q, 32);
  EXPECT_EQ(nibble(q, 0), 0);
  EXPECT_EQ(nibble(q, 1), 1);
}

TEST(KernelsFromFloat, FloatTypesConvertEachValue) {
  const std::vector<float> x = {1.0f, -2.5f, 65504.0f, 1e-8f, bits_to_float(0x3F808000)};
  std::vector<std::uint16_t> f16(x.size()), bf16(x.size());
  std::vector<float> f32(x.size());
  const auto n = static_cast<std::int64_t>(x.size());
  scalar::from_float(DType::kF16, x.data(), f16.data(), n);
  scalar::from_float(DType::kBF16, x.data(), bf16.data(), n);
  scalar::from_float(DType::kF32, x.data(), f32.data(), n);
  EXPECT_EQ(f16, (std::vector<std::uint16_t>{0x3C00, 0xC100, 0x7BFF, 0x0000, 0x3C04}));
  EXPECT_EQ(bf16, (std::vector<std::uint16_t>{0x3F80, 0xC020, 0x4780, 0x322C, 0x3F80}));
  EXPECT_EQ(f32, x);
}

// --- to_float: the scalar reference by hand, every path bit for bit against it -----------------

TEST(KernelsToFloat, ScalarDecodesHandMadeBlocks) {
  BlockQ8_0 q8{};
  q8.d = 0x3800;  // 0.5
  q8.qs[0] = -128;
  q8.qs[1] = 127;
  q8.qs[31] = -3;
  BlockQ4_0 q4{};
  q4.d = 0xC000;  // -2
  q4.qs[0] = 0xF0;  // element 0: nibble 0 (q = -8); element 16: nibble 15 (q = 7)
  q4.qs[15] = 0x98;  // element 15: q = 0; element 31: q = 1
  std::vector<float> out(32);
  scalar::to_float(DType::kQ8_0, &q8, out.data(), 32);
  EXPECT_EQ(out[0], -64.0f);
  EXPECT_EQ(out[1], 63.5f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[31], -1.5f);
  scalar::to_float(DType::kQ4_0, &q4, out.data(), 32);
  EXPECT_EQ(out[0], 16.0f);
  EXPECT_EQ(out[16], -14.0f);
  EXPECT_EQ(out[15], 0.0f);
  EXPECT_EQ(out[31], -2.0f);
  EXPECT_EQ(out[1], 16.0f);  // byte 0 of qs = 0: q = -8
}

TEST(KernelsToFloat, EveryPathMatchesScalarBitForBit) {
  for (Simd simd : supported_paths()) {
    for (DType t : kAllTypes) {
      const std::vector<std::int64_t> lengths =
          is_quantized(t) ? std::vector<std::int64_t>{32, 64, 96, 320}
                          : std::vector<std::int64_t>{1, 7, 15, 16, 17, 64, 172, 200};
      for (std::int64_t n : lengths) {
        SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, 1, n));
        std::vector<std::uint8_t> row = random_matrix(t, 1, n, 7);
        if (t == DType::kF16 || t == DType::kBF16) {
          // Random bit patterns, every exponent (NaNs excluded: hardware quiets signalling ones).
          std::mt19937 rng(static_cast<std::uint32_t>(n));
          for (std::int64_t i = 0; i < n; ++i) {
            std::uint16_t h;
            do {
              h = static_cast<std::uint16_t>(rng());
            } while (t == DType::kF16 ? is_fp16_nan(h) : std::isnan(bf16_to_fp32(h)));
            std::memcpy(row.data() + 2 * i, &h, 2);
          }
        }
        std::vector<float> expected(static_cast<std::size_t>(n)), got(expected.size(), -1.0f);
        scalar::to_float(t, row.data(), expected.data(), n);
        kernels(t, simd).to_float(row.data(), got.data(), n);
        const std::vector<double> exact = decode(t, row.data(), n);
        for (std::int64_t i = 0; i < n; ++i) {
          EXPECT_EQ(float_to_bits(got[i]), float_to_bits(expected[i])) << i;
          EXPECT_EQ(static_cast<double>(expected[i]), static_cast<float>(exact[i])) << i;
        }
      }
    }
  }
}

// --- quantize_activation ----------------------------------------------------------------------

TEST(KernelsQuantizeActivation, ScalarRoundsHalfToEven) {
  std::vector<float> x(64, 0.0f);
  x[0] = 127.0f;  // d = 1
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 3.5f;
  x[4] = -0.5f;
  x[5] = 126.5f;
  x[6] = -127.0f;
  BlockQ8_0 q[2];
  scalar::quantize_activation(x.data(), q, 64);
  EXPECT_EQ(q[0].d, 0x3C00);
  const std::vector<int> expected = {127, 2, -2, 4, 0, 126, -127};
  for (std::size_t j = 0; j < expected.size(); ++j) EXPECT_EQ(q[0].qs[j], expected[j]) << j;
  EXPECT_EQ(q[1].d, 0);  // an all-zero block
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q[1].qs[j], 0);
}

TEST(KernelsQuantizeActivation, EveryPathMatchesScalarBitForBit) {
  const std::int64_t n = 32 * 40;
  std::vector<float> x = random_floats(static_cast<std::size_t>(n), 11);
  // Blocks of different character: ties (max 127 so d = 1, halves everywhere), all zero, tiny
  // (an fp16-subnormal scale), huge, one non-zero value, and negative maxima.
  for (int j = 0; j < 32; ++j) x[j] = j == 0 ? 127.0f : static_cast<float>(j) - 15.5f;
  for (int j = 32; j < 64; ++j) x[j] = 0.0f;
  for (int j = 64; j < 96; ++j) x[j] *= 1e-7f;
  for (int j = 96; j < 128; ++j) x[j] *= 3e4f;
  for (int j = 128; j < 160; ++j) x[j] = j == 140 ? -0.3f : 0.0f;
  for (int j = 160; j < 192; ++j) x[j] = -std::fabs(x[j]);
  for (Simd simd : supported_paths()) {
    SCOPED_TRACE(to_string(simd));
    std::vector<BlockQ8_0> expected(static_cast<std::size_t>(n / 32)), got(expected.size());
    scalar::quantize_activation(x.data(), expected.data(), n);
    std::memset(got.data(), 0x55, got.size() * sizeof(BlockQ8_0));
    quantize_activation(x.data(), got.data(), n, simd);
    for (std::size_t b = 0; b < expected.size(); ++b) {
      EXPECT_EQ(got[b].d, expected[b].d) << "block " << b;
      EXPECT_EQ(std::memcmp(got[b].qs, expected[b].qs, 32), 0) << "block " << b;
      for (std::int8_t q : got[b].qs) EXPECT_NE(q, -128) << "block " << b;
    }
  }
}

// Runs k.gemm over the tokens xq ([n_tokens, cols / Block::kSize] activation blocks, each
// prepared by k.prepare) into y of row stride rows + 3, and checks that each output is bit for
// bit k.gemv's for its token alone and within the gemv tolerance (magnitudes_of(token)) of the
// scalar reference; the padding between rows stays as it was.
template <typename Block, typename Magnitudes>
void expect_gemm_equals_gemv(const TypeKernels& k, const TypeKernels& ref,
                             const std::vector<std::uint8_t>& w, std::int64_t rows,
                             std::int64_t cols, const std::vector<Block>& xq, std::int64_t n_tokens,
                             Magnitudes magnitudes_of) {
  const std::int64_t n_blocks = cols / Block::kSize, ldy = rows + 3;
  const std::size_t stride = prepared_bytes(cols);
  std::vector<std::uint8_t> prepared(stride * static_cast<std::size_t>(n_tokens));
  for (std::int64_t i = 0; i < n_tokens; ++i) {
    k.prepare(xq.data() + i * n_blocks, cols, prepared.data() + i * stride);
  }
  std::vector<float> y(static_cast<std::size_t>(n_tokens * ldy), -7.0f);
  k.gemm(w.data(), rows, cols, prepared.data(), n_tokens, y.data(), ldy);
  std::vector<float> alone(static_cast<std::size_t>(rows)), y_ref(alone.size());
  for (std::int64_t i = 0; i < n_tokens; ++i) {
    SCOPED_TRACE("token " + std::to_string(i) + " of " + std::to_string(n_tokens));
    const std::vector<Block> token(xq.begin() + i * n_blocks, xq.begin() + (i + 1) * n_blocks);
    k.gemv(w.data(), rows, cols, token.data(), alone.data());
    ref.gemv(w.data(), rows, cols, token.data(), y_ref.data());
    const std::vector<float> row(y.begin() + i * ldy, y.begin() + i * ldy + rows);
    for (std::int64_t r = 0; r < rows; ++r) ASSERT_EQ(row[r], alone[r]) << "row " << r;
    expect_close(row, y_ref, magnitudes_of(token), cols);
    for (std::int64_t r = rows; r < ldy; ++r) ASSERT_EQ(y[i * ldy + r], -7.0f);
  }
}

// expect_gemm_equals_gemv for a Q8_0 or Q4_0 matrix.
void expect_gemm_equals_gemv(const TypeKernels& k, const TypeKernels& ref, DType t,
                             const std::vector<std::uint8_t>& w, std::int64_t rows,
                             std::int64_t cols, const std::vector<BlockQ8_0>& xq,
                             std::int64_t n_tokens) {
  expect_gemm_equals_gemv(k, ref, w, rows, cols, xq, n_tokens,
                          [&](const std::vector<BlockQ8_0>& token) {
                            return magnitudes(t, w, rows, cols, decode_activation(token));
                          });
}

// The scalar twin of type t's interleaved kernel.
using InterleavedKernel = void (*)(const void*, std::int64_t, std::int64_t, std::int64_t,
                                   const ActivationBlock*, std::int64_t, float*, std::int64_t);
InterleavedKernel interleaved_twin(DType t) {
  switch (t) {
    case DType::kQ4_0: return scalar::gemm_interleaved<BlockQ4_0x16>;
    case DType::kQ8_0: return scalar::gemm_interleaved<BlockQ8_0x16>;
    case DType::kQ4_K: return scalar::gemm_interleaved<BlockQ4_Kx16>;
    case DType::kQ5_K: return scalar::gemm_interleaved<BlockQ5_Kx16>;
    default: return scalar::gemm_interleaved<BlockQ6_Kx16>;
  }
}

// The interleaved copy of w (of a type with an interleaved layout) times n_tokens tokens xq over
// rows [row_begin, row_end), ldy = rows + 3: the scalar twin is within the gemv tolerance (of
// magnitudes_of(token)) of the scalar gemv on the stored rows (gemv_f32 on the decoded
// activation for the K types, whose gemv takes other blocks), and k's kernel (if the path has
// one) is the twin bit for bit, gives each token what it gives that token alone, and leaves the
// other outputs as they were.
template <typename Magnitudes>
void expect_interleaved_matches(const TypeKernels& k, DType t, const std::vector<std::uint8_t>& w,
                                std::int64_t rows, std::int64_t cols,
                                const std::vector<BlockQ8_0>& xq, std::int64_t n_tokens,
                                std::int64_t row_begin, std::int64_t row_end,
                                const Magnitudes& magnitudes_of) {
  SCOPED_TRACE("rows [" + std::to_string(row_begin) + ", " + std::to_string(row_end) + ") of " +
               std::to_string(n_tokens) + " tokens");
  const std::int64_t n_blocks = cols / 32, ldy = rows + 3;
  std::vector<std::uint8_t> wi(interleaved_bytes(t, rows, cols));
  interleave(t, w.data(), rows, cols, wi.data());
  std::vector<ActivationBlock> x(static_cast<std::size_t>(n_tokens * n_blocks));
  for (std::int64_t i = 0; i < n_tokens; ++i) {
    prepare_interleaved(xq.data() + i * n_blocks, cols, x.data() + i * n_blocks);
  }
  std::vector<float> y_twin(static_cast<std::size_t>(n_tokens * ldy), -7.0f);
  interleaved_twin(t)(wi.data(), row_begin, row_end, cols, x.data(), n_tokens, y_twin.data(), ldy);
  std::vector<float> y = y_twin;
  if (k.gemm_interleaved != nullptr) {
    std::fill(y.begin(), y.end(), -7.0f);
    k.gemm_interleaved(wi.data(), row_begin, row_end, cols, x.data(), n_tokens, y.data(), ldy);
    ASSERT_EQ(y, y_twin);
  }
  const TypeKernels& ref = kernels(t, Simd::kScalar);
  std::vector<float> y_ref(static_cast<std::size_t>(rows)), alone(y_ref.size(), -7.0f);
  for (std::int64_t i = 0; i < n_tokens; ++i) {
    SCOPED_TRACE("token " + std::to_string(i));
    const std::vector<BlockQ8_0> token(xq.begin() + i * n_blocks, xq.begin() + (i + 1) * n_blocks);
    if (ref.decode_activation == DType::kQ8_0) {
      ref.gemv(w.data(), rows, cols, token.data(), y_ref.data());
    } else {
      const std::vector<double> decoded = decode_activation(token);
      const std::vector<float> x_float(decoded.begin(), decoded.end());
      ref.gemv_f32(w.data(), rows, cols, x_float.data(), y_ref.data());
    }
    const std::vector<double> magnitude = magnitudes_of(token);
    if (k.gemm_interleaved != nullptr) {
      k.gemm_interleaved(wi.data(), row_begin, row_end, cols, x.data() + i * n_blocks, 1,
                         alone.data(), ldy);
    }
    for (std::int64_t r = 0; r < ldy; ++r) {
      const float out = y[i * ldy + r];
      if (r < row_begin || r >= row_end) {
        ASSERT_EQ(out, -7.0f) << "row " << r;
        continue;
      }
      EXPECT_NEAR(out, y_ref[r], order_tolerance(cols) * magnitude[r]) << "row " << r;
      if (k.gemm_interleaved != nullptr) {
        ASSERT_EQ(out, alone[r]) << "row " << r;
      }
    }
  }
}

// expect_interleaved_matches for Q8_0 and Q4_0, whose magnitudes decode() gives.
void expect_interleaved_matches(const TypeKernels& k, DType t, const std::vector<std::uint8_t>& w,
                                std::int64_t rows, std::int64_t cols,
                                const std::vector<BlockQ8_0>& xq, std::int64_t n_tokens,
                                std::int64_t row_begin, std::int64_t row_end) {
  expect_interleaved_matches(k, t, w, rows, cols, xq, n_tokens, row_begin, row_end,
                             [&](const std::vector<BlockQ8_0>& token) {
                               return magnitudes(t, w, rows, cols, decode_activation(token));
                             });
}

// --- gemv --------------------------------------------------------------------------------------

TEST(KernelsGemv, ScalarReferenceMatchesDoublePrecision) {
  for (DType t : kAllTypes) {
    const std::int64_t rows = 5, cols = is_quantized(t) ? 160 : 172;
    SCOPED_TRACE(shape_name(t, rows, cols));
    const std::vector<std::uint8_t> w = random_matrix(t, rows, cols, 3);
    const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), 4);
    const std::vector<BlockQ8_0> xq = quantized(x);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::uint8_t* row = w.data() + r * row_bytes(t, cols);
      const std::vector<double> wr = decode(t, row, cols);
      const std::vector<double> xd = to_double(x);
      double exact = 0, magnitude = 0;
      for (std::int64_t i = 0; i < cols; ++i) {
        exact += wr[i] * xd[i];
        magnitude += std::fabs(wr[i] * xd[i]);
      }
      EXPECT_NEAR(scalar::dot(t, row, x.data(), cols), exact, order_tolerance(cols) * magnitude);
      if (!is_quantized(t)) continue;
      const std::vector<double> xqd = decode_activation(xq);
      double exact_q = 0, magnitude_q = 0;
      for (std::int64_t i = 0; i < cols; ++i) {
        exact_q += wr[i] * xqd[i];
        magnitude_q += std::fabs(wr[i] * xqd[i]);
      }
      EXPECT_NEAR(scalar::dot_q8(t, row, xq.data(), cols), exact_q,
                  order_tolerance(cols) * magnitude_q);
    }
  }
}

TEST(KernelsGemv, EveryPathMatchesScalarOnRandomMatrices) {
  for (Simd simd : supported_paths()) {
    for (DType t : kAllTypes) {
      const TypeKernels& k = kernels(t, simd);
      const TypeKernels& ref = kernels(t, Simd::kScalar);
      for (std::int64_t cols : column_counts(t)) {
        for (std::int64_t rows : kRowCounts) {
          SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
          const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols);
          const std::vector<std::uint8_t> w = random_matrix(t, rows, cols, seed);
          const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), seed + 1);
          std::vector<float> y(static_cast<std::size_t>(rows), -1.0f), y_ref(y.size());
          // Float activation: gemv_f32 (and gemv, for float types).
          k.gemv_f32(w.data(), rows, cols, x.data(), y.data());
          ref.gemv_f32(w.data(), rows, cols, x.data(), y_ref.data());
          expect_close(y, y_ref, magnitudes(t, w, rows, cols, to_double(x)), cols);
          if (!is_quantized(t)) {
            EXPECT_EQ(k.gemv, k.gemv_f32);
            continue;
          }
          // Quantized activation: gemv.
          const std::vector<BlockQ8_0> xq = quantized(x);
          k.gemv(w.data(), rows, cols, xq.data(), y.data());
          ref.gemv(w.data(), rows, cols, xq.data(), y_ref.data());
          expect_close(y, y_ref, magnitudes(t, w, rows, cols, decode_activation(xq)), cols);
        }
      }
    }
  }
}

TEST(KernelsGemv, EveryPathMatchesScalarOnExtremeBlocks) {
  // Rows of uniform blocks that stress each kernel's integer and float ranges: the largest
  // products (Q8_0 -128 and 127, Q4_0 nibbles 0 and 15), zero, subnormal and largest fp16 scales.
  const std::uint16_t kScales[] = {0x0000, 0x0001, 0x03FF, 0x3C00, 0xBC00, 0x7BFF};
  const std::int64_t cols = 96;  // three blocks: one pair and one single block
  for (DType t : kQuantizedTypes) {
    // Q8_0: q = -128, 127, 0, -1. Q4_0: nibbles 0 (q = -8) and 15 (q = 7), in each order, and 8.
    const std::vector<std::uint8_t> fills = t == DType::kQ8_0
                                                ? std::vector<std::uint8_t>{0x80, 0x7F, 0x00, 0xFF}
                                                : std::vector<std::uint8_t>{0x00, 0xFF, 0x0F, 0xF0, 0x88};
    std::vector<std::uint8_t> w;
    std::int64_t rows = 0;
    for (std::uint16_t d : kScales) {
      for (std::uint8_t fill : fills) {
        for (int b = 0; b < cols / 32; ++b) {
          const std::vector<std::uint8_t> block = uniform_block(t, d, fill);
          w.insert(w.end(), block.begin(), block.end());
        }
        ++rows;
      }
    }
    // Activations: q = 127 with a large scale, q = +-127 alternating, and an all-zero block.
    std::vector<float> x(static_cast<std::size_t>(cols));
    for (std::int64_t i = 0; i < 32; ++i) x[i] = 65504.0f;
    for (std::int64_t i = 32; i < 64; ++i) x[i] = i % 2 ? -3.0f : 3.0f;
    for (std::int64_t i = 64; i < 96; ++i) x[i] = 0.0f;
    const std::vector<BlockQ8_0> xq = quantized(x);
    for (Simd simd : supported_paths()) {
      SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
      const TypeKernels& k = kernels(t, simd);
      const TypeKernels& ref = kernels(t, Simd::kScalar);
      std::vector<float> y(static_cast<std::size_t>(rows)), y_ref(y.size());
      k.gemv(w.data(), rows, cols, xq.data(), y.data());
      ref.gemv(w.data(), rows, cols, xq.data(), y_ref.data());
      expect_close(y, y_ref, magnitudes(t, w, rows, cols, decode_activation(xq)), cols);
      k.gemv_f32(w.data(), rows, cols, x.data(), y.data());
      ref.gemv_f32(w.data(), rows, cols, x.data(), y_ref.data());
      expect_close(y, y_ref, magnitudes(t, w, rows, cols, to_double(x)), cols);
      if (k.gemm != nullptr) {  // the same tokens, and their negations, at once
        std::vector<BlockQ8_0> tokens = xq;
        for (BlockQ8_0 b : xq) {
          for (std::int8_t& q : b.qs) q = static_cast<std::int8_t>(-q);
          tokens.push_back(b);
        }
        expect_gemm_equals_gemv(k, ref, t, w, rows, cols, tokens, 2);
      }
      expect_interleaved_matches(k, t, w, rows, cols, xq, 1, 0, rows);
    }
  }
}

// --- gemm: several tokens at once ----------------------------------------------------------------

TEST(KernelsGemm, EachTokenGetsWhatItsGemvGivesItAlone) {
  int paths = 0;
  for (Simd simd : supported_paths()) {
    for (DType t : kQuantizedTypes) {
      const TypeKernels& k = kernels(t, simd);
      if (k.gemm == nullptr) continue;
      ++paths;
      for (std::int64_t cols : column_counts(t)) {
        for (std::int64_t rows : kRowCounts) {
          for (std::int64_t n_tokens : {1, 2, 3, 7, 8, 9, 17}) {
            SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
            const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols + n_tokens * 7);
            const std::vector<std::uint8_t> w = random_matrix(t, rows, cols, seed);
            const std::vector<BlockQ8_0> xq =
                quantized(random_floats(static_cast<std::size_t>(n_tokens * cols), seed + 1));
            expect_gemm_equals_gemv(k, kernels(t, Simd::kScalar), t, w, rows, cols, xq, n_tokens);
          }
        }
      }
    }
  }
  if (paths == 0) GTEST_SKIP() << "no path on this CPU has a gemm kernel";
}

TEST(KernelsInterleaved, EachPathMatchesItsTwinAndTheStoredRows) {
  for (Simd simd : supported_paths()) {
    for (DType t : kQuantizedTypes) {
      const TypeKernels& k = kernels(t, simd);
      for (std::int64_t cols : column_counts(t)) {
        for (std::int64_t rows : kRowCounts) {
          for (std::int64_t n_tokens : {1, 2, 7, 8, 9, 17}) {
            SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
            const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols + n_tokens * 7);
            const std::vector<std::uint8_t> w = random_matrix(t, rows, cols, seed);
            const std::vector<BlockQ8_0> xq =
                quantized(random_floats(static_cast<std::size_t>(n_tokens * cols), seed + 1));
            // All the rows, and a range that starts and ends inside groups of 16.
            expect_interleaved_matches(k, t, w, rows, cols, xq, n_tokens, 0, rows);
            if (rows > 4) expect_interleaved_matches(k, t, w, rows, cols, xq, n_tokens, 3, rows - 1);
          }
        }
      }
    }
  }
}

TEST(KernelsInterleaved, LayoutHoldsEachRowsBlocks) {
  // Independent of the kernels: every element of every row, read back from the layout.
  for (DType t : kQuantizedTypes) {
    const std::int64_t rows = 19, cols = 96;
    const std::vector<std::uint8_t> w = random_matrix(t, rows, cols, 5);
    std::vector<std::uint8_t> wi(interleaved_bytes(t, rows, cols));
    ASSERT_EQ(wi.size(), 32 * row_bytes(t, cols));  // two groups, the second padded
    interleave(t, w.data(), rows, cols, wi.data());
    for (std::int64_t r = 0; r < 32; ++r) {
      for (std::int64_t b = 0; b < cols / 32; ++b) {
        const std::int64_t group = r / 16, lane = r % 16;
        if (t == DType::kQ4_0) {
          const auto& o = reinterpret_cast<const BlockQ4_0x16*>(wi.data())[group * 3 + b];
          const BlockQ4_0 zero{};
          const BlockQ4_0& in =
              r < rows ? reinterpret_cast<const BlockQ4_0*>(w.data())[r * 3 + b] : zero;
          ASSERT_EQ(o.d[lane], in.d);
          for (int j = 0; j < 16; ++j) ASSERT_EQ(o.qs[j / 4][4 * lane + j % 4], in.qs[j]);
        } else {
          const auto& o = reinterpret_cast<const BlockQ8_0x16*>(wi.data())[group * 3 + b];
          if (r >= rows) {  // padding: scale 0
            ASSERT_EQ(o.d[lane], 0);
            continue;
          }
          const BlockQ8_0& in = reinterpret_cast<const BlockQ8_0*>(w.data())[r * 3 + b];
          ASSERT_EQ(o.d[lane], in.d);
          for (int j = 0; j < 32; ++j) ASSERT_EQ(o.qs[j / 4][4 * lane + j % 4], in.qs[j] + 128);
        }
      }
    }
  }
}

// --- The float GEMM over packed panels (kernels/panel.hpp) ---------------------------------------

TEST(KernelsPanel, LayoutHoldsEachColumnOfThe32Rows) {
  // Independent of the kernels: the plain packing, element by element.
  const std::int64_t rows = 19, cols = 21;
  const std::vector<float> w = random_floats(static_cast<std::size_t>(rows * cols), 41);
  std::vector<float> panel(static_cast<std::size_t>(panel_floats(cols)), -1.0f);
  ASSERT_EQ(panel.size(), static_cast<std::size_t>(cols * 32));
  pack_panel(w.data(), cols, rows, cols, panel.data());
  for (std::int64_t k = 0; k < cols; ++k) {
    for (std::int64_t r = 0; r < 32; ++r) {
      ASSERT_EQ(panel[k * 32 + r], r < rows ? w[r * cols + k] : 0.0f) << "column " << k << ", row " << r;
    }
  }
}

TEST(KernelsPanel, PackingFromColumnsIsPackingTheTranspose) {
  const std::int64_t rows = 21, cols = 9;  // the source holds the transpose: [cols, rows]
  const std::vector<float> t = random_floats(static_cast<std::size_t>(cols * rows), 44);
  std::vector<float> transposed(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t k = 0; k < cols; ++k) transposed[r * cols + k] = t[k * rows + r];
  }
  std::vector<float> expected(static_cast<std::size_t>(panel_floats(cols)));
  std::vector<float> panel(expected.size(), -1.0f);
  pack_panel(transposed.data(), cols, rows, cols, expected.data());
  pack_panel_from_columns(t.data(), rows, rows, cols, panel.data());
  EXPECT_EQ(panel, expected);
}

TEST(KernelsPanel, ScalarTwinMatchesDoublePrecision) {
  const std::int64_t rows = 7, cols = 300, n_tokens = 3;
  const std::vector<float> w = random_floats(static_cast<std::size_t>(rows * cols), 42);
  const std::vector<float> x = random_floats(static_cast<std::size_t>(n_tokens * cols), 43);
  std::vector<float> panel(static_cast<std::size_t>(panel_floats(cols)));
  pack_panel(w.data(), cols, rows, cols, panel.data());
  std::vector<float> y(static_cast<std::size_t>(n_tokens * rows));
  scalar::gemm_panel(panel.data(), rows, cols, x.data(), cols, n_tokens, y.data(), rows);
  for (std::int64_t t = 0; t < n_tokens; ++t) {
    for (std::int64_t r = 0; r < rows; ++r) {
      double exact = 0.0, magnitude = 0.0;
      for (std::int64_t k = 0; k < cols; ++k) {
        exact += static_cast<double>(w[r * cols + k]) * x[t * cols + k];
        magnitude += std::fabs(static_cast<double>(w[r * cols + k]) * x[t * cols + k]);
      }
      EXPECT_NEAR(y[t * rows + r], exact, order_tolerance(cols) * magnitude);
    }
  }
}

TEST(KernelsPanel, EachPathPacksAndMultipliesAsTheScalarTwin) {
  // Every row count of a panel's two halves, columns around the 16-wide packing steps, token
  // counts around each path's tile; outputs outside the rows and tokens stay untouched.
  for (Simd simd : supported_paths()) {
    const PanelKernels* k = panel_kernels(simd);
    if (k == nullptr) continue;  // the scalar path multiplies with Eigen
    for (std::int64_t rows : {1, 5, 15, 16, 17, 31, 32}) {
      for (std::int64_t cols : {1, 15, 16, 17, 64, 172}) {
        for (std::int64_t n_tokens : {1, 5, 6, 7, 8, 9, 13, 17}) {
          SCOPED_TRACE(std::string(to_string(simd)) + " rows " + std::to_string(rows) + " cols " +
                       std::to_string(cols) + " tokens " + std::to_string(n_tokens));
          const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols * 10 + n_tokens);
          // Rows and tokens a few floats further apart than their length, as attention has them.
          const std::int64_t ld = cols + 5, ldx = cols + 3, ldy = rows + 3;
          const std::vector<float> w = random_floats(static_cast<std::size_t>(rows * ld), seed);
          const std::vector<float> x =
              random_floats(static_cast<std::size_t>(n_tokens * ldx), seed + 1);
          std::vector<float> panel_ref(static_cast<std::size_t>(panel_floats(cols)));
          std::vector<float> panel(panel_ref.size(), -1.0f);
          pack_panel(w.data(), ld, rows, cols, panel_ref.data());
          k->pack(w.data(), ld, rows, cols, panel.data());
          ASSERT_EQ(panel, panel_ref);
          std::vector<float> y_ref(static_cast<std::size_t>(n_tokens * ldy), -2.0f);
          std::vector<float> y(y_ref.size(), -2.0f);
          scalar::gemm_panel(panel_ref.data(), rows, cols, x.data(), ldx, n_tokens, y_ref.data(),
                             ldy);
          k->gemm(panel.data(), rows, cols, x.data(), ldx, n_tokens, y.data(), ldy);
          ASSERT_EQ(y, y_ref);  // bit for bit, the padding included
        }
      }
    }
  }
}

// --- The BF16 GEMM over pair panels (kernels/panel.hpp) -------------------------------------------

std::vector<std::uint16_t> random_bf16(std::size_t n, std::uint32_t seed) {
  std::vector<std::uint16_t> v(n);
  const std::vector<float> x = random_floats(n, seed);
  for (std::size_t i = 0; i < n; ++i) v[i] = fp32_to_bf16(x[i]);
  return v;
}

TEST(KernelsPairPanel, LayoutHoldsEachPairOfColumnsOfThe32Rows) {
  const std::int64_t rows = 19, cols = 22, ld = 25;
  const std::vector<std::uint16_t> w = random_bf16(static_cast<std::size_t>(rows * ld), 71);
  std::vector<std::uint32_t> panel(static_cast<std::size_t>(pair_panel_pairs(cols)), 7);
  ASSERT_EQ(panel.size(), static_cast<std::size_t>(cols / 2 * 32));
  pack_pair_panel(w.data(), ld, rows, cols, panel.data());
  for (std::int64_t p = 0; p < cols / 2; ++p) {
    for (std::int64_t r = 0; r < 32; ++r) {
      const std::uint32_t pair = panel[p * 32 + r];
      const std::uint16_t low = r < rows ? w[r * ld + 2 * p] : 0;
      const std::uint16_t high = r < rows ? w[r * ld + 2 * p + 1] : 0;
      ASSERT_EQ(pair & 0xFFFF, low) << "pair " << p << ", row " << r;
      ASSERT_EQ(pair >> 16, high) << "pair " << p << ", row " << r;
    }
  }
}

TEST(KernelsPairPanel, ToBf16RoundsAsVcvtneps2bf16) {
  // Bit patterns in and out, as this machine's vcvtneps2bf16 gave them.
  const std::pair<std::uint32_t, std::uint16_t> cases[] = {
      {0x3F800000, 0x3F80},  // 1
      {0x3F808000, 0x3F80},  // halfway between 1 and the next bfloat16: to the even one
      {0x3F818000, 0x3F82},  // halfway, rounding up to the even one
      {0x3F808001, 0x3F81},  // past halfway
      {0xBFC4167A, 0xBFC4},
      {0x7F7FFFFF, 0x7F80},  // the largest float rounds to infinity
      {0x7F800000, 0x7F80},  // infinity
      {0x7FC00000, 0x7FC0},  // NaN
      {0x000AE398, 0x0000},  // subnormals read as zero
      {0x800AE398, 0x8000},
  };
  for (const auto& [in, out] : cases) {
    float x;
    std::memcpy(&x, &in, sizeof x);
    std::uint16_t got = 0;
    scalar::to_bf16(&x, &got, 1);
    EXPECT_EQ(got, out) << std::hex << in;
  }
}

TEST(KernelsPairPanel, ScalarTwinMatchesDoublePrecision) {
  const std::int64_t rows = 7, cols = 300, n_tokens = 3;
  const std::vector<std::uint16_t> w = random_bf16(static_cast<std::size_t>(rows * cols), 72);
  const std::vector<std::uint16_t> x = random_bf16(static_cast<std::size_t>(n_tokens * cols), 73);
  std::vector<std::uint32_t> panel(static_cast<std::size_t>(pair_panel_pairs(cols)));
  pack_pair_panel(w.data(), cols, rows, cols, panel.data());
  std::vector<float> y(static_cast<std::size_t>(n_tokens * rows));
  scalar::gemm_pair_panel(panel.data(), rows, cols, x.data(), cols, n_tokens, y.data(), rows);
  for (std::int64_t t = 0; t < n_tokens; ++t) {
    for (std::int64_t r = 0; r < rows; ++r) {
      double exact = 0.0, magnitude = 0.0;
      for (std::int64_t k = 0; k < cols; ++k) {
        const double product = double{bf16_to_fp32(w[r * cols + k])} * bf16_to_fp32(x[t * cols + k]);
        exact += product;
        magnitude += std::fabs(product);
      }
      EXPECT_NEAR(y[t * rows + r], exact, order_tolerance(cols) * magnitude);
    }
  }
}

// /proc/cpuinfo's flags: what the kernel read of the CPU, independent of kernels.hpp's CPUID.
bool cpu_has_flag(const std::string& flag) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line);
    std::string word;
    while (words >> word) {
      if (word == flag) return true;
    }
    return false;
  }
  return false;
}

TEST(KernelsPairPanel, OnlyTheAvx512PathOfACpuWithBf16HasIt) {
  for (Simd simd : supported_paths()) {
    const bool expected = simd == Simd::kAvx512 && cpu_has_flag("avx512_bf16");
    EXPECT_EQ(pair_panel_kernels(simd) != nullptr, expected) << to_string(simd);
  }
}

TEST(KernelsPairPanel, EachPathRoundsPacksAndMultipliesAsTheScalarTwin) {
  for (Simd simd : supported_paths()) {
    const PairPanelKernels* k = pair_panel_kernels(simd);
    if (k == nullptr) continue;  // BF16 products run on the float GEMM (checked above)
    // Rounding: random values at several scales, the cases above, and lengths around 16.
    std::vector<float> x = random_floats(203, 74);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] *= std::ldexp(1.0f, static_cast<int>(i % 60) - 30);
    const std::uint32_t special[] = {0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x7F800000, 0xFF800000,
                                     0x7FC00000, 0x7F800001, 0x000AE398, 0x800AE398, 0x80000000};
    for (std::size_t i = 0; i < std::size(special); ++i) std::memcpy(&x[i * 7], &special[i], 4);
    for (std::int64_t n : {1, 15, 16, 17, 203}) {
      std::vector<std::uint16_t> ref(static_cast<std::size_t>(n) + 1, 9), got(ref.size(), 9);
      scalar::to_bf16(x.data(), ref.data(), n);
      k->to_bf16(x.data(), got.data(), n);
      ASSERT_EQ(got, ref) << "n " << n;  // the element past n untouched too
    }
    for (std::int64_t rows : {1, 5, 15, 16, 17, 31, 32}) {
      for (std::int64_t cols : {2, 30, 32, 34, 64, 172}) {
        for (std::int64_t n_tokens : {1, 5, 7, 8, 9, 13, 17}) {
          SCOPED_TRACE(std::string(to_string(simd)) + " rows " + std::to_string(rows) + " cols " +
                       std::to_string(cols) + " tokens " + std::to_string(n_tokens));
          const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols * 10 + n_tokens);
          const std::int64_t ld = cols + 6, ldx = cols + 4, ldy = rows + 3;
          const std::vector<std::uint16_t> w = random_bf16(static_cast<std::size_t>(rows * ld), seed);
          const std::vector<std::uint16_t> xt =
              random_bf16(static_cast<std::size_t>(n_tokens * ldx), seed + 1);
          std::vector<std::uint32_t> panel_ref(static_cast<std::size_t>(pair_panel_pairs(cols)));
          std::vector<std::uint32_t> panel(panel_ref.size(), 7);
          pack_pair_panel(w.data(), ld, rows, cols, panel_ref.data());
          k->pack(w.data(), ld, rows, cols, panel.data());
          ASSERT_EQ(panel, panel_ref);
          std::vector<float> y_ref(static_cast<std::size_t>(n_tokens * ldy), -2.0f);
          std::vector<float> y(y_ref.size(), -2.0f);
          scalar::gemm_pair_panel(panel_ref.data(), rows, cols, xt.data(), ldx, n_tokens,
                                  y_ref.data(), ldy);
          k->gemm(panel.data(), rows, cols, xt.data(), ldx, n_tokens, y.data(), ldy);
          ASSERT_EQ(y, y_ref);  // bit for bit, the padding included
        }
      }
    }
  }
}

// --- Elementwise math: exp, softmax's numerators, SwiGLU's gate ---------------------------------

// A float's place on the number line: neighbours differ by 1, -0 and +0 are both 0.
std::int64_t ordered(float f) {
  std::int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i < 0 ? std::int64_t{std::numeric_limits<std::int32_t>::min()} - i : std::int64_t{i};
}

float from_ordered(std::int64_t o) {
  const auto i = static_cast<std::int32_t>(o < 0 ? std::int64_t{std::numeric_limits<std::int32_t>::min()} - o : o);
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// Floats between a and b (0 for equal values, 1 for neighbours).
std::int64_t ulps_apart(float a, float b) { return std::abs(ordered(a) - ordered(b)); }

TEST(KernelsVector, ExpIsWithinOneUlpOfTheExactValue) {
  // Every 64th float of [-104, 89], so every binade and both ends: e^x in double rounded once to
  // float is the exact value as a float (0 and +inf where it underflows or overflows).
  std::int64_t worst = 0;
  float worst_x = 0.0f;
  for (std::int64_t o = ordered(-104.0f); o <= ordered(89.0f); o += 64) {
    const float x = from_ordered(o);
    const float exact = static_cast<float>(std::exp(static_cast<double>(x)));
    const std::int64_t ulps = ulps_apart(scalar::exp(x), exact);
    if (ulps > worst) worst = ulps, worst_x = x;
  }
  EXPECT_LE(worst, 1) << "at x = " << worst_x;
  EXPECT_EQ(scalar::exp(0.0f), 1.0f);
  EXPECT_EQ(scalar::exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(scalar::exp(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(scalar::exp(std::numeric_limits<float>::quiet_NaN()), 0.0f);
  EXPECT_EQ(scalar::exp(-1000.0f), 0.0f);
  EXPECT_EQ(scalar::exp(1000.0f), std::numeric_limits<float>::infinity());
}

TEST(KernelsVector, EachPathMatchesTheScalarTwin) {
  // Lengths around both vector widths; values across exp's whole range, its ends and beyond.
  std::vector<float> extremes = {0.0f, -0.0f, 1.0f, -104.0f, -103.5f, -87.5f, 88.7f, 88.75f, 89.0f,
                                 1e30f, -1e30f, std::numeric_limits<float>::infinity(),
                                 -std::numeric_limits<float>::infinity()};
  for (Simd simd : supported_paths()) {
    const VectorKernels* k = vector_kernels(simd);
    if (k == nullptr) continue;  // the scalar path runs them on Eigen
    for (std::int64_t n : {0, 1, 7, 8, 9, 15, 16, 17, 33, 100}) {
      SCOPED_TRACE(std::string(to_string(simd)) + " n " + std::to_string(n));
      const auto seed = static_cast<std::uint32_t>(n + 700);
      std::vector<float> x = random_floats(static_cast<std::size_t>(n) + 1, seed, 30.0f);
      const std::vector<float> up = random_floats(x.size(), seed + 1);
      for (std::size_t i = 0; i < extremes.size() && i < static_cast<std::size_t>(n); ++i) {
        x[(i * 7) % static_cast<std::size_t>(n)] = extremes[i];
      }
      for (float shift : {0.0f, 5.0f, -3.0f}) {
        std::vector<float> expected = x, got = x;  // the element past n must stay untouched
        scalar::exp_shifted(expected.data(), n, shift);
        k->exp_shifted(got.data(), n, shift);
        ASSERT_EQ(ulps_apart(got.back(), x.back()), 0);
        for (std::int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(ulps_apart(got[i], expected[i]), 0) << "x " << x[i] << " shift " << shift;
        }
      }
      std::vector<float> expected = x, got = x;
      scalar::silu_mul(expected.data(), up.data(), n);
      k->silu_mul(got.data(), up.data(), n);
      ASSERT_EQ(ulps_apart(got.back(), x.back()), 0);
      for (std::int64_t i = 0; i < n; ++i) {
        if (std::isnan(expected[i])) {  // silu(+-inf) is inf / inf or -inf / 1 * up
          ASSERT_TRUE(std::isnan(got[i])) << "gate " << x[i];
        } else {
          ASSERT_EQ(ulps_apart(got[i], expected[i]), 0) << "gate " << x[i] << " up " << up[i];
        }
      }
    }
  }
}

TEST(KernelsAttention, ScalarTwinsMatchDoublePrecision) {
  // Two query rows against three cached rows of 5 floats, 7 apart; the second query row 6 apart.
  const std::vector<float> q = random_floats(11, 900), rows = random_floats(19, 901);
  std::vector<float> s(2 * 4, -1.0f);
  scalar::scores(q.data(), 6, 2, rows.data(), 7, 3, 5, 0.5f, s.data(), 4);
  for (int g = 0; g < 2; ++g) {
    for (int t = 0; t < 3; ++t) {
      double dot = 0.0;
      for (int c = 0; c < 5; ++c) dot += double{q[g * 6 + c]} * rows[t * 7 + c];
      EXPECT_NEAR(s[g * 4 + t], 0.5 * dot, 1e-6);
    }
    EXPECT_EQ(s[g * 4 + 3], -1.0f);  // past the rows
  }
  const std::vector<float> out0 = random_floats(2 * 6, 902);
  std::vector<float> out = out0;
  scalar::add_weighted_rows(s.data(), 4, 2, rows.data(), 7, 3, 5, out.data(), 6);
  for (int g = 0; g < 2; ++g) {
    for (int c = 0; c < 6; ++c) {
      double expected = out0[g * 6 + c];
      for (int t = 0; t < 3 && c < 5; ++t) expected += double{s[g * 4 + t]} * rows[t * 7 + c];
      EXPECT_NEAR(out[g * 6 + c], expected, 1e-5) << g << " " << c;  // column 5 untouched
    }
  }
}

TEST(KernelsAttention, EachPathMatchesTheScalarTwin) {
  // Query rows (a KV head's group) around the 4 the kernels take at a time, cached rows around
  // the 4 scores take, and head sizes around both vector widths and the 64 columns of a tile.
  for (Simd simd : supported_paths()) {
    const AttentionKernels* k = attention_kernels(simd);
    if (k == nullptr) continue;  // the scalar path runs them on Eigen
    for (std::int64_t cols : {6, 8, 12, 16, 20, 64, 72, 128}) {
      for (std::int64_t n_q : {1, 2, 3, 4, 5, 8}) {
        for (std::int64_t n_rows : {1, 3, 4, 5, 64}) {
          SCOPED_TRACE(std::string(to_string(simd)) + " cols " + std::to_string(cols) + " n_q " +
                       std::to_string(n_q) + " n_rows " + std::to_string(n_rows));
          const std::int64_t ldq = cols + 3, ld = 2 * cols + 5, lds = n_rows + 2, ldo = cols + 1;
          const auto seed = static_cast<std::uint32_t>(cols * 1000 + n_q * 100 + n_rows);
          const std::vector<float> q = random_floats(static_cast<std::size_t>(n_q * ldq), seed);
          const auto n_cached = static_cast<std::size_t>(n_rows * ld);
          const std::vector<float> rows = random_floats(n_cached, seed + 1);
          const float scale = 0.125f;
          std::vector<float> expected(static_cast<std::size_t>(n_q * lds), -7.0f), got = expected;
          scalar::scores(q.data(), ldq, n_q, rows.data(), ld, n_rows, cols, scale, expected.data(),
                         lds);
          k->scores(q.data(), ldq, n_q, rows.data(), ld, n_rows, cols, scale, got.data(), lds);
          for (std::int64_t g = 0; g < n_q; ++g) {
            for (std::int64_t t = 0; t < lds; ++t) {
              const std::size_t i = static_cast<std::size_t>(g * lds + t);
              if (t >= n_rows) {
                ASSERT_EQ(got[i], -7.0f) << "wrote past the rows";
                continue;
              }
              double magnitude = 0.0;
              for (std::int64_t c = 0; c < cols; ++c) {
                magnitude += std::abs(double{q[g * ldq + c]} * rows[t * ld + c]);
              }
              ASSERT_NEAR(got[i], expected[i], order_tolerance(cols) * scale * magnitude)
                  << "row " << g << " position " << t;
            }
          }
          // The scores as softmax numerators, then the outputs they weight, added to what is there.
          const std::vector<float> p = random_floats(expected.size(), seed + 2);
          const auto n_out = static_cast<std::size_t>(n_q * ldo);
          std::vector<float> out_expected = random_floats(n_out, seed + 3);
          std::vector<float> out_got = out_expected;
          scalar::add_weighted_rows(p.data(), lds, n_q, rows.data(), ld, n_rows, cols,
                                    out_expected.data(), ldo);
          k->add_weighted_rows(p.data(), lds, n_q, rows.data(), ld, n_rows, cols, out_got.data(),
                               ldo);
          for (std::size_t i = 0; i < out_got.size(); ++i) {
            ASSERT_EQ(ulps_apart(out_got[i], out_expected[i]), 0) << "element " << i;
          }
        }
      }
    }
  }
}

TEST(KernelsGemv, EveryPathMatchesScalarOnMatricesLargeEnoughToPrefetch) {
  // The SIMD gemvs prefetch the next group of rows on matrices of 4 MiB and more.
  const std::int64_t cols = 1024;
  for (DType t : kAllTypes) {
    const auto rows = static_cast<std::int64_t>((std::size_t{4} << 20) / row_bytes(t, cols) + 7);
    const std::vector<std::uint8_t> w = random_matrix(t, rows, cols, 31);
    const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), 32);
    const std::vector<BlockQ8_0> xq = quantized(x);
    const void* x_gemv = is_quantized(t) ? static_cast<const void*>(xq.data()) : x.data();
    const std::vector<double> magnitude =
        magnitudes(t, w, rows, cols, is_quantized(t) ? decode_activation(xq) : to_double(x));
    std::vector<float> y_ref(static_cast<std::size_t>(rows));
    kernels(t, Simd::kScalar).gemv(w.data(), rows, cols, x_gemv, y_ref.data());
    for (Simd simd : supported_paths()) {
      SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
      std::vector<float> y(y_ref.size(), -1.0f);
      kernels(t, simd).gemv(w.data(), rows, cols, x_gemv, y.data());
      expect_close(y, y_ref, magnitude, cols);
    }
  }
}

TEST(KernelsGemv, IntegerPathStaysWithinTheActivationQuantizationError) {
  const std::int64_t rows = 9, cols = 512;
  const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), 21);
  const std::vector<BlockQ8_0> xq = quantized(x);
  for (DType t : kQuantizedTypes) {
    const std::vector<std::uint8_t> w = random_matrix(t, rows, cols, 22);
    for (Simd simd : supported_paths()) {
      SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
      const TypeKernels& k = kernels(t, simd);
      std::vector<float> y_int(static_cast<std::size_t>(rows)), y_float(y_int.size());
      k.gemv(w.data(), rows, cols, xq.data(), y_int.data());
      k.gemv_f32(w.data(), rows, cols, x.data(), y_float.data());
      const std::vector<double> magnitude = magnitudes(t, w, rows, cols, to_double(x));
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::vector<double> wr = decode(t, w.data() + r * row_bytes(t, cols), cols);
        double bound = 2 * order_tolerance(cols) * magnitude[r];
        for (std::int64_t b = 0; b < cols / 32; ++b) {
          double amax = 0, w_abs = 0;
          for (std::int64_t i = 32 * b; i < 32 * (b + 1); ++i) {
            amax = std::max(amax, std::fabs(static_cast<double>(x[i])));
            w_abs += std::fabs(wr[i]);
          }
          bound += kActivationQuantizationError * amax / 127 * w_abs;
        }
        EXPECT_NEAR(y_int[r], y_float[r], bound) << "row " << r;
      }
    }
  }
}

// --- K types (Q4_K, Q5_K, Q6_K) -----------------------------------------------------------------

constexpr DType kKTypes[] = {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

std::uint16_t read_u16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | p[1] << 8); }

// Independent decoding of a K row from its bytes (ggml-common.h's offsets), in double, as the
// two terms the kernels compute: weight i = scaled[i] - offset[i] (offset is 0 for Q6_K).
struct KTerms {
  std::vector<double> scaled;
  std::vector<double> offset;
};

KTerms decode_k(DType t, const std::uint8_t* row, std::int64_t n) {
  KTerms terms{std::vector<double>(static_cast<std::size_t>(n)), std::vector<double>(static_cast<std::size_t>(n))};
  const std::size_t block_bytes = static_cast<std::size_t>(info(t).block_bytes);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint8_t* block = row + block_bytes * static_cast<std::size_t>(i / 256);
    const int e = static_cast<int>(i % 256);
    if (t == DType::kQ6_K) {  // ql[128] at 0, qh[64] at 128, int8 scales[16] at 192, d at 208
      const int h = e / 128, j = e % 128 / 32, l = e % 32;
      const std::uint8_t low_byte = block[64 * h + l + (j % 2) * 32];
      const int low = j < 2 ? low_byte & 0x0F : low_byte >> 4;
      const int high = (block[128 + 32 * h + l] >> (2 * j)) & 3;
      const double d = fp16_to_fp32(read_u16(block + 208));
      terms.scaled[i] = d * static_cast<std::int8_t>(block[192 + e / 16]) * ((low | high << 4) - 32);
      continue;
    }
    // d at 0, dmin at 2, scales[12] at 4; Q5_K: qh[32] at 16 and qs[128] at 48; Q4_K: qs at 16.
    const std::uint8_t* scales = block + 4;
    const std::uint8_t* qs = block + (t == DType::kQ5_K ? 48 : 16);
    const int s = e / 32, c = e / 64, l = e % 32;
    int sc, m;
    if (s < 4) {
      sc = scales[s] & 63;
      m = scales[s + 4] & 63;
    } else {
      sc = (scales[s + 4] & 0x0F) | (scales[s - 4] >> 6) << 4;
      m = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4;
    }
    int q = s % 2 == 0 ? qs[32 * c + l] & 0x0F : qs[32 * c + l] >> 4;
    if (t == DType::kQ5_K) q |= ((block[16 + l] >> s) & 1) << 4;
    terms.scaled[i] = static_cast<double>(fp16_to_fp32(read_u16(block))) * sc * q;
    terms.offset[i] = static_cast<double>(fp16_to_fp32(read_u16(block + 2))) * m;
  }
  return terms;
}

// The fp16 fields of a K block: d and dmin (Q4_K, Q5_K) at 0 and 2, Q6_K's d at 208.
void set_k_scales(DType t, std::uint8_t* block, std::uint16_t d, std::uint16_t dmin) {
  if (t == DType::kQ6_K) {
    std::memcpy(block + 208, &d, 2);
    return;
  }
  std::memcpy(block, &d, 2);
  std::memcpy(block + 2, &dmin, 2);
}

// [rows, cols] of K type t: random bytes (every q, scale and minimum) and random fp16 d, dmin of
// either sign and magnitude up to `max_scale`.
std::vector<std::uint8_t> random_k_matrix(DType t, std::int64_t rows, std::int64_t cols,
                                          std::uint32_t seed, float max_scale = 0.01f) {
  std::vector<std::uint8_t> m(row_bytes(t, cols) * static_cast<std::size_t>(rows));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-max_scale, max_scale);
  for (std::uint8_t& v : m) v = static_cast<std::uint8_t>(byte(rng));
  const std::size_t block_bytes = static_cast<std::size_t>(info(t).block_bytes);
  for (std::size_t b = 0; b < m.size() / block_bytes; ++b) {
    set_k_scales(t, m.data() + b * block_bytes, fp32_to_fp16(scale(rng)), fp32_to_fp16(scale(rng)));
  }
  return m;
}

std::vector<BlockQ8_K> quantized_k(const std::vector<float>& x) {
  std::vector<BlockQ8_K> xq(x.size() / 256);
  scalar::quantize_activation_k(x.data(), xq.data(), static_cast<std::int64_t>(x.size()));
  return xq;
}

std::vector<double> decode_activation_k(const std::vector<BlockQ8_K>& xq) {
  std::vector<double> x;
  for (const BlockQ8_K& b : xq) {
    for (std::int8_t q : b.qs) x.push_back(static_cast<double>(b.d) * q);
  }
  return x;
}

// sum_i (|scaled_i| + |offset_i|) |x_i| per row: the scale of the rounding errors of a K kernel,
// which computes the two terms' sums apart (they may cancel in the weight).
std::vector<double> k_magnitudes(DType t, const std::vector<std::uint8_t>& w, std::int64_t rows,
                                 std::int64_t cols, const std::vector<double>& x) {
  std::vector<double> m(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    const KTerms k = decode_k(t, w.data() + r * row_bytes(t, cols), cols);
    for (std::int64_t i = 0; i < cols; ++i) m[r] += (std::fabs(k.scaled[i]) + std::fabs(k.offset[i])) * std::fabs(x[i]);
  }
  return m;
}

// Rows of K blocks that stress the kernels' ranges: for each fp16 d (zero, subnormal, largest,
// negative) and each fill byte, every byte of the block (q, scales, minimums, high bits) equals
// the fill, then the fp16 fields are set; plus rows of blocks with all-equal q and mixed scales.
std::vector<std::uint8_t> extreme_k_matrix(DType t, std::int64_t cols, std::int64_t& rows) {
  const std::uint16_t kScales[] = {0x0000, 0x0001, 0x03FF, 0x3C00, 0xBC00, 0x7BFF};
  const std::uint8_t kFills[] = {0x00, 0xFF, 0x55, 0xAA, 0x80, 0x7F, 0x0F, 0xF0};
  const std::size_t block_bytes = static_cast<std::size_t>(info(t).block_bytes);
  std::vector<std::uint8_t> w;
  rows = 0;
  for (std::uint16_t d : kScales) {
    for (std::uint16_t dmin : {std::uint16_t{0x0000}, d, std::uint16_t{0x0001}, std::uint16_t{0x7BFF}}) {
      for (std::uint8_t fill : kFills) {
        for (std::int64_t b = 0; b < cols / 256; ++b) {
          std::vector<std::uint8_t> block(block_bytes, fill);
          set_k_scales(t, block.data(), d, dmin);
          w.insert(w.end(), block.begin(), block.end());
        }
        ++rows;
      }
    }
  }
  return w;
}

TEST(KernelsKQuant, BlockLayoutsAreGgmls) {
  EXPECT_EQ(info(DType::kQ4_K).block_size, 256);
  EXPECT_EQ(info(DType::kQ4_K).block_bytes, 144);
  EXPECT_EQ(info(DType::kQ5_K).block_bytes, 176);
  EXPECT_EQ(info(DType::kQ6_K).block_bytes, 210);
  EXPECT_EQ(info(DType::kQ8_K).block_bytes, 292);
  EXPECT_EQ(offsetof(BlockQ5_K, qh), 16u);
  EXPECT_EQ(offsetof(BlockQ5_K, qs), 48u);
  EXPECT_EQ(offsetof(BlockQ6_K, scales), 192u);
  EXPECT_EQ(offsetof(BlockQ6_K, d), 208u);
  EXPECT_EQ(row_bytes(DType::kQ6_K, 4096), 16u * 210u);
  EXPECT_EQ(dtype_from_ggml(12), DType::kQ4_K);
  EXPECT_EQ(dtype_from_ggml(13), DType::kQ5_K);
  EXPECT_EQ(dtype_from_ggml(14), DType::kQ6_K);
  EXPECT_FALSE(dtype_from_ggml(15).has_value());  // Q8_K: activations only
  EXPECT_FALSE(dtype_from_ggml(11).has_value());  // Q3_K: not implemented
  EXPECT_STREQ(to_string(DType::kQ5_K), "Q5_K");
}

TEST(KernelsKQuant, UnpackedScalesMatchGetScaleMin) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 2000; ++trial) {
    std::uint8_t scales[12];
    for (std::uint8_t& s : scales) s = static_cast<std::uint8_t>(rng());
    std::uint8_t unpacked[16];
    unpack_scales_k4(scales, unpacked);
    for (int j = 0; j < 8; ++j) {
      const ScaleMin sm = scale_min_k4(scales, j);
      EXPECT_EQ(unpacked[j], sm.scale) << j;
      EXPECT_EQ(unpacked[8 + j], sm.min) << j;
    }
  }
}

TEST(KernelsKQuant, ScalarDecodesHandMadeBlocks) {
  std::vector<float> out(256);
  // Q4_K: d = 1, dmin = 0.5. Sub-block 0: scale 1, min 2. Sub-block 5: scale 37 = 0b10'0101
  // (low nibble in scales[9], top bits in scales[1] bits 6-7), min 50 = 0b11'0010 (high nibble of
  // scales[9], top bits in scales[5] bits 6-7).
  BlockQ4_K q4{};
  q4.d = 0x3C00;
  q4.dmin = 0x3800;
  q4.scales[0] = 1;
  q4.scales[4] = 2;
  q4.scales[9] = 0x25;
  q4.scales[1] |= 0x80;
  q4.scales[5] |= 0xC0;
  q4.qs[0] = 0x03;        // weight 0 (run 0, low nibble): q = 3
  q4.qs[64 + 7] = 0xB0;   // weight 128 + 32 + 7 = 167 (run 2, high nibble, sub-block 5): q = 11
  scalar::to_float(DType::kQ4_K, &q4, out.data(), 256);
  EXPECT_EQ(out[0], 1.0f * 3 - 0.5f * 2);
  EXPECT_EQ(out[1], -1.0f);            // q = 0 in sub-block 0
  EXPECT_EQ(out[167], 37.0f * 11 - 0.5f * 50);
  EXPECT_EQ(out[160], -25.0f);         // q = 0 in sub-block 5
  EXPECT_EQ(out[135], 0.0f);           // run 2, low nibble 0: sub-block 4, scale and min 0
  // Q5_K: the same scales; weight 100 (run 1, high nibble of qs[36], sub-block 3) takes its fifth
  // bit from bit 3 of qh[4].
  BlockQ5_K q5{};
  q5.d = 0x3C00;
  q5.dmin = 0x3800;
  q5.scales[3] = 5;
  q5.scales[7] = 4;
  q5.qs[32 + 4] = 0x70;
  q5.qh[4] = 0x08;
  scalar::to_float(DType::kQ5_K, &q5, out.data(), 256);
  EXPECT_EQ(out[100], 5.0f * (7 + 16) - 0.5f * 4);
  EXPECT_EQ(out[68], 0.0f);  // run 1 low nibble (sub-block 2: scale and min 0), bit 2: clear
  // Q6_K: d = 0.5 (stored last). Weight 50 = 32 + 18: low 4 bits in ql[32 + 18] & 0x0F, high 2
  // in bits 2-3 of qh[18]; sub-block 3, scale -2.
  BlockQ6_K q6{};
  q6.d = 0x3800;
  q6.scales[3] = -2;
  q6.scales[12] = 127;
  q6.ql[32 + 18] = 0x0A;
  q6.qh[18] = 0x2 << 2;  // q = 0x2A = 42
  // Weight 200 = 128 + 64 + 8: ql[64 + 8] high nibble, qh[32 + 8] bits 4-5; sub-block 12.
  q6.ql[64 + 8] = 0xF0;
  q6.qh[32 + 8] = 0x3 << 4;  // q = 63
  scalar::to_float(DType::kQ6_K, &q6, out.data(), 256);
  EXPECT_EQ(out[50], 0.5f * -2 * (42 - 32));
  EXPECT_EQ(out[200], 0.5f * 127 * (63 - 32));
  EXPECT_EQ(out[201], 0.5f * 127 * -32);
  EXPECT_EQ(out[0], 0.0f);  // scale 0
}

TEST(KernelsKQuant, ToFloatMatchesIndependentDecodingAndEveryPathBitForBit) {
  for (DType t : kKTypes) {
    for (std::int64_t n : {256, 512, 1024}) {
      // Scales of one magnitude, so that the double-precision value rounds to float exactly as
      // the kernels' single rounding does.
      const std::vector<std::uint8_t> row = random_k_matrix(t, 1, n, static_cast<std::uint32_t>(n), 1.0f);
      std::vector<float> expected(static_cast<std::size_t>(n));
      scalar::to_float(t, row.data(), expected.data(), n);
      const KTerms exact = decode_k(t, row.data(), n);
      for (std::int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(expected[i], static_cast<float>(exact.scaled[i] - exact.offset[i]))
            << to_string(t) << " element " << i;
      }
      for (Simd simd : supported_paths()) {
        SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, 1, n));
        std::vector<float> got(expected.size(), -1.0f);
        kernels(t, simd).to_float(row.data(), got.data(), n);
        for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(float_to_bits(got[i]), float_to_bits(expected[i])) << i;
      }
    }
    // Extreme blocks: every path bit for bit against the scalar reference.
    std::int64_t rows = 0;
    const std::vector<std::uint8_t> w = extreme_k_matrix(t, 256, rows);
    std::vector<float> expected(static_cast<std::size_t>(rows * 256)), got(expected.size());
    scalar::to_float(t, w.data(), expected.data(), rows * 256);
    for (Simd simd : supported_paths()) {
      SCOPED_TRACE(std::string(to_string(simd)) + " extreme " + to_string(t));
      kernels(t, simd).to_float(w.data(), got.data(), rows * 256);
      for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(float_to_bits(got[i]), float_to_bits(expected[i])) << "element " << i;
      }
    }
  }
}

TEST(KernelsKQuant, QuantizeActivationEveryPathMatchesScalarBitForBit) {
  const std::int64_t n = 256 * 10;
  std::vector<float> x = random_floats(static_cast<std::size_t>(n), 12);
  // Blocks: ties (max 127 so d = 1, halves everywhere), all zero, tiny, huge, one non-zero
  // value, negative maxima; the rest N(0, 1).
  for (int j = 0; j < 256; ++j) x[j] = j == 0 ? 127.0f : static_cast<float>(j % 64) - 31.5f;
  for (int j = 256; j < 512; ++j) x[j] = 0.0f;
  for (int j = 512; j < 768; ++j) x[j] *= 1e-30f;
  for (int j = 768; j < 1024; ++j) x[j] *= 1e30f;
  for (int j = 1024; j < 1280; ++j) x[j] = j == 1100 ? -0.3f : 0.0f;
  for (int j = 1280; j < 1536; ++j) x[j] = -std::fabs(x[j]);
  std::vector<BlockQ8_K> expected(static_cast<std::size_t>(n / 256));
  scalar::quantize_activation_k(x.data(), expected.data(), n);
  EXPECT_EQ(expected[0].d, 1.0f);
  EXPECT_EQ(expected[0].qs[1], -30);  // -30.5 rounds to even
  EXPECT_EQ(expected[0].qs[2], -30);  // -29.5 too
  EXPECT_EQ(expected[1].d, 0.0f);
  EXPECT_EQ(expected[4].qs[1100 - 1024], -127);
  for (const BlockQ8_K& b : expected) {
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b.qs[16 * j + l];
      EXPECT_EQ(b.bsums[j], sum);
    }
  }
  for (Simd simd : supported_paths()) {
    SCOPED_TRACE(to_string(simd));
    std::vector<BlockQ8_K> got(expected.size());
    std::memset(got.data(), 0x55, got.size() * sizeof(BlockQ8_K));
    quantize_activation_k(x.data(), got.data(), n, simd);
    for (std::size_t b = 0; b < expected.size(); ++b) {
      EXPECT_EQ(float_to_bits(got[b].d), float_to_bits(expected[b].d)) << "block " << b;
      EXPECT_EQ(std::memcmp(got[b].qs, expected[b].qs, 256), 0) << "block " << b;
      EXPECT_EQ(std::memcmp(got[b].bsums, expected[b].bsums, 32), 0) << "block " << b;
      for (std::int8_t q : got[b].qs) EXPECT_NE(q, -128) << "block " << b;
    }
  }
}

TEST(KernelsKQuant, ScalarDotsMatchDoublePrecision) {
  for (DType t : kKTypes) {
    const std::int64_t rows = 5, cols = 768;
    SCOPED_TRACE(shape_name(t, rows, cols));
    const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, 3);
    const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), 4);
    const std::vector<BlockQ8_K> xq = quantized_k(x);
    const std::vector<double> xqd = decode_activation_k(xq);
    const std::vector<double> xd = to_double(x);
    const std::vector<double> mag_q = k_magnitudes(t, w, rows, cols, xqd);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::uint8_t* row = w.data() + r * row_bytes(t, cols);
      const KTerms k = decode_k(t, row, cols);
      std::vector<float> wf(static_cast<std::size_t>(cols));
      scalar::to_float(t, row, wf.data(), cols);
      double exact = 0, magnitude = 0, exact_q = 0;
      for (std::int64_t i = 0; i < cols; ++i) {
        exact += static_cast<double>(wf[i]) * xd[i];
        magnitude += std::fabs(static_cast<double>(wf[i]) * xd[i]);
        exact_q += (k.scaled[i] - k.offset[i]) * xqd[i];
      }
      EXPECT_NEAR(scalar::dot(t, row, x.data(), cols), exact, order_tolerance(cols) * magnitude);
      EXPECT_NEAR(scalar::dot_q8k(t, row, xq.data(), cols), exact_q, order_tolerance(cols) * mag_q[r]);
    }
  }
}

TEST(KernelsKQuant, EveryPathMatchesScalarOnRandomMatrices) {
  for (Simd simd : supported_paths()) {
    for (DType t : kKTypes) {
      const TypeKernels& k = kernels(t, simd);
      const TypeKernels& ref = kernels(t, Simd::kScalar);
      for (std::int64_t cols : {256, 512, 768, 1280}) {
        for (std::int64_t rows : kRowCounts) {
          SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
          const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols);
          const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, seed);
          const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), seed + 1);
          std::vector<float> y(static_cast<std::size_t>(rows), -1.0f), y_ref(y.size());
          k.gemv_f32(w.data(), rows, cols, x.data(), y.data());
          ref.gemv_f32(w.data(), rows, cols, x.data(), y_ref.data());
          expect_close(y, y_ref, k_magnitudes(t, w, rows, cols, to_double(x)), cols);
          const std::vector<BlockQ8_K> xq = quantized_k(x);
          k.gemv(w.data(), rows, cols, xq.data(), y.data());
          ref.gemv(w.data(), rows, cols, xq.data(), y_ref.data());
          expect_close(y, y_ref, k_magnitudes(t, w, rows, cols, decode_activation_k(xq)), cols);
        }
      }
    }
  }
}

TEST(KernelsKQuant, EveryPathMatchesScalarOnExtremeBlocks) {
  const std::int64_t cols = 512;
  // Activations: a huge block (q = +-127 with d = 65504 / 127) and one of alternating signs.
  std::vector<float> x(static_cast<std::size_t>(cols));
  for (std::int64_t i = 0; i < 256; ++i) x[i] = i % 3 == 0 ? -65504.0f : 65504.0f;
  for (std::int64_t i = 256; i < 512; ++i) x[i] = i % 2 ? -3.0f : 3.0f;
  const std::vector<BlockQ8_K> xq = quantized_k(x);
  for (DType t : kKTypes) {
    std::int64_t rows = 0;
    const std::vector<std::uint8_t> w = extreme_k_matrix(t, cols, rows);
    for (Simd simd : supported_paths()) {
      SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
      const TypeKernels& k = kernels(t, simd);
      const TypeKernels& ref = kernels(t, Simd::kScalar);
      std::vector<float> y(static_cast<std::size_t>(rows)), y_ref(y.size());
      k.gemv(w.data(), rows, cols, xq.data(), y.data());
      ref.gemv(w.data(), rows, cols, xq.data(), y_ref.data());
      expect_close(y, y_ref, k_magnitudes(t, w, rows, cols, decode_activation_k(xq)), cols);
      k.gemv_f32(w.data(), rows, cols, x.data(), y.data());
      ref.gemv_f32(w.data(), rows, cols, x.data(), y_ref.data());
      expect_close(y, y_ref, k_magnitudes(t, w, rows, cols, to_double(x)), cols);
    }
  }
}

TEST(KernelsKQuant, EveryPathMatchesScalarOnMatricesLargeEnoughToPrefetch) {
  const std::int64_t cols = 1024;
  for (DType t : kKTypes) {
    const auto rows = static_cast<std::int64_t>((std::size_t{4} << 20) / row_bytes(t, cols) + 7);
    const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, 31);
    const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), 32);
    const std::vector<BlockQ8_K> xq = quantized_k(x);
    const std::vector<double> mag_q = k_magnitudes(t, w, rows, cols, decode_activation_k(xq));
    const std::vector<double> mag_f = k_magnitudes(t, w, rows, cols, to_double(x));
    std::vector<float> y_ref(static_cast<std::size_t>(rows)), y_ref_f(y_ref.size());
    kernels(t, Simd::kScalar).gemv(w.data(), rows, cols, xq.data(), y_ref.data());
    kernels(t, Simd::kScalar).gemv_f32(w.data(), rows, cols, x.data(), y_ref_f.data());
    for (Simd simd : supported_paths()) {
      SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
      std::vector<float> y(y_ref.size(), -1.0f);
      kernels(t, simd).gemv(w.data(), rows, cols, xq.data(), y.data());
      expect_close(y, y_ref, mag_q, cols);
      kernels(t, simd).gemv_f32(w.data(), rows, cols, x.data(), y.data());
      expect_close(y, y_ref_f, mag_f, cols);
    }
  }
}

// Two tokens of 512 values: a huge block (+-65504), one of alternating signs, then their
// negations (q = -127 .. 127 in every lane once quantized).
std::vector<float> extreme_tokens() {
  std::vector<float> x(1024);
  for (std::size_t i = 0; i < 256; ++i) x[i] = i % 3 == 0 ? -65504.0f : 65504.0f;
  for (std::size_t i = 256; i < 512; ++i) x[i] = i % 2 ? -3.0f : 3.0f;
  for (std::size_t i = 512; i < 1024; ++i) x[i] = -x[i - 512];
  return x;
}

// gemm for the K types, on random and extreme blocks: each token gets what gemv gives it alone.
TEST(KernelsKQuant, GemmGivesEachTokenWhatItsGemvGivesItAlone) {
  int paths = 0;
  for (Simd simd : supported_paths()) {
    for (DType t : kKTypes) {
      const TypeKernels& k = kernels(t, simd);
      if (k.gemm == nullptr) continue;
      ++paths;
      EXPECT_EQ(k.prepare, kernels(DType::kQ4_K, simd).prepare) << "one preparation for all";
      const auto magnitudes_of = [&](const std::vector<std::uint8_t>& w, std::int64_t rows,
                                     std::int64_t cols) {
        return [&w, t, rows, cols](const std::vector<BlockQ8_K>& token) {
          return k_magnitudes(t, w, rows, cols, decode_activation_k(token));
        };
      };
      for (std::int64_t cols : {256, 768}) {
        for (std::int64_t rows : kRowCounts) {
          for (std::int64_t n_tokens : {1, 2, 7, 8, 9, 17}) {
            SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols) + ", " +
                         std::to_string(n_tokens) + " tokens");
            const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols + n_tokens * 7);
            const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, seed);
            const std::vector<BlockQ8_K> xq =
                quantized_k(random_floats(static_cast<std::size_t>(n_tokens * cols), seed + 1));
            expect_gemm_equals_gemv(k, kernels(t, Simd::kScalar), w, rows, cols, xq, n_tokens,
                                    magnitudes_of(w, rows, cols));
          }
        }
      }
      // Extreme blocks against extreme tokens.
      const std::int64_t cols = 512;
      std::int64_t rows = 0;
      const std::vector<std::uint8_t> w = extreme_k_matrix(t, cols, rows);
      SCOPED_TRACE(std::string(to_string(simd)) + " extreme " + shape_name(t, rows, cols));
      expect_gemm_equals_gemv(k, kernels(t, Simd::kScalar), w, rows, cols,
                              quantized_k(extreme_tokens()), 2,
                              magnitudes_of(w, rows, cols));
    }
  }
  if (paths == 0) GTEST_SKIP() << "no path on this CPU has a K gemm kernel";
}

// The K-quants' interleaved copies (BlockQ4_Kx16, BlockQ5_Kx16, BlockQ6_Kx16), on random and
// extreme blocks: every path is its scalar twin bit for bit and each token gets what it gets
// alone; the twin is within the gemv tolerance of the stored rows times the same 8-bit
// activation.
TEST(KernelsKQuant, InterleavedCopiesMatchTheirTwinsAndTheStoredRows) {
  for (Simd simd : supported_paths()) {
    for (DType t : kKTypes) {
      const TypeKernels& k = kernels(t, simd);
      const auto magnitudes_of = [t](const std::vector<std::uint8_t>& w, std::int64_t rows,
                                     std::int64_t cols) {
        return [&w, t, rows, cols](const std::vector<BlockQ8_0>& token) {
          return k_magnitudes(t, w, rows, cols, decode_activation(token));
        };
      };
      for (std::int64_t cols : {256, 768}) {
        for (std::int64_t rows : kRowCounts) {
          for (std::int64_t n_tokens : {1, 2, 7, 8, 9, 17}) {
            SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
            const auto seed = static_cast<std::uint32_t>(rows * 1000 + cols + n_tokens * 7);
            const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, seed);
            const std::vector<BlockQ8_0> xq =
                quantized(random_floats(static_cast<std::size_t>(n_tokens * cols), seed + 1));
            const auto mags = magnitudes_of(w, rows, cols);
            expect_interleaved_matches(k, t, w, rows, cols, xq, n_tokens, 0, rows, mags);
            if (rows > 4) {
              expect_interleaved_matches(k, t, w, rows, cols, xq, n_tokens, 3, rows - 1, mags);
            }
          }
        }
      }
      // Extreme blocks against extreme tokens.
      const std::int64_t cols = 512;
      std::int64_t rows = 0;
      const std::vector<std::uint8_t> w = extreme_k_matrix(t, cols, rows);
      SCOPED_TRACE(std::string(to_string(simd)) + " extreme " + shape_name(t, rows, cols));
      expect_interleaved_matches(k, t, w, rows, cols, quantized(extreme_tokens()), 2, 0, rows,
                                 magnitudes_of(w, rows, cols));
    }
  }
}

TEST(KernelsKQuant, InterleavedQ4_KLayoutHoldsEachRowsBlocks) {
  // Independent of the kernels: every q, scale and minimum of every row, read back from the
  // layout, against the stored blocks; the padding rows are zero.
  const DType t = DType::kQ4_K;
  const std::int64_t rows = 19, cols = 512, n_blocks = 2;
  const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, 5);
  std::vector<std::uint8_t> wi(interleaved_bytes(t, rows, cols));
  ASSERT_EQ(wi.size(), 32 * row_bytes(t, cols));  // two groups, the second padded
  interleave(t, w.data(), rows, cols, wi.data());
  const auto* groups = reinterpret_cast<const BlockQ4_Kx16*>(wi.data());
  for (std::int64_t r = 0; r < 32; ++r) {
    for (std::int64_t b = 0; b < n_blocks; ++b) {
      const BlockQ4_Kx16& o = groups[r / 16 * n_blocks + b];
      const int lane = static_cast<int>(r % 16);
      const BlockQ4_K zero{};
      const BlockQ4_K& in =
          r < rows ? reinterpret_cast<const BlockQ4_K*>(w.data())[r * n_blocks + b] : zero;
      ASSERT_EQ(o.d[lane], in.d);
      ASSERT_EQ(o.dmin[lane], in.dmin);
      for (int j = 0; j < 8; ++j) {
        const ScaleMin expected = scale_min_k4(in.scales, j), got = scale_min(o, j, lane);
        ASSERT_EQ(got.scale, expected.scale) << "row " << r << " sub-block " << j;
        ASSERT_EQ(got.min, expected.min) << "row " << r << " sub-block " << j;
        for (int l = 0; l < 32; ++l) {  // the nibble of element l of sub-block j
          const std::uint8_t stored = in.qs[32 * (j / 2) + l];
          const std::uint8_t copied = o.qs[j / 2][l / 4][4 * lane + l % 4];
          ASSERT_EQ(j % 2 == 0 ? copied & 0x0F : copied >> 4,
                    j % 2 == 0 ? stored & 0x0F : stored >> 4);
        }
      }
    }
  }
}

// Q5_K's and Q6_K's layouts, read back with q_of (whose Q4_K part the test above checks bit by
// bit) against the stored blocks' q (scalar::k_block_q); the padding rows are zero.
TEST(KernelsKQuant, InterleavedQ5_KAndQ6_KLayoutsHoldEachRowsBlocks) {
  const std::int64_t rows = 19, cols = 512, n_blocks = 2;
  for (DType t : {DType::kQ5_K, DType::kQ6_K}) {
    SCOPED_TRACE(to_string(t));
    const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, 6);
    std::vector<std::uint8_t> wi(interleaved_bytes(t, rows, cols));
    ASSERT_EQ(wi.size(), 32 * row_bytes(t, cols));
    interleave(t, w.data(), rows, cols, wi.data());
    for (std::int64_t r = 0; r < 32; ++r) {
      for (std::int64_t b = 0; b < n_blocks; ++b) {
        const int lane = static_cast<int>(r % 16);
        const std::int64_t at = r / 16 * n_blocks + b;  // the block column's index
        int q[kQK_K] = {};  // the stored q; zero in the padding
        if (t == DType::kQ5_K) {
          const BlockQ5_Kx16& o = reinterpret_cast<const BlockQ5_Kx16*>(wi.data())[at];
          const BlockQ5_K zero{};
          const BlockQ5_K& in =
              r < rows ? reinterpret_cast<const BlockQ5_K*>(w.data())[r * n_blocks + b] : zero;
          std::uint8_t stored[kQK_K];
          scalar::k_block_q(in, stored);
          std::copy(stored, stored + kQK_K, q);
          ASSERT_EQ(o.q4.d[lane], in.d);
          ASSERT_EQ(o.q4.dmin[lane], in.dmin);
          for (int j = 0; j < 8; ++j) {
            ASSERT_EQ(scale_min(o.q4, j, lane).scale, scale_min_k4(in.scales, j).scale);
            ASSERT_EQ(scale_min(o.q4, j, lane).min, scale_min_k4(in.scales, j).min);
            for (int l = 0; l < 32; ++l) ASSERT_EQ(q_of(o, j, l, lane), q[32 * j + l]);
          }
        } else {
          const BlockQ6_Kx16& o = reinterpret_cast<const BlockQ6_Kx16*>(wi.data())[at];
          if (r < rows) {
            const BlockQ6_K& in = reinterpret_cast<const BlockQ6_K*>(w.data())[r * n_blocks + b];
            std::int8_t stored[kQK_K];
            scalar::k_block_q(in, stored);
            for (int i = 0; i < kQK_K; ++i) q[i] = stored[i] + 32;
            ASSERT_EQ(o.d[lane], in.d);
            for (int s = 0; s < 16; ++s) ASSERT_EQ(o.scales[s][lane], in.scales[s]);
          } else {
            ASSERT_EQ(o.d[lane], 0);
            for (int s = 0; s < 16; ++s) ASSERT_EQ(o.scales[s][lane], 0);
          }
          for (int j = 0; j < 8; ++j) {
            for (int l = 0; l < 32; ++l) ASSERT_EQ(q_of(o, j, l, lane), q[32 * j + l]);
          }
        }
      }
    }
  }
}

TEST(KernelsKQuant, IntegerPathStaysWithinTheActivationQuantizationError) {
  // Q8_K keeps d_x as a float, so |x - d_x q| <= d_x / 2 (and a little rounding) per element.
  const std::int64_t rows = 9, cols = 1024;
  const std::vector<float> x = random_floats(static_cast<std::size_t>(cols), 21);
  const std::vector<BlockQ8_K> xq = quantized_k(x);
  for (DType t : kKTypes) {
    const std::vector<std::uint8_t> w = random_k_matrix(t, rows, cols, 22);
    for (Simd simd : supported_paths()) {
      SCOPED_TRACE(std::string(to_string(simd)) + " " + shape_name(t, rows, cols));
      const TypeKernels& k = kernels(t, simd);
      std::vector<float> y_int(static_cast<std::size_t>(rows)), y_float(y_int.size());
      k.gemv(w.data(), rows, cols, xq.data(), y_int.data());
      k.gemv_f32(w.data(), rows, cols, x.data(), y_float.data());
      const std::vector<double> magnitude = k_magnitudes(t, w, rows, cols, to_double(x));
      for (std::int64_t r = 0; r < rows; ++r) {
        std::vector<float> wr(static_cast<std::size_t>(cols));
        scalar::to_float(t, w.data() + r * row_bytes(t, cols), wr.data(), cols);
        double bound = 2 * order_tolerance(cols) * magnitude[r];
        for (std::int64_t b = 0; b < cols / 256; ++b) {
          double w_abs = 0;
          for (std::int64_t i = 256 * b; i < 256 * (b + 1); ++i) w_abs += std::fabs(wr[i]);
          bound += 0.51 * xq[b].d * w_abs;
        }
        EXPECT_NEAR(y_int[r], y_float[r], bound) << "row " << r;
      }
    }
  }
}

// RMS(dequantized - x) / RMS(x) of from_float on n values of x.
double relative_rms_error(DType t, const std::vector<float>& x) {
  const auto n = static_cast<std::int64_t>(x.size());
  std::vector<std::uint8_t> q(row_bytes(t, n));
  scalar::from_float(t, x.data(), q.data(), n);
  std::vector<float> back(x.size());
  scalar::to_float(t, q.data(), back.data(), n);
  double err = 0, ref = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_TRUE(std::isfinite(back[i])) << i;
    err += (static_cast<double>(back[i]) - x[i]) * (static_cast<double>(back[i]) - x[i]);
    ref += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(err / ref);
}

TEST(KernelsKQuant, FromFloatRoundTripsWithinTheTypesPrecision) {
  // Measured on these inputs (N(0, 0.02^2), and the same with a mean shifted per 32 values and
  // every 997th value 8x larger): Q4_K 0.071 / 0.060, Q5_K 0.036 / 0.030, Q6_K 0.018 / 0.019,
  // each about half the last type's, as one more bit should give. The bounds leave ~30% room.
  struct Case {
    DType t;
    double bound;
  };
  const Case kCases[] = {{DType::kQ4_K, 0.1}, {DType::kQ5_K, 0.05}, {DType::kQ6_K, 0.025}};
  const std::size_t n = 256 * 64;
  std::vector<float> gaussian = random_floats(n, 41, 0.02f);
  std::vector<float> skewed = random_floats(n, 42, 0.02f);
  std::mt19937 rng(43);
  std::uniform_real_distribution<float> shift(-0.03f, 0.03f);
  for (std::size_t i = 0; i < n; i += 32) {
    const float s = shift(rng);
    for (std::size_t j = i; j < i + 32; ++j) skewed[j] += s;
  }
  for (std::size_t i = 0; i < n; i += 997) skewed[i] *= 8.0f;
  for (const Case& c : kCases) {
    const double e1 = relative_rms_error(c.t, gaussian);
    const double e2 = relative_rms_error(c.t, skewed);
    std::printf("[ measured ] %s round trip: relative RMS error %.4f (gaussian), %.4f (skewed)\n",
                to_string(c.t), e1, e2);
    EXPECT_LT(e1, c.bound) << to_string(c.t);
    EXPECT_LT(e2, c.bound) << to_string(c.t);
  }
}

TEST(KernelsKQuant, FromFloatHandlesZeroAndConstantBlocks) {
  for (DType t : kKTypes) {
    SCOPED_TRACE(to_string(t));
    std::vector<float> x(512, 0.0f);
    for (std::size_t i = 256; i < 512; ++i) x[i] = 0.75f;  // all equal: the minimum carries it
    std::vector<std::uint8_t> q(row_bytes(t, 512));
    scalar::from_float(t, x.data(), q.data(), 512);
    std::vector<float> back(512);
    scalar::to_float(t, q.data(), back.data(), 512);
    for (std::size_t i = 0; i < 256; ++i) EXPECT_EQ(back[i], 0.0f) << i;
    for (std::size_t i = 256; i < 512; ++i) EXPECT_NEAR(back[i], 0.75f, 0.75f * 0.01f) << i;
  }
}

// One real block of each type from llama.cpp's files, against the F32 file's same weights: an
// independent check that kvlm reads the layouts as llama.cpp writes them.
TEST(KernelsKQuant, DecodesLlamaCppBlocksCloseToTheFloatWeights) {
  KVLM_REQUIRE_MODEL(quantized_path, "tinygqa/tinygqa-Q4_K_M.gguf");
  KVLM_REQUIRE_MODEL(float_path, "tinygqa/tinygqa-F32.gguf");
  const gguf::GgufFile quantized = gguf::GgufFile::open(quantized_path);
  const gguf::GgufFile reference = gguf::GgufFile::open(float_path);
  struct Case {
    const char* tensor;
    DType t;
    double max_error;  // of a block's range (max - min of its float weights)
  };
  for (const Case& c : {Case{"token_embd.weight", DType::kQ4_K, 0.1}, Case{"output.weight", DType::kQ6_K, 0.025}}) {
    SCOPED_TRACE(c.tensor);
    const gguf::TensorInfo* q = quantized.find_tensor(c.tensor);
    const gguf::TensorInfo* f = reference.find_tensor(c.tensor);
    ASSERT_NE(q, nullptr);
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(q->dtype, c.t);
    ASSERT_EQ(f->dtype, DType::kF32);
    ASSERT_EQ(q->ne, f->ne);
    const auto cols = static_cast<std::int64_t>(q->ne[0]);
    const std::int64_t rows = 4;
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto* row = static_cast<const std::uint8_t*>(q->data) + r * row_bytes(c.t, cols);
      std::vector<float> got(static_cast<std::size_t>(cols)), want(got.size());
      scalar::to_float(c.t, row, got.data(), cols);
      std::memcpy(want.data(), static_cast<const float*>(f->data) + r * cols, want.size() * sizeof(float));
      for (Simd simd : supported_paths()) {
        std::vector<float> other(got.size());
        kernels(c.t, simd).to_float(row, other.data(), cols);
        EXPECT_EQ(std::memcmp(other.data(), got.data(), got.size() * sizeof(float)), 0) << to_string(simd);
      }
      for (std::int64_t b = 0; b < cols / 256; ++b) {
        const auto first = want.begin() + b * 256;
        const auto [lo, hi] = std::minmax_element(first, first + 256);
        const double range = static_cast<double>(*hi) - *lo;
        double worst = 0, err2 = 0, ref2 = 0;
        for (std::int64_t i = 256 * b; i < 256 * (b + 1); ++i) {
          ASSERT_TRUE(std::isfinite(got[i])) << i;
          const double diff = static_cast<double>(got[i]) - want[i];
          worst = std::max(worst, std::fabs(diff));
          err2 += diff * diff;
          ref2 += static_cast<double>(want[i]) * want[i];
        }
        EXPECT_LE(worst, c.max_error * range) << "row " << r << " block " << b;
        EXPECT_LT(std::sqrt(err2 / ref2), 4 * c.max_error) << "row " << r << " block " << b;
      }
    }
  }
}

// --- Dispatch ----------------------------------------------------------------------------------

TEST(KernelsDispatch, ChooseSimdHonoursKvlmSimdUpToTheCpu) {
  EXPECT_EQ(choose_simd(nullptr, Simd::kAvx512), Simd::kAvx512);
  EXPECT_EQ(choose_simd(nullptr, Simd::kScalar), Simd::kScalar);
  EXPECT_EQ(choose_simd("scalar", Simd::kAvx512), Simd::kScalar);
  EXPECT_EQ(choose_simd("avx2", Simd::kAvx512), Simd::kAvx2);
  EXPECT_EQ(choose_simd("avx512", Simd::kAvx512), Simd::kAvx512);
  EXPECT_EQ(choose_simd("avx512", Simd::kAvx2), Simd::kAvx2);    // capped at the CPU
  EXPECT_EQ(choose_simd("avx2", Simd::kScalar), Simd::kScalar);  // capped at the CPU
  EXPECT_EQ(choose_simd("", Simd::kAvx2), Simd::kAvx2);          // unknown: ignored
  EXPECT_EQ(choose_simd("AVX2", Simd::kAvx512), Simd::kAvx512);
  EXPECT_EQ(choose_simd("avx", Simd::kAvx512), Simd::kAvx512);
  EXPECT_EQ(choose_simd("sse", Simd::kAvx2), Simd::kAvx2);
}

TEST(KernelsDispatch, ActivePathIsSupportedAndTablesAreComplete) {
  EXPECT_TRUE(simd_supported(Simd::kScalar));
  EXPECT_TRUE(simd_supported(detected_simd()));
  EXPECT_TRUE(simd_supported(active_simd()));
  EXPECT_LE(active_simd(), detected_simd());
  if (simd_supported(Simd::kAvx512)) {
    EXPECT_TRUE(simd_supported(Simd::kAvx2));
  }
  for (Simd simd : supported_paths()) {
    for (DType t : kAllTypes) {
      const TypeKernels& k = kernels(t, simd);
      // The quantized types decode with 8-bit activations, the float ones with floats (kernels.hpp).
      EXPECT_EQ(k.decode_activation, is_quantized(t) ? DType::kQ8_0 : DType::kF32)
          << to_string(t);
      EXPECT_NE(k.gemv, nullptr);
      EXPECT_NE(k.gemv_f32, nullptr);
      EXPECT_NE(k.to_float, nullptr);
    }
  }
  for (Simd simd : supported_paths()) {
    for (DType t : kKTypes) {
      const TypeKernels& k = kernels(t, simd);
      // Measured: the integer gemv runs 3 to 4 times faster than the float one (kernels.hpp).
      EXPECT_EQ(k.decode_activation, DType::kQ8_K) << to_string(t);
      EXPECT_NE(k.gemv, nullptr);
      EXPECT_NE(k.gemv_f32, nullptr);
      EXPECT_NE(k.to_float, nullptr);
    }
  }
  EXPECT_THROW(kernels(DType::kQ8_K, Simd::kScalar), Error);  // not a weight type
  EXPECT_EQ(&kernels(DType::kQ4_0), &kernels(DType::kQ4_0, active_simd()));
  try {
    kernels(static_cast<DType>(3), Simd::kScalar);  // ggml's Q4_1: not implemented
    FAIL() << "expected kvlm::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
  for (Simd simd : {Simd::kAvx2, Simd::kAvx512}) {
    if (simd_supported(simd)) continue;
    EXPECT_THROW(kernels(DType::kF32, simd), Error) << to_string(simd);
  }
}

}  // namespace
}  // namespace kvlm::kernels
