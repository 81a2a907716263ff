// attention(): against a plain-loop causal attention in double for MHA, GQA and MQA, decode steps
// and batches, one and two threads, caches of every type (the reference reads the values the
// cache stores, dequantized); and, on a whole model, the identity "GQA equals MHA with each
// K/V head repeated group times".

#include "kvlm/attention.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kvlm/session.hpp"
#include "kvlm/tensor.hpp"
#include "random_model.hpp"

namespace kvlm {
namespace {

// Each output is a softmax-weighted mean of O(1) values. Float errors come from q.k over
// head_dim = 64 terms (scores are O(1) after the 1/sqrt(head_dim) scale, error ~1e-6), float exp
// and the float sums over at most 301 positions: a few 1e-6 at most. A wrong mask or head
// mapping moves outputs by O(0.1).
constexpr double kAttentionTolerance = 1e-5;
// GQA against MHA with repeated heads: the same arithmetic on the same numbers except that the
// K/V projections produce more (identical) rows, which may change Eigen's blocking; logits are
// O(1) and agree to float rounding.
constexpr float kGqaMhaLogitTolerance = 1e-5f;

struct HeadLayout {
  const char* name;
  int n_heads, n_kv_heads, head_dim;
};

struct Call {
  int n_tokens, start_pos;
};

void PrintTo(const HeadLayout& l, std::ostream* os) {
  *os << l.name << " (" << l.n_heads << " heads, " << l.n_kv_heads << " KV heads of "
      << l.head_dim << ")";
}
void PrintTo(const Call& c, std::ostream* os) {
  *os << c.n_tokens << " tokens at start_pos " << c.start_pos;
}

// SmallHeads: heads of 8 values, so a Q8_0 cache converts whole rows of 32 (4 heads) at a time.
const HeadLayout kLayouts[] = {
    {"Mha", 8, 8, 64}, {"Gqa", 8, 2, 64}, {"Mqa", 8, 1, 64}, {"SmallHeads", 8, 4, 8}};
// A decode step, a batch, a decode step late enough that 8 heads * 301 positions * 64 * 2
// multiply-adds exceed kMinParallelWork, so two threads really split its three chunks of
// positions, one long enough for chunks of three tiles (beyond kMaxChunks chunks of two), and
// batches of several query tiles (64 rows) over several position tiles (64), from position 0 and
// mid-tile.
const Call kCalls[] = {{1, 37}, {12, 5}, {1, 300}, {1, 8300}, {150, 100}, {70, 0}};

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

class AttentionVsPlainLoop
    : public ::testing::TestWithParam<std::tuple<HeadLayout, Call, int, DType>> {};

TEST_P(AttentionVsPlainLoop, Matches) {
  const auto [layout, call, n_threads, cache_type] = GetParam();
  const int head_dim = layout.head_dim;
  const AttentionShape shape{layout.n_heads, layout.n_kv_heads, head_dim};
  const int n_tokens = call.n_tokens, start_pos = call.start_pos;
  const int n_ctx = start_pos + n_tokens;
  const int q_dim = shape.n_heads * head_dim, kv_dim = shape.n_kv_heads * head_dim;
  const int cache_rows = n_ctx + 3;  // the cache is longer than what is visible
  const float nan = std::numeric_limits<float>::quiet_NaN();

  const std::vector<float> q = random_floats(static_cast<std::size_t>(n_tokens) * q_dim, 1);
  std::vector<float> keys = random_floats(static_cast<std::size_t>(cache_rows) * kv_dim, 2);
  std::vector<float> values = random_floats(static_cast<std::size_t>(cache_rows) * kv_dim, 3);
  // The cache stores them as cache_type; the reference reads what it stores.
  KVCache cache({1, cache_rows, shape.n_kv_heads, head_dim, cache_type});
  for (auto [rows, floats] : {std::pair{cache.keys(0), &keys}, std::pair{cache.values(0), &values}}) {
    rows.store(0, TensorView<const float>(floats->data(), {n_ctx, kv_dim}));
    for (int t = 0; t < n_ctx; ++t) {
      kernels::scalar::to_float(cache_type, rows.row(t), floats->data() + std::int64_t{t} * kv_dim, kv_dim);
    }
    // Rows past the last visible position must never be read: all bits set is NaN in every type.
    std::fill(rows.row(n_ctx), rows.row(cache_rows), std::byte{0xFF});
  }
  AttentionScratch scratch(n_threads, shape);
  for (int t = 0; t < n_threads; ++t) {  // nothing may be read before it is written
    const std::int64_t rows = AttentionScratch::query_rows(shape);
    std::fill_n(scratch.scores(t), rows * AttentionScratch::kTilePositions, nan);
    std::fill_n(scratch.stats(t), AttentionScratch::kTileQueries * 2, nan);
  }
  for (std::int64_t c = 0; c < AttentionScratch::kMaxChunks; ++c) {
    std::fill_n(scratch.chunk_output(c), shape.q_dim(), nan);
    std::fill_n(scratch.chunk_stats(c), shape.n_heads * 2, nan);
  }
  Tensor<float> out({n_tokens, q_dim});
  std::fill(out.data(), out.data() + out.size(), nan);  // every element must be written

  ThreadPool threads(n_threads);
  attention(TensorView<const float>(q.data(), {n_tokens, q_dim}), cache.keys(0), cache.values(0),
            shape, start_pos, scratch, out.view(), threads);

  const int group = shape.n_heads / shape.n_kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  for (int i = 0; i < n_tokens; ++i) {
    const int last = start_pos + i;  // the causal bound: positions t <= start_pos + i
    for (int h = 0; h < shape.n_heads; ++h) {
      const int kv_h = h / group;
      std::vector<double> s(last + 1);
      double max_s = -1e300;
      for (int t = 0; t <= last; ++t) {
        double dot = 0.0;
        for (int d = 0; d < head_dim; ++d) {
          dot += double{q[i * q_dim + h * head_dim + d]} * keys[t * kv_dim + kv_h * head_dim + d];
        }
        s[t] = dot * scale;
        max_s = std::max(max_s, s[t]);
      }
      double sum = 0.0;
      for (double& v : s) sum += (v = std::exp(v - max_s));
      for (int d = 0; d < head_dim; ++d) {
        double expected = 0.0;
        for (int t = 0; t <= last; ++t) {
          expected += s[t] / sum * values[t * kv_dim + kv_h * head_dim + d];
        }
        ASSERT_NEAR(out.view().row(i)[h * head_dim + d], expected, kAttentionTolerance)
            << "token " << i << " (position " << last << ") head " << h << " dim " << d;
      }
    }
  }
}

// The prefix starts with "Attention" so that --gtest_filter='Attention*' selects these too.
INSTANTIATE_TEST_SUITE_P(
    AttentionShapes, AttentionVsPlainLoop,
    ::testing::Combine(::testing::ValuesIn(kLayouts), ::testing::ValuesIn(kCalls),
                       ::testing::Values(1, 2),
                       ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0)),
    [](const ::testing::TestParamInfo<AttentionVsPlainLoop::ParamType>& info) {
      const HeadLayout& layout = std::get<0>(info.param);
      const Call& call = std::get<1>(info.param);
      return std::string(layout.name) + "_tokens" + std::to_string(call.n_tokens) + "_at" +
             std::to_string(call.start_pos) + "_threads" + std::to_string(std::get<2>(info.param)) +
             "_" + to_string(std::get<3>(info.param));
    });

// A decode step splits its positions into chunks whatever the thread count, so one, two and
// three threads (three chunks at position 300, one thread with two of them) give the same bits.
TEST(AttentionStep, SameBitsOnAnyThreadCount) {
  const AttentionShape shape{8, 2, 64};
  for (int start_pos : {300, 8300}) {
    const int n_ctx = start_pos + 1;
    const std::vector<float> q = random_floats(static_cast<std::size_t>(shape.q_dim()), 11);
    const auto n_cached = static_cast<std::size_t>(n_ctx * shape.kv_dim());
    const std::vector<float> k = random_floats(n_cached, 12);
    const std::vector<float> v = random_floats(k.size(), 13);
    KVCache cache({1, n_ctx, shape.n_kv_heads, shape.head_dim, DType::kF32});
    cache.keys(0).store(0, TensorView<const float>(k.data(), {n_ctx, shape.kv_dim()}));
    cache.values(0).store(0, TensorView<const float>(v.data(), {n_ctx, shape.kv_dim()}));
    std::vector<std::vector<float>> outs;
    for (int n_threads : {1, 2, 3}) {
      AttentionScratch scratch(n_threads, shape);
      Tensor<float> out({1, shape.q_dim()});
      ThreadPool threads(n_threads);
      attention(TensorView<const float>(q.data(), {1, shape.q_dim()}), cache.keys(0),
                cache.values(0), shape, start_pos, scratch, out.view(), threads);
      outs.emplace_back(out.data(), out.data() + out.size());
    }
    EXPECT_EQ(outs[0], outs[1]) << "position " << start_pos;
    EXPECT_EQ(outs[0], outs[2]) << "position " << start_pos;
  }
}

// --- GQA == MHA with repeated K/V heads, on a whole model ---------------------------------------

// The same model with n_kv_heads = n_heads: each KV head's head_dim rows of attn_k and attn_v
// repeated group times, so query head h reads a copy of the KV head it read before (h / group).
// Every other weight is a view into the original file's storage, which the new file keeps alive.
ModelFile repeat_kv_heads(const ModelFile& gqa) {
  struct Storage {
    std::shared_ptr<const void> original;
    std::vector<std::vector<float>> repeated;
  };
  const ModelConfig& c = gqa.config;
  auto storage = std::make_shared<Storage>();
  storage->original = gqa.storage;
  storage->repeated.reserve(2 * static_cast<std::size_t>(c.n_layers));  // views stay valid

  ModelFile mha;
  mha.config = c;
  mha.config.n_kv_heads = c.n_heads;
  mha.weights = gqa.weights;
  const std::int64_t hd = c.head_dim, dim = c.dim;
  for (int l = 0; l < c.n_layers; ++l) {
    for (const char* which : {"attn_k.weight", "attn_v.weight"}) {
      const std::string name = "blk." + std::to_string(l) + "." + which;
      const auto source = static_cast<const float*>(gqa.weights.at(name).data);
      std::vector<float>& rows = storage->repeated.emplace_back();
      rows.reserve(static_cast<std::size_t>(c.n_heads * hd * dim));
      for (int h = 0; h < c.n_heads; ++h) {
        const float* head = source + (h / c.group()) * hd * dim;  // [head_dim, dim]
        rows.insert(rows.end(), head, head + hd * dim);
      }
      mha.weights[name] = WeightView{DType::kF32, c.n_heads * hd, dim, rows.data()};
    }
  }
  mha.storage = storage;
  return mha;
}

TEST(AttentionGqa, EqualsMhaWithKvHeadsRepeated) {
  const ModelConfig config = test::small_gqa_config();
  ASSERT_GT(config.group(), 1);
  const ModelFile gqa_file = test::random_model_file(config, 7);
  const auto mha = Model::from_file(repeat_kv_heads(gqa_file));
  const auto gqa = Model::from_file(gqa_file);
  EXPECT_EQ(mha->config().n_kv_heads, config.n_heads);

  std::vector<Token> tokens;
  for (int i = 0; i < 30; ++i) tokens.push_back((i * 29 + 3) % config.vocab_size);
  const std::int64_t n = static_cast<std::int64_t>(tokens.size());
  Session gqa_session(gqa, SessionOptions{});
  Session mha_session(mha, SessionOptions{});
  Tensor<float> gqa_logits({n, config.vocab_size});
  Tensor<float> mha_logits({n, config.vocab_size});
  gqa_session.evaluate(tokens, gqa_logits.view());
  mha_session.evaluate(tokens, mha_logits.view());

  float worst = 0.0f;
  for (std::int64_t i = 0; i < gqa_logits.size(); ++i) {
    worst = std::max(worst, std::abs(gqa_logits.data()[i] - mha_logits.data()[i]));
  }
  EXPECT_LE(worst, kGqaMhaLogitTolerance);
  // Not vacuous: the logits vary across positions.
  EXPECT_NE(gqa_logits.view().row(0)[0], gqa_logits.view().row(n - 1)[0]);

  // What GQA buys: the cache holds n_kv_heads heads, group times fewer than MHA.
  EXPECT_EQ(gqa_session.kv_cache_bytes() * static_cast<std::size_t>(config.group()),
            mha_session.kv_cache_bytes());
}

}  // namespace
}  // namespace kvlm
