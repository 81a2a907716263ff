// kernels: the scalar reference against hand-computed values and double precision, and every
// SIMD path this CPU has against the scalar reference: gemv and gemv_f32 within a named
// tolerance, to_float and quantize_activation bit for bit, on random and extreme blocks. Also the
// fp16 conversions against the hardware's, and the KVLM_SIMD choice.

#include "kvlm/kernels/kernels.hpp"

#include <gtest/gtest.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"

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
      // Measured: only Q4_0 decodes faster with 8-bit activations (kernels.hpp).
      EXPECT_EQ(k.decode_activation, t == DType::kQ4_0 ? DType::kQ8_0 : DType::kF32)
          << to_string(t);
      EXPECT_NE(k.gemv, nullptr);
      EXPECT_NE(k.gemv_f32, nullptr);
      EXPECT_NE(k.to_float, nullptr);
    }
  }
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
