// bench_decode: what the KV cache saves, and how close decoding comes to the machine's limits.
//
//   BM_DecodeCached/<n>, BM_DecodeUncached/<n>  n greedy tokens after a fixed 8-token prompt on
//       stories260K; the uncached session re-runs the whole prefix at every step.
//   BM_AttentionStep/<start_pos>  one cached attention step (tinyllama-1.1b's 32 query heads over
//       4 KV heads of 64) at a growing position: its cost should grow linearly.
//   BM_ReadBandwidth  this machine's sustained read bandwidth, measured in the same run.
//   BM_DecodeRoofline  decode of a random-weight model of stories110M's shape (F32, ~420 MB of
//       weights read per token), as a fraction of the bandwidth roofline measured above.
//
// Run: build/bench/bench_decode --benchmark_format=json (scripts/bench does this).

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvlm/kvlm.hpp"
#include "random_model.hpp"

namespace {

std::string models_dir() {
  const char* env = std::getenv("KVLM_MODELS_DIR");
  return (env != nullptr && *env != '\0') ? env : KVLM_DEFAULT_MODELS_DIR;
}

std::shared_ptr<const kvlm::Model> stories260k() {
  static const auto model = kvlm::Model::load(models_dir() + "/stories260K/stories260K.bin");
  return model;
}

void add_context(benchmark::State& state, int n_threads) {
  state.counters["threads"] = n_threads;
  state.SetLabel(KVLM_BUILD_TYPE);
}

kvlm::Token argmax(kvlm::Span<const float> logits) {
  return static_cast<kvlm::Token>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// n greedy tokens after the prompt; the prompt's prefill is outside the timing.
void decode(benchmark::State& state, const std::shared_ptr<const kvlm::Model>& model,
            kvlm::CacheMode mode, int n_tokens) {
  kvlm::SessionOptions options;
  options.cache_mode = mode;
  kvlm::Session session(model, options);
  const std::vector<kvlm::Token> prompt = {1, 403, 407, 261, 378, 343, 404, 268};  // 8 tokens
  for (auto _ : state) {
    state.PauseTiming();
    session.reset();
    kvlm::Span<const float> logits = session.prefill(prompt);
    state.ResumeTiming();
    for (int i = 0; i < n_tokens; ++i) logits = session.step(argmax(logits));
    benchmark::DoNotOptimize(logits.data());
  }
  state.SetItemsProcessed(state.iterations() * n_tokens);
  add_context(state, session.n_threads());
}

void BM_DecodeCached(benchmark::State& state) {
  decode(state, stories260k(), kvlm::CacheMode::kCached, static_cast<int>(state.range(0)));
}
void BM_DecodeUncached(benchmark::State& state) {
  decode(state, stories260k(), kvlm::CacheMode::kRecompute, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_DecodeCached)->RangeMultiplier(2)->Range(16, 256)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeUncached)->RangeMultiplier(2)->Range(16, 256)->Unit(benchmark::kMicrosecond);

void BM_AttentionStep(benchmark::State& state) {
  const int start_pos = static_cast<int>(state.range(0));
  const kvlm::AttentionShape shape{32, 4, 64};  // tinyllama-1.1b
  const int n_ctx = start_pos + 1;
  const int kv_dim = shape.n_kv_heads * shape.head_dim;
  const int n_threads = kvlm::detail::hardware_threads();
  kvlm::Tensor<float> q({1, shape.n_heads * shape.head_dim});
  kvlm::Tensor<float> keys({n_ctx, kv_dim}), values({n_ctx, kv_dim});
  kvlm::Tensor<float> scores({n_threads, shape.group(), n_ctx});
  kvlm::Tensor<float> out({1, shape.n_heads * shape.head_dim});
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (auto* t : {&q, &keys, &values}) {
    std::generate(t->data(), t->data() + t->size(), [&] { return uniform(rng); });
  }
  for (auto _ : state) {
    kvlm::attention(q.view(), keys.view(), values.view(), shape, start_pos, scores.view(),
                    out.view(), n_threads);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * 2LL * n_ctx * kv_dim * sizeof(float));
  add_context(state, n_threads);
}
BENCHMARK(BM_AttentionStep)->RangeMultiplier(4)->Range(64, 4096)->Unit(benchmark::kMicrosecond);

// Sustained read bandwidth: sums a 1 GiB buffer on every core. Measured once per run and reused
// by BM_DecodeRoofline, so the fraction it reports compares numbers taken minutes apart at most.
double measure_read_bandwidth() {
  static const double bytes_per_second = [] {
    const std::int64_t n = (std::int64_t{1} << 30) / sizeof(float);
    kvlm::Tensor<float> buffer({n});
    std::fill(buffer.data(), buffer.data() + n, 1.0f);
    double best = 0.0;
    for (int rep = 0; rep < 5; ++rep) {
      std::vector<float> partial(64, 0.0f);
      const auto start = std::chrono::steady_clock::now();
      kvlm::detail::parallel_for_rows(n, n, kvlm::detail::hardware_threads(), 1 << 16,
                                      [&](std::int64_t begin, std::int64_t end, int thread) {
        partial[thread] =
            Eigen::Map<const Eigen::VectorXf>(buffer.data() + begin, end - begin).sum();
      });
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      benchmark::DoNotOptimize(partial.data());
      best = std::max(best, static_cast<double>(n * sizeof(float)) / seconds);
    }
    return best;
  }();
  return bytes_per_second;
}

void BM_ReadBandwidth(benchmark::State& state) {
  for (auto _ : state) state.SetIterationTime(1.0 / measure_read_bandwidth());
  state.SetBytesProcessed(state.iterations());
  state.counters["GB_per_s"] = measure_read_bandwidth() / 1e9;
  add_context(state, kvlm::detail::hardware_threads());
}
BENCHMARK(BM_ReadBandwidth)->UseManualTime()->Iterations(1);

kvlm::ModelConfig stories110m_shape() {
  kvlm::ModelConfig c;
  c.dim = 768;
  c.hidden_dim = 2048;
  c.n_layers = 12;
  c.n_heads = 12;
  c.n_kv_heads = 12;
  c.head_dim = 64;
  c.vocab_size = 32000;
  c.max_seq_len = 1024;
  c.shared_classifier = true;
  return c;
}

void BM_DecodeRoofline(benchmark::State& state) {
  static const auto model = kvlm::test::random_model(stories110m_shape(), 110);
  const int n_tokens = 32;
  decode(state, model, kvlm::CacheMode::kCached, n_tokens);
  // Bytes a step reads: the weights (all but the embedding table) and the cache so far.
  const kvlm::ModelConfig& c = model->config();
  const double kv_bytes = 2.0 * c.n_layers * c.kv_dim() * sizeof(float) * (8 + n_tokens / 2);
  const double bytes_per_token = static_cast<double>(model->decode_weight_bytes()) + kv_bytes;
  const double roofline_tok_s = measure_read_bandwidth() / bytes_per_token;
  state.counters["roofline_tok_s"] = roofline_tok_s;
  state.counters["fraction_of_roofline"] = benchmark::Counter(
      static_cast<double>(n_tokens) / roofline_tok_s, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB_per_token"] = bytes_per_token / 1e6;
}
BENCHMARK(BM_DecodeRoofline)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
