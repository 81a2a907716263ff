// ops: every op against a plain loop in double precision, plus the identities RoPE must keep
// (each pair's norm; q.k depends on positions only through their difference).

#include "kvlm/ops.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kvlm/detail/parallel.hpp"
#include "kvlm/kernels/scalar.hpp"
#include "kvlm/matmul.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {
namespace {

// rms_norm: one float sum of squares over dim values (relative error ~ dim * 2^-24 at worst,
// about 4e-6 for dim 67), then one multiply per element; outputs are O(1).
constexpr double kNormTolerance = 1e-5;
// matmul: each output is a float dot product of length `in`. The error is bounded relative to
// sum |x_i w_i| by roughly sqrt(in) * 2^-24 for the summation orders Eigen uses (< 2e-6 for
// in <= 1000); 1e-5 leaves room without hiding a wrong element, which is off by O(1).
constexpr double kMatmulRelTolerance = 1e-5;
// rope: the table's cos/sin are rounded once from double (half an ulp, 6e-8) and each output is
// two float products and a sum of O(1) values, so errors are a few 1e-7.
constexpr double kRopeTolerance = 2e-6;
// softmax: float exp (about 1 ulp) and a float sum of n terms (n * 2^-24 at worst); outputs <= 1.
constexpr double kSoftmaxTolerance = 1e-6;
// silu_mul: float exp and a division, relative error a few ulp of the result.
constexpr double kSiluRelTolerance = 1e-6;

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float std_dev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, std_dev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

Tensor<float> random_tensor(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  Tensor<float> t({rows, cols});
  const std::vector<float> v = random_floats(static_cast<std::size_t>(rows * cols), seed);
  std::copy(v.begin(), v.end(), t.data());
  return t;
}

// --- rms_norm ---------------------------------------------------------------------------------

TEST(Ops, RmsNormMatchesPlainLoop) {
  const std::int64_t n_tokens = 5, dim = 67;
  const float eps = 1e-5f;
  const Tensor<float> x = random_tensor(n_tokens, dim, 1);
  const std::vector<float> w = random_floats(dim, 2);
  Tensor<float> out({n_tokens, dim});
  rms_norm(x.view(), TensorView<const float>(w.data(), {dim}), eps, out.view());
  for (std::int64_t t = 0; t < n_tokens; ++t) {
    double ss = 0.0;
    for (std::int64_t i = 0; i < dim; ++i) ss += double{x.view().row(t)[i]} * x.view().row(t)[i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (std::int64_t i = 0; i < dim; ++i) {
      EXPECT_NEAR(out.view().row(t)[i], x.view().row(t)[i] * inv * w[i], kNormTolerance)
          << "token " << t << " index " << i;
    }
  }
}

TEST(Ops, RmsNormInPlace) {
  const std::int64_t n_tokens = 3, dim = 16;
  Tensor<float> x = random_tensor(n_tokens, dim, 3);
  Tensor<float> expected({n_tokens, dim});
  const std::vector<float> w(dim, 1.5f);
  const TensorView<const float> wv(w.data(), {dim});
  rms_norm(x.view(), wv, 1e-6f, expected.view());
  rms_norm(x.view(), wv, 1e-6f, x.view());  // out aliases x, as documented
  for (std::int64_t i = 0; i < x.size(); ++i) EXPECT_EQ(x.data()[i], expected.data()[i]);
}

// --- matmul -----------------------------------------------------------------------------------

struct MatmulCase {
  std::int64_t n_tokens, in, out;
};

void PrintTo(const MatmulCase& c, std::ostream* os) {
  *os << "{n_tokens " << c.n_tokens << ", in " << c.in << ", out " << c.out << "}";
}

class OpsMatmul : public ::testing::TestWithParam<std::tuple<MatmulCase, int>> {};

TEST_P(OpsMatmul, MatchesPlainLoop) {
  const auto [c, n_threads] = GetParam();
  const Tensor<float> x = random_tensor(c.n_tokens, c.in, 10);
  const Tensor<float> w = random_tensor(c.out, c.in, 11);
  const WeightView wv{DType::kF32, c.out, c.in, w.data()};
  // y sits between two guard rows, so a write outside [n_tokens, out] shows.
  constexpr float kGuard = -12345.0f;
  Tensor<float> y_buffer({c.n_tokens + 2, c.out});
  std::fill(y_buffer.data(), y_buffer.data() + y_buffer.size(), kGuard);
  const TensorView<float> y = y_buffer.view().rows_slice(1, c.n_tokens);
  MatmulScratch scratch(c.n_tokens, c.in, n_threads);
  ThreadPool threads(n_threads);
  matmul(x.view(), wv, y, scratch, threads);

  for (std::int64_t t = 0; t < c.n_tokens; ++t) {
    for (std::int64_t r = 0; r < c.out; ++r) {
      double sum = 0.0, magnitude = 0.0;
      for (std::int64_t k = 0; k < c.in; ++k) {
        const double p = double{x.view().row(t)[k]} * w.view().row(r)[k];
        sum += p;
        magnitude += std::abs(p);
      }
      ASSERT_NEAR(y.row(t)[r], sum, kMatmulRelTolerance * magnitude)
          << "token " << t << " row " << r << " of [" << c.n_tokens << ", " << c.in << "] x ["
          << c.out << ", " << c.in << "]^T, " << n_threads << " threads";
    }
  }
  for (std::int64_t r = 0; r < c.out; ++r) {
    EXPECT_EQ(y_buffer.view().row(0)[r], kGuard);
    EXPECT_EQ(y_buffer.view().row(c.n_tokens + 1)[r], kGuard);
  }
}

// Weights of every stored type: the product must equal the plain loop over the exactly
// dequantized weights. Up to MatmulScratch::kMaxGemvTokens tokens it runs the gemv kernels,
// which for Q4_0 take the activations rounded to 8-bit blocks, and so do the gemm kernels
// (Q4_0 and Q8_0 on paths that have them) beyond: each x_i moves by at most half a step
// d = amax / 127 of its block (plus the float16 rounding of d, 127 * 2^-11 d), so the error is
// bounded by sum_i |w_i| * 0.57 d. BF16 beyond kMaxGemvTokens, on a CPU with the BF16 GEMM,
// takes the activations rounded to bfloat16: each x_i moves by at most 2^-9 |x_i|, so the error
// is within 2^-9 sum_i |w_i x_i|. Every other case computes in float: kMatmulRelTolerance.
class OpsTypedMatmul : public ::testing::TestWithParam<std::tuple<DType, int, int>> {};

TEST_P(OpsTypedMatmul, MatchesPlainLoopOverDequantizedWeights) {
  const auto [type, n_tokens, n_threads] = GetParam();
  const std::int64_t in = 256, out = 517;
  const Tensor<float> x = random_tensor(n_tokens, in, 20);
  const Tensor<float> w = random_tensor(out, in, 21);
  std::vector<std::byte> stored(static_cast<std::size_t>(out) * row_bytes(type, in));
  for (std::int64_t r = 0; r < out; ++r) {
    kernels::scalar::from_float(type, w.view().row(r), stored.data() + r * row_bytes(type, in), in);
  }
  const WeightView wv{type, out, in, stored.data()};
  Tensor<float> y({n_tokens, out});
  MatmulScratch scratch(n_tokens, in, n_threads);
  ThreadPool threads(n_threads);
  matmul(x.view(), wv, y.view(), scratch, threads);

  const kernels::TypeKernels& k = kernels::kernels(type);
  const bool int8_activations = n_tokens <= MatmulScratch::kMaxGemvTokens
                                    ? k.decode_activation == DType::kQ8_0
                                    : k.gemm != nullptr;
  const bool bf16_activations = type == DType::kBF16 && n_tokens > MatmulScratch::kMaxGemvTokens &&
                                kernels::pair_panel_kernels() != nullptr;
  std::vector<float> row(in);
  for (std::int64_t r = 0; r < out; ++r) {
    kernels::scalar::to_float(type, wv.row(r), row.data(), in);
    for (std::int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x.view().row(t);
      double sum = 0.0, magnitude = 0.0, bound = 0.0;
      for (std::int64_t k = 0; k < in; ++k) {
        sum += double{xt[k]} * row[k];
        magnitude += std::abs(double{xt[k]} * row[k]);
      }
      for (std::int64_t b = 0; int8_activations && b < in; b += 32) {
        double amax = 0.0, w_abs = 0.0;
        for (std::int64_t k = b; k < b + 32; ++k) {
          amax = std::max(amax, double{std::abs(xt[k])});
          w_abs += std::abs(row[k]);
        }
        bound += w_abs * 0.57 * amax / 127.0;
      }
      if (bf16_activations) bound += std::ldexp(magnitude, -9);
      ASSERT_NEAR(y.view().row(t)[r], sum, bound + kMatmulRelTolerance * magnitude)
          << to_string(type) << " token " << t << " row " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    OpsTypes, OpsTypedMatmul,
    ::testing::Combine(::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0,
                                         DType::kQ4_0),
                       ::testing::Values(1, 3, 4, 5, 40, 70), ::testing::Values(1, 2)),
    [](const ::testing::TestParamInfo<OpsTypedMatmul::ParamType>& info) {
      return std::string(to_string(std::get<0>(info.param))) + "_tokens" +
             std::to_string(std::get<1>(info.param)) + "_threads" +
             std::to_string(std::get<2>(info.param));
    });

// Up to kMaxGemvTokens tokens (kMaxF32GemvTokens for F32): each token's outputs are exactly
// those of the token alone, whatever the others (what lets sessions decode together and get what
// each gets alone). Rows span more than one kGemvTileRows tile.
TEST(OpsMatmul, TypedOutputsDoNotDependOnTheBatch) {
  const std::int64_t in = 256, out = 150;
  const Tensor<float> w = random_tensor(out, in, 31);
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                     DType::kQ4_K, DType::kQ6_K}) {
    const std::int64_t n_tokens = type == DType::kF32 ? MatmulScratch::kMaxF32GemvTokens
                                                      : MatmulScratch::kMaxGemvTokens;
    const Tensor<float> x = random_tensor(n_tokens, in, 30);
    std::vector<std::byte> stored(static_cast<std::size_t>(out) * row_bytes(type, in));
    for (std::int64_t r = 0; r < out; ++r) {
      kernels::scalar::from_float(type, w.view().row(r), stored.data() + r * row_bytes(type, in), in);
    }
    const WeightView wv{type, out, in, stored.data()};
    Tensor<float> batch({n_tokens, out}), alone({1, out});
    MatmulScratch scratch(n_tokens, in, 2);
    ThreadPool two(2), one(1);
    matmul(x.view(), wv, batch.view(), scratch, two);
    for (std::int64_t t = 0; t < n_tokens; t += type == DType::kF32 ? 1 : 7) {
      matmul(x.view().rows_slice(t, 1), wv, alone.view(), scratch, one);
      for (std::int64_t r = 0; r < out; ++r) {
        ASSERT_EQ(batch.view().row(t)[r], alone.view().row(0)[r]) << to_string(type) << " token " << t << " row " << r;
      }
    }
  }
}

// A scratch sized for its weights (MatmulScratch::Uses::add) serves every batch up to its
// max_batch, on every route, and computes what a scratch with every buffer computes; it holds
// fewer bytes where the routes leave buffers out (sanitized builds check its bounds).
TEST(OpsMatmul, ScratchSizedForItsWeightsServesEveryBatch) {
  const std::int64_t out = 40, max_batch = 100;
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                     DType::kQ4_K}) {
    for (bool interleave : {false, true}) {
      if (interleave && kernels::kernels(type).gemm_interleaved == nullptr) continue;
      // Two matrices of different widths, as a layer's w_up and w_down are.
      std::vector<std::vector<std::byte>> stored, copies;
      std::vector<WeightView> weights;
      MatmulScratch::Uses uses;
      for (std::int64_t in : {256, 512}) {
        const Tensor<float> w = random_tensor(out, in, static_cast<std::uint32_t>(in));
        stored.emplace_back(static_cast<std::size_t>(out) * row_bytes(type, in));
        for (std::int64_t r = 0; r < out; ++r) {
          kernels::scalar::from_float(type, w.view().row(r), stored.back().data() + r * row_bytes(type, in), in);
        }
        WeightView wv{type, out, in, stored.back().data()};
        if (interleave) {
          copies.emplace_back(kernels::interleaved_bytes(type, out, in));
          kernels::interleave(type, wv.data, out, in, copies.back().data());
          wv.interleaved = copies.back().data();
        }
        weights.push_back(wv);
        uses.add(wv, max_batch);
      }
      MatmulScratch sized(max_batch, uses, 2), every(max_batch, 512, 2);
      ThreadPool threads(2);
      EXPECT_LE(sized.byte_size(), every.byte_size());
      for (std::int64_t n_tokens : {1, 2, 5, 64, 65, 100}) {
        for (const WeightView& wv : weights) {
          SCOPED_TRACE(std::string(to_string(type)) + (interleave ? " interleaved" : "") + ", in " +
                       std::to_string(wv.cols) + ", " + std::to_string(n_tokens) + " tokens");
          const Tensor<float> x = random_tensor(n_tokens, wv.cols, 7);
          Tensor<float> y({n_tokens, out}), expected({n_tokens, out});
          matmul(x.view(), wv, y.view(), sized, threads);
          matmul(x.view(), wv, expected.view(), every, threads);
          ASSERT_TRUE(std::equal(y.data(), y.data() + y.size(), expected.data()));
        }
      }
    }
  }
}

// The exactly dequantized rows of w: [out, in] times x: [n_tokens, in] rounded to
// quantize_activation's 8-bit blocks, in double: what an interleaved Q4_K product computes, up to
// float rounding.
std::vector<double> times_8_bit_activation(const WeightView& w, const Tensor<float>& x) {
  const std::int64_t in = w.cols;
  std::vector<double> y(static_cast<std::size_t>(x.view().rows() * w.rows));
  std::vector<float> row(static_cast<std::size_t>(in));
  std::vector<BlockQ8_0> xq(static_cast<std::size_t>(in / 32));
  for (std::int64_t t = 0; t < x.view().rows(); ++t) {
    kernels::scalar::quantize_activation(x.view().row(t), xq.data(), in);
    for (std::int64_t r = 0; r < w.rows; ++r) {
      kernels::scalar::to_float(w.dtype, w.row(r), row.data(), in);
      double sum = 0.0;
      for (std::int64_t i = 0; i < in; ++i) {
        sum += static_cast<double>(row[i]) * fp16_to_fp32(xq[i / 32].d) * xq[i / 32].qs[i % 32];
      }
      y[t * w.rows + r] = sum;
    }
  }
  return y;
}

// A weight's interleaved copy gives what its stored rows give (Q8_0, Q4_0: the same integer
// sums, added in another order; the K-quants, whose stored rows take another activation: the
// exact product with its own) for decode, sessions decoding together and prefill, and each
// token the same as alone. Three threads split the rows of the second product mid-group of 16;
// 150 rows end one.
TEST(OpsMatmul, InterleavedCopyGivesWhatTheStoredRowsGive) {
  const std::int64_t in = 256, out = 150;
  const Tensor<float> w = random_tensor(out, in, 41);
  int tested = 0;
  for (DType type : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    if (kernels::kernels(type).gemm_interleaved == nullptr) continue;
    ++tested;
    std::vector<std::byte> stored(static_cast<std::size_t>(out) * row_bytes(type, in));
    for (std::int64_t r = 0; r < out; ++r) {
      kernels::scalar::from_float(type, w.view().row(r), stored.data() + r * row_bytes(type, in), in);
    }
    std::vector<std::byte> copy(kernels::interleaved_bytes(type, out, in));
    kernels::interleave(type, stored.data(), out, in, copy.data());
    const WeightView plain{type, out, in, stored.data()};
    WeightView interleaved = plain;
    interleaved.interleaved = copy.data();
    for (std::int64_t n_tokens : {1, 9, 100}) {
      const Tensor<float> x = random_tensor(n_tokens, in, 40);
      Tensor<float> y_plain({n_tokens, out}), y({n_tokens, out}), alone({1, out});
      MatmulScratch scratch(n_tokens, in, 3);
      ThreadPool three(3), one(1);
      matmul(x.view(), {Product{plain, y_plain.view()}, Product{interleaved, y.view()}}, scratch,
             three);
      const bool k_quant = info(type).block_size == kQK_K;
      const std::vector<double> exact =
          k_quant ? times_8_bit_activation(plain, x) : std::vector<double>();
      for (std::int64_t t = 0; t < n_tokens; t += 4) {
        matmul(x.view().rows_slice(t, 1), interleaved, alone.view(), scratch, one);
        for (std::int64_t r = 0; r < out; ++r) {
          const double expected = exact.empty() ? y_plain.view().row(t)[r] : exact[t * out + r];
          ASSERT_NEAR(y.view().row(t)[r], expected, 1e-4 * (1.0 + std::fabs(expected)))
              << to_string(type) << " " << n_tokens << " tokens, token " << t << " row " << r;
          ASSERT_EQ(y.view().row(t)[r], alone.view().row(0)[r])
              << to_string(type) << " " << n_tokens << " tokens, token " << t << " row " << r;
        }
      }
    }
  }
  if (tested == 0) GTEST_SKIP() << "this CPU's path has no interleaved kernels";
}

// Shapes that are and are not multiples of the 16-row grain; the last of each group is large
// enough (n_tokens * in * out >= kMinParallelWork) that two threads really split the rows.
const MatmulCase kMatmulCases[] = {
    {1, 7, 5},      {1, 64, 48},     {1, 100, 33},   {1, 300, 517},  {1, 512, 1024},
    {3, 33, 17},    {7, 64, 64},     {12, 130, 257}, {5, 1000, 77},  {40, 96, 100},
};

TEST(OpsMatmulShapes, LargestCasesSplitAcrossThreads) {
  int split = 0;
  for (const MatmulCase& c : kMatmulCases) {
    if (c.n_tokens * c.in * c.out >= detail::kMinParallelWork) ++split;
  }
  EXPECT_GE(split, 4);  // {1,300,517}, {1,512,1024}, {12,130,257}, {5,1000,77}
}

// The prefix starts with "Ops" so that --gtest_filter='Ops*' selects these too.
INSTANTIATE_TEST_SUITE_P(
    OpsShapes, OpsMatmul,
    ::testing::Combine(::testing::ValuesIn(kMatmulCases), ::testing::Values(1, 2)),
    [](const ::testing::TestParamInfo<OpsMatmul::ParamType>& info) {
      const MatmulCase& c = std::get<0>(info.param);
      return std::to_string(c.n_tokens) + "x" + std::to_string(c.in) + "_to_" +
             std::to_string(c.out) + "_threads" + std::to_string(std::get<1>(info.param));
    });

// --- rope -------------------------------------------------------------------------------------

// The reference: pair (2i, 2i + 1) of every head turns by pos * theta^(-2i / head_dim).
std::vector<double> rope_reference(const std::vector<float>& x, int head_dim, int pos,
                                   double theta) {
  std::vector<double> out(x.begin(), x.end());
  for (std::size_t j = 0; j < x.size(); j += 2) {
    const int i = static_cast<int>(j % head_dim) / 2;
    const double angle = pos * std::pow(theta, -2.0 * i / head_dim);
    out[j] = x[j] * std::cos(angle) - x[j + 1] * std::sin(angle);
    out[j + 1] = x[j] * std::sin(angle) + x[j + 1] * std::cos(angle);
  }
  return out;
}

TEST(Ops, RopeMatchesPlainLoopWithStartPos) {
  const int head_dim = 16, n_heads = 3, n_tokens = 5, start_pos = 41;
  const float theta = 10000.0f;
  const RopeTable table(head_dim, 64, theta);
  const std::int64_t width = n_heads * head_dim;
  const std::vector<float> original = random_floats(n_tokens * width, 20);
  std::vector<float> x = original;
  rope(TensorView<float>(x.data(), {n_tokens, width}), head_dim, start_pos, table);
  for (int t = 0; t < n_tokens; ++t) {
    const std::vector<float> row(original.begin() + t * width, original.begin() + (t + 1) * width);
    const std::vector<double> expected = rope_reference(row, head_dim, start_pos + t, theta);
    for (std::int64_t j = 0; j < width; ++j) {
      EXPECT_NEAR(x[t * width + j], expected[j], kRopeTolerance) << "token " << t << " index " << j;
    }
  }
}

// The layout is interleaved (llama2.c, GGUF Llama): dimension 0 pairs with 1, not with
// head_dim / 2 as in the NeoX "rotate half" layout.
TEST(Ops, RopeRotatesInterleavedPairs) {
  const int head_dim = 4;
  const RopeTable table(head_dim, 8, 10000.0f);
  std::vector<float> x = {1, 0, 0, 0, 0, 0, 1, 0};  // two heads
  rope(TensorView<float>(x.data(), {1, 8}), head_dim, 1, table);
  const double slow = std::pow(10000.0, -2.0 / 4);  // pair 1's frequency
  EXPECT_NEAR(x[0], std::cos(1.0), kRopeTolerance);
  EXPECT_NEAR(x[1], std::sin(1.0), kRopeTolerance);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_EQ(x[3], 0.0f);
  EXPECT_EQ(x[4], 0.0f);
  EXPECT_EQ(x[5], 0.0f);
  EXPECT_NEAR(x[6], std::cos(slow), kRopeTolerance);
  EXPECT_NEAR(x[7], std::sin(slow), kRopeTolerance);
}

TEST(Ops, RopeAtPositionZeroIsIdentity) {
  const int head_dim = 8;
  const RopeTable table(head_dim, 4, 10000.0f);
  const std::vector<float> original = random_floats(2 * 16, 21);
  std::vector<float> x = original;
  rope(TensorView<float>(x.data(), {2, 16}), head_dim, 0, table);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(x[j], original[j]);  // token 0 is at position 0
}

TEST(Ops, RopePreservesEachPairsNorm) {
  const int head_dim = 32, n_heads = 4, n_tokens = 8;
  const RopeTable table(head_dim, 512, 10000.0f);
  const std::int64_t width = n_heads * head_dim;
  const std::vector<float> original = random_floats(n_tokens * width, 22);
  std::vector<float> x = original;
  rope(TensorView<float>(x.data(), {n_tokens, width}), head_dim, 500, table);
  for (std::size_t j = 0; j < x.size(); j += 2) {
    const double before = std::hypot(double{original[j]}, double{original[j + 1]});
    const double after = std::hypot(double{x[j]}, double{x[j + 1]});
    EXPECT_NEAR(after, before, kRopeTolerance * std::max(1.0, before)) << "pair at " << j;
  }
}

// Rotating q to position p and k to position s makes q.k a function of p - s alone
// (R(p)^T R(s) = R(s - p)): the property that makes RoPE a relative position encoding.
TEST(Ops, RopeDotProductDependsOnlyOnRelativePosition) {
  const int head_dim = 16;
  const RopeTable table(head_dim, 512, 10000.0f);
  const std::vector<float> q = random_floats(head_dim, 23);
  const std::vector<float> k = random_floats(head_dim, 24);
  double qk_scale = 0.0;
  for (int i = 0; i < head_dim; ++i) qk_scale += std::abs(double{q[i]}) * std::abs(double{k[i]});
  auto rotated_dot = [&](int p, int s) {
    std::vector<float> qr = q, kr = k;
    rope(TensorView<float>(qr.data(), {1, head_dim}), head_dim, p, table);
    rope(TensorView<float>(kr.data(), {1, head_dim}), head_dim, s, table);
    double dot = 0.0;
    for (int i = 0; i < head_dim; ++i) dot += double{qr[i]} * kr[i];
    return dot;
  };
  for (int distance : {0, 1, 5, 37, 200}) {
    const double at_origin = rotated_dot(distance, 0);
    for (int s : {1, 13, 100, 311}) {
      // Both rotated vectors carry kRopeTolerance per element; the products add the errors.
      EXPECT_NEAR(rotated_dot(s + distance, s), at_origin, 4 * kRopeTolerance * qk_scale)
          << "p - s = " << distance << ", s = " << s;
    }
  }
  // And it does depend on the distance: otherwise the identity above says nothing.
  EXPECT_GT(std::abs(rotated_dot(1, 0) - rotated_dot(0, 0)), 1e-3);
}

// --- softmax ----------------------------------------------------------------------------------

TEST(Ops, SoftmaxMatchesPlainLoopAndSumsToOne) {
  std::vector<float> x = random_floats(37, 30, 3.0f);
  const std::vector<float> original = x;
  softmax(x.data(), static_cast<std::int64_t>(x.size()));
  double max_v = original[0];
  for (float v : original) max_v = std::max(max_v, double{v});
  double denominator = 0.0;
  for (float v : original) denominator += std::exp(v - max_v);
  double sum = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(x[i], std::exp(original[i] - max_v) / denominator, kSoftmaxTolerance);
    sum += x[i];
  }
  EXPECT_NEAR(sum, 1.0, kSoftmaxTolerance * x.size());
}

TEST(Ops, SoftmaxIsStableForLargeInputs) {
  const double e = std::exp(1.0);
  std::vector<float> x = {1000.0f, 1001.0f};
  softmax(x.data(), 2);  // exp(1000) overflows float; subtracting the max must avoid it
  EXPECT_NEAR(x[0], 1.0 / (1.0 + e), kSoftmaxTolerance);
  EXPECT_NEAR(x[1], e / (1.0 + e), kSoftmaxTolerance);

  std::vector<float> y = {-1000.0f, -1001.0f, -1002.0f};  // exp underflows without the shift
  softmax(y.data(), 3);
  const double d = 1.0 + 1.0 / e + 1.0 / (e * e);
  EXPECT_NEAR(y[0], 1.0 / d, kSoftmaxTolerance);
  EXPECT_NEAR(y[2], 1.0 / (e * e) / d, kSoftmaxTolerance);

  std::vector<float> z = {3e4f, 0.0f, -3e4f};
  softmax(z.data(), 3);
  EXPECT_FLOAT_EQ(z[0], 1.0f);
  EXPECT_EQ(z[1], 0.0f);
  EXPECT_EQ(z[2], 0.0f);
}

TEST(Ops, SoftmaxOfOneValueIsOne) {
  float x = -7.5f;
  softmax(&x, 1);
  EXPECT_EQ(x, 1.0f);
}

// --- silu_mul, add_in_place, embed -------------------------------------------------------------

TEST(Ops, SiluMulMatchesPlainLoop) {
  const std::int64_t n_tokens = 3, hidden = 45;
  Tensor<float> gate = random_tensor(n_tokens, hidden, 40);
  const Tensor<float> up = random_tensor(n_tokens, hidden, 41);
  // Large magnitudes too: e^-g overflows float for g < -89, and silu must still be finite.
  gate.data()[0] = -100.0f;
  gate.data()[1] = 100.0f;
  gate.data()[2] = -20.0f;
  gate.data()[3] = 0.0f;
  std::vector<float> g(gate.data(), gate.data() + gate.size());
  silu_mul(gate.view(), up.view());
  for (std::int64_t i = 0; i < gate.size(); ++i) {
    const double expected = g[i] / (1.0 + std::exp(-double{g[i]})) * up.data()[i];
    ASSERT_TRUE(std::isfinite(gate.data()[i])) << "index " << i << " gate " << g[i];
    EXPECT_NEAR(gate.data()[i], expected, kSiluRelTolerance * std::max(1.0, std::abs(expected)))
        << "index " << i << " gate " << g[i];
  }
}

TEST(Ops, AddInPlaceAddsElementwise) {
  Tensor<float> x = random_tensor(4, 19, 50);
  const Tensor<float> y = random_tensor(4, 19, 51);
  const std::vector<float> before(x.data(), x.data() + x.size());
  add_in_place(x.view(), y.view());
  for (std::int64_t i = 0; i < x.size(); ++i) EXPECT_EQ(x.data()[i], before[i] + y.data()[i]);
}

TEST(Ops, EmbedDequantizesTheTokensRows) {
  const std::int64_t vocab = 7, dim = 64;
  const Tensor<float> table = random_tensor(vocab, dim, 61);
  for (DType type : {DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    std::vector<std::byte> stored(static_cast<std::size_t>(vocab) * row_bytes(type, dim));
    for (std::int64_t r = 0; r < vocab; ++r) {
      kernels::scalar::from_float(type, table.view().row(r), stored.data() + r * row_bytes(type, dim), dim);
    }
    const WeightView tv{type, vocab, dim, stored.data()};
    const std::vector<Token> tokens = {6, 0, 6};
    Tensor<float> out({3, dim});
    embed(tokens.data(), tv, out.view());
    std::vector<float> expected(dim);
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      kernels::scalar::to_float(type, tv.row(tokens[t]), expected.data(), dim);
      for (std::int64_t i = 0; i < dim; ++i) {
        EXPECT_EQ(out.view().row(static_cast<std::int64_t>(t))[i], expected[i]) << to_string(type);
      }
    }
  }
}

TEST(Ops, EmbedCopiesTheTokensRows) {
  const std::int64_t vocab = 11, dim = 6;
  const Tensor<float> table = random_tensor(vocab, dim, 60);
  const WeightView tv{DType::kF32, vocab, dim, table.data()};
  const std::vector<Token> tokens = {0, 10, 3, 3, 7};
  Tensor<float> out({static_cast<std::int64_t>(tokens.size()), dim});
  embed(tokens.data(), tv, out.view());
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    for (std::int64_t i = 0; i < dim; ++i) {
      EXPECT_EQ(out.view().row(static_cast<std::int64_t>(t))[i], table.view().row(tokens[t])[i]);
    }
  }
}

}  // namespace
}  // namespace kvlm
