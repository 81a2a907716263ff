// bench_decode: what the KV cache saves, and how close decoding comes to the machine's limits.
//
//   BM_DecodeCached/<n>, BM_DecodeUncached/<n>  n greedy tokens after a fixed 8-token prompt on
//       stories260K; the uncached session re-runs the whole prefix at every step.
//   BM_AttentionStep/<start_pos>  one cached attention step (tinyllama-1.1b's 32 query heads over
//       4 KV heads of 64) at a growing position: its cost should grow linearly.
//   BM_ReadBandwidth  this machine's sustained read bandwidth.
//   BM_DecodeRoofline  decode of a random-weight model of stories110M's shape (F32, ~440 MB of
//       weights read per token), as a fraction of the bandwidth roofline, with the bandwidth
//       measured between its own timed iterations.
//   BM_CachedStep/<start_pos>, BM_UncachedStep/<start_pos>  one decode step on that shape at a
//       position, with the cache and re-running the whole prefix without it.
//   BM_TokenLatency/<pause_us>  the spread of single decode steps on that shape, back to back
//       and with the host pausing between tokens (the cost of waking idle threads).
//   BM_PeakFlops  this machine's peak float32 FMA rate, measured in the same run.
//   BM_PeakInt8  its peak rate of 8-bit multiply-adds (AVX-512 VNNI), the integer gemm's limit.
//   BM_PeakBf16  its peak rate of bfloat16 multiply-adds (AVX512-BF16), the BF16 GEMM's limit.
//   BM_Prefill/512  a 512-token prompt on that shape, as a fraction of the peak.
//   BM_SessionReprefill/512, BM_SessionFork/512, BM_SessionLoad/512  three ways to get a session
//       holding a 512-token prompt on that shape.
//   BM_KvTypeDecode/<type>  decode steps at position 2048 with each KV cache type.
//   BM_BatchedDecode/<model>/<B>  B sessions decoding together through one Batcher: aggregate
//       and per-session tok/s (stories110M's shape in F32, and from $KVLM_BENCH_MODELS
//       stories110M Q4_0 and tinyllama-1.1b F32, Q8_0, Q4_0 and Q4_K_M).
//
// Run: build/bench/bench_decode --benchmark_format=json (scripts/bench does this).

#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvlm/kvlm.hpp"
#include "kvlm/quantize.hpp"
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

// n greedy tokens after the prompt; the prompt's prefill, and `untimed` before each
// iteration, are outside the timing.
// prompt_len tokens of a fixed prompt (the first 8 are "Once upon a time there was a" in
// stories260K's vocabulary; any ids do for random weights).
std::vector<kvlm::Token> prompt_of(int prompt_len, int vocab_size) {
  std::vector<kvlm::Token> prompt = {1, 403, 407, 261, 378, 343, 404, 268};
  for (int i = 8; i < prompt_len; ++i) prompt.push_back((i * 7919) % vocab_size);
  prompt.resize(static_cast<std::size_t>(prompt_len));
  return prompt;
}

// n_threads: the session's (0: every core).
void decode(benchmark::State& state, const std::shared_ptr<const kvlm::Model>& model,
            kvlm::CacheMode mode, int n_tokens, int prompt_len = 8,
            const std::function<void()>& untimed = {}, int n_threads = 0) {
  kvlm::SessionOptions options;
  options.cache_mode = mode;
  options.n_threads = n_threads;
  kvlm::Session session(model, options);
  const std::vector<kvlm::Token> prompt = prompt_of(prompt_len, model->config().vocab_size);
  for (auto _ : state) {
    state.PauseTiming();
    if (untimed) untimed();
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
  kvlm::AttentionScratch scratch(n_threads, shape);
  kvlm::ThreadPool threads(n_threads);
  kvlm::Tensor<float> out({1, shape.n_heads * shape.head_dim});
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (auto* t : {&q, &keys, &values}) {
    std::generate(t->data(), t->data() + t->size(), [&] { return uniform(rng); });
  }
  for (auto _ : state) {
    kvlm::attention(q.view(), kvlm::KVRows(keys.view()), kvlm::KVRows(values.view()), shape,
                    start_pos, scratch, out.view(), threads);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * 2LL * n_ctx * kv_dim * sizeof(float));
  add_context(state, n_threads);
}
BENCHMARK(BM_AttentionStep)->RangeMultiplier(2)->Range(64, 8192)->Unit(benchmark::kMicrosecond);

// Sustained read bandwidth: sums a 1 GiB buffer on every core with 4 independent 16-wide
// accumulators (as ../shared/BENCHMARKS.md measures it); the best of `passes` passes.
double read_bandwidth(int passes, int n_threads = kvlm::detail::hardware_threads()) {
  constexpr int kAccumulators = 4, kLanes = 16, kStride = kAccumulators * kLanes;
  constexpr std::int64_t n = (std::int64_t{1} << 30) / sizeof(float);
  static const kvlm::Tensor<float> buffer = [] {
    kvlm::Tensor<float> t({n});
    std::fill(t.data(), t.data() + n, 1.0f);
    return t;
  }();
  std::vector<float> sink(64, 0.0f);
  kvlm::ThreadPool threads(n_threads);
  double best = 0.0;
  for (int pass = 0; pass < passes; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    kvlm::detail::parallel_for_rows(n, n, threads, kStride * 1024,
                                    [&](std::int64_t begin, std::int64_t end, int thread) {
      float acc[kStride] = {};
      for (std::int64_t i = begin; i < end; i += kStride) {
        for (int l = 0; l < kStride; ++l) acc[l] += buffer.data()[i + l];
      }
      for (float a : acc) sink[thread] += a;
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    benchmark::DoNotOptimize(sink.data());
    best = std::max(best, static_cast<double>(n * sizeof(float)) / seconds);
  }
  return best;
}

void BM_ReadBandwidth(benchmark::State& state) {
  double bytes_per_second = 0.0;
  for (auto _ : state) {
    bytes_per_second = read_bandwidth(10);
    state.SetIterationTime(1.0 / bytes_per_second);
  }
  state.SetBytesProcessed(state.iterations());
  state.counters["GB_per_s"] = bytes_per_second / 1e9;
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

std::shared_ptr<const kvlm::Model> stories110m() {
  static const auto model = kvlm::test::random_model(stories110m_shape(), 110);
  return model;
}

// Decode of n_tokens greedy tokens after a prompt of prompt_len, with the machine's read
// bandwidth measured between the timed iterations (it drifts by tens of percent from minute to
// minute on this shared machine) and the roofline tok/s it allows beside the result.
void decode_against_roofline(benchmark::State& state,
                             const std::shared_ptr<const kvlm::Model>& model, int prompt_len,
                             int n_tokens, int n_threads = 0) {
  double bandwidth_sum = 0.0;
  int probes = 0;
  const int threads = n_threads > 0 ? n_threads : kvlm::detail::hardware_threads();
  decode(state, model, kvlm::CacheMode::kCached, n_tokens, prompt_len, [&] {
    bandwidth_sum += read_bandwidth(3, threads);
    ++probes;
  }, n_threads);
  // Bytes a step reads: the weights (all but the embedding table) and the cache so far.
  const kvlm::ModelConfig& c = model->config();
  const double kv_bytes =
      2.0 * c.n_layers * c.kv_dim() * sizeof(float) * (prompt_len + n_tokens / 2);
  const double bytes_per_token = static_cast<double>(model->decode_weight_bytes()) + kv_bytes;
  const double roofline_tok_s = bandwidth_sum / probes / bytes_per_token;
  state.counters["GB_per_s"] = bandwidth_sum / probes / 1e9;
  state.counters["roofline_tok_s"] = roofline_tok_s;
  state.counters["fraction_of_roofline"] = benchmark::Counter(
      static_cast<double>(n_tokens) / roofline_tok_s, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB_per_token"] = bytes_per_token / 1e6;
}

void BM_DecodeRoofline(benchmark::State& state) {
  decode_against_roofline(state, stories110m(), 8, 32);
}
BENCHMARK(BM_DecodeRoofline)->Unit(benchmark::kMillisecond)->UseRealTime();

// One decode step on the stories110M shape at position start_pos, cached (only the new token's
// K/V is computed; attention reads the cache) or uncached (kRecompute: the step re-runs all
// start_pos + 1 tokens, as an engine without a cache must). The session is prefilled once; each
// iteration steps and rewinds the token outside the timing.
void step_at(benchmark::State& state, kvlm::CacheMode mode) {
  const int start_pos = static_cast<int>(state.range(0));
  const auto model = stories110m();
  kvlm::SessionOptions options;
  options.cache_mode = mode;
  options.max_seq_len = std::max(model->config().max_seq_len, start_pos + 1);
  kvlm::Session session(model, options);
  const kvlm::Token token = argmax(session.prefill(prompt_of(start_pos, model->config().vocab_size)));
  for (auto _ : state) {
    benchmark::DoNotOptimize(session.step(token).data());
    state.PauseTiming();
    session.rewind(1);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations());
  add_context(state, session.n_threads());
}
void BM_CachedStep(benchmark::State& state) { step_at(state, kvlm::CacheMode::kCached); }
void BM_UncachedStep(benchmark::State& state) { step_at(state, kvlm::CacheMode::kRecompute); }
BENCHMARK(BM_CachedStep)->Arg(16)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_UncachedStep)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

// The spread of per-token latency: 64 decode steps on the stories110M shape, each timed on its
// own, with the host pausing pause_us between tokens (0: back to back; 2000: a host doing 2 ms of
// its own work per token, within the pool's spin; 20000: longer than the spin, so the session's
// idle threads sleep and the next step pays for waking them). Counters: the median, 90th and
// 99th percentile and largest step, in microseconds.
void BM_TokenLatency(benchmark::State& state) {
  constexpr int kSteps = 64;
  const auto model = stories110m();
  kvlm::Session session(model, kvlm::SessionOptions{});
  const std::vector<kvlm::Token> prompt = prompt_of(8, model->config().vocab_size);
  const auto pause = std::chrono::microseconds(state.range(0));
  std::vector<double> step_us;
  for (auto _ : state) {
    state.PauseTiming();
    session.reset();
    kvlm::Span<const float> logits = session.prefill(prompt);
    for (int i = 0; i < kSteps; ++i) {
      std::this_thread::sleep_for(pause);
      const kvlm::Token token = argmax(logits);
      const auto start = std::chrono::steady_clock::now();
      logits = session.step(token);
      step_us.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count());
    }
    state.ResumeTiming();
  }
  std::sort(step_us.begin(), step_us.end());
  const auto at = [&](double q) {
    return step_us[static_cast<std::size_t>(q * static_cast<double>(step_us.size() - 1))];
  };
  state.counters["p50_us"] = at(0.5);
  state.counters["p90_us"] = at(0.9);
  state.counters["p99_us"] = at(0.99);
  state.counters["max_us"] = step_us.back();
  add_context(state, session.n_threads());
}
BENCHMARK(BM_TokenLatency)
    ->Arg(0)->Arg(2000)->Arg(20000)->Iterations(4)->Unit(benchmark::kMillisecond);

// The machine's peaks, measured once per run and reused by the prefill benchmarks: 12 independent
// chains of one instruction on every core. The chains carry their instruction sets, so a build
// without -march measures the machine's peak too, not its compiler's baseline.
constexpr int kChains = 12;
constexpr std::int64_t kChainSteps = 20'000'000;

// Operations per second on all threads, each running chains(thread) once: ops_per_thread
// operations, whose result is kept from the optimiser.
template <typename Chains>
double rate_on_every_core(double ops_per_thread, Chains chains) {
  kvlm::ThreadPool threads(kvlm::detail::hardware_threads());
  const auto start = std::chrono::steady_clock::now();
  threads.run(threads.size(), [&](int thread) { benchmark::DoNotOptimize(chains(thread)); });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return ops_per_thread * threads.size() / seconds;
}

// A peak as a benchmark: the rate as `counter` in G per second, or `missing` if the CPU lacks it.
void report_peak(benchmark::State& state, double peak, const char* counter, const char* missing) {
  if (peak == 0.0) {
    state.SkipWithError(missing);
    return;
  }
  for (auto _ : state) state.SetIterationTime(1.0 / peak);
  state.counters[counter] = peak / 1e9;
  add_context(state, kvlm::detail::hardware_threads());
}

// Peak float32 arithmetic: fused multiply-adds on the CPU's widest vectors (AVX-512, else AVX2).
__attribute__((target("avx512f"))) float fma_chains_avx512(std::int64_t steps, int seed) {
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(1.0f + 0.001f * (k + seed));
  const __m512 a = _mm512_set1_ps(0.9999999f), b = _mm512_set1_ps(1e-7f);
  for (std::int64_t i = 0; i < steps; ++i) {
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_fmadd_ps(acc[k], a, b);
  }
  float sum = 0.0f;
  for (int k = 0; k < kChains; ++k) sum += _mm512_reduce_add_ps(acc[k]);
  return sum;
}

__attribute__((target("avx2,fma"))) float fma_chains_avx2(std::int64_t steps, int seed) {
  __m256 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm256_set1_ps(1.0f + 0.001f * (k + seed));
  const __m256 a = _mm256_set1_ps(0.9999999f), b = _mm256_set1_ps(1e-7f);
  for (std::int64_t i = 0; i < steps; ++i) {
    for (int k = 0; k < kChains; ++k) acc[k] = _mm256_fmadd_ps(acc[k], a, b);
  }
  alignas(32) float lanes[8];
  float sum = 0.0f;
  for (int k = 0; k < kChains; ++k) {
    _mm256_store_ps(lanes, acc[k]);
    for (float lane : lanes) sum += lane;
  }
  return sum;
}

// FLOPs per second (2 per multiply-add); 0 on a CPU without AVX2.
double measure_peak_flops() {
  static const double flops_per_second = [] {
    using kvlm::kernels::Simd;
    const double flops_per_lane = 2.0 * kChains * kChainSteps;
    if (kvlm::kernels::simd_supported(Simd::kAvx512)) {
      return rate_on_every_core(16 * flops_per_lane,
                                [](int thread) { return fma_chains_avx512(kChainSteps, thread); });
    }
    if (kvlm::kernels::simd_supported(Simd::kAvx2)) {
      return rate_on_every_core(8 * flops_per_lane,
                                [](int thread) { return fma_chains_avx2(kChainSteps, thread); });
    }
    return 0.0;
  }();
  return flops_per_second;
}

void BM_PeakFlops(benchmark::State& state) {
  report_peak(state, measure_peak_flops(), "GFLOP_per_s", "no AVX2 or AVX-512 on this CPU");
}
BENCHMARK(BM_PeakFlops)->UseManualTime()->Iterations(1);

// This machine's peak rate of 8-bit multiply-adds (AVX-512 VNNI vpdpbusd), as operations (2 per
// multiply-add, as FLOPs count them) per second on all threads: the limit of the integer gemm
// that Q8_0 and Q4_0 prefill with. 0 on a CPU without AVX-512 VNNI.
__attribute__((target("avx512f,avx512vnni"))) std::int32_t int8_chains(std::int64_t steps,
                                                                        int seed) {
  __m512i acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_epi32(k + seed);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (std::int64_t i = 0; i < steps; ++i) {
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
  }
  std::int32_t sum = 0;
  for (int k = 0; k < kChains; ++k) sum += _mm512_reduce_add_epi32(acc[k]);
  return sum;
}

double measure_peak_int8_ops() {
  static const double ops_per_second = [] {
    if (!kvlm::kernels::simd_supported(kvlm::kernels::Simd::kAvx512)) return 0.0;
    // 64 multiply-adds per instruction
    return rate_on_every_core(2.0 * kChains * 64 * kChainSteps,
                              [](int thread) { return int8_chains(kChainSteps, thread); });
  }();
  return ops_per_second;
}

void BM_PeakInt8(benchmark::State& state) {
  report_peak(state, measure_peak_int8_ops(), "GOPS", "no AVX-512 VNNI on this CPU");
}
BENCHMARK(BM_PeakInt8)->UseManualTime()->Iterations(1);

// Peak bfloat16 arithmetic: vdpbf16ps, 32 multiply-adds per instruction.
__attribute__((target("avx512f,avx512bf16"))) float bf16_chains(std::int64_t steps, int seed) {
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(1.0f + 0.001f * (k + seed));
  const __m512i a = _mm512_set1_epi16(0x3F80), b = _mm512_set1_epi16(0x3380);  // 1, 2^-24
  for (std::int64_t i = 0; i < steps; ++i) {
    for (int k = 0; k < kChains; ++k) {
      acc[k] = _mm512_dpbf16_ps(acc[k], reinterpret_cast<const __m512bh&>(a),
                                reinterpret_cast<const __m512bh&>(b));
    }
  }
  float sum = 0.0f;
  for (int k = 0; k < kChains; ++k) sum += _mm512_reduce_add_ps(acc[k]);
  return sum;
}

double measure_peak_bf16_flops() {
  static const double flops_per_second = [] {
    if (kvlm::kernels::pair_panel_kernels() == nullptr) return 0.0;
    return rate_on_every_core(2.0 * kChains * 32 * kChainSteps,
                              [](int thread) { return bf16_chains(kChainSteps, thread); });
  }();
  return flops_per_second;
}

void BM_PeakBf16(benchmark::State& state) {
  report_peak(state, measure_peak_bf16_flops(), "GFLOP_per_s", "no AVX512-BF16 on this CPU");
}
BENCHMARK(BM_PeakBf16)->UseManualTime()->Iterations(1);

// Prefill of a 512-token prompt on the stories110M shape (llama.cpp's pp512), as tok/s and as a
// fraction of the peak measured above (and of the 8-bit peak, for weights whose prefill runs
// the integer gemm, and of the bfloat16 peak for BF16 weights on the BF16 GEMM). FLOPs count 2
// per weight per token (the classifier's for the last token only) and the causal half of
// attention's two products.
// The peaks are measured on every core; a session on fewer threads is held to their share.
void prefill_against_peak(benchmark::State& state, const std::shared_ptr<const kvlm::Model>& model,
                          int n_tokens, int n_threads = 0) {
  const std::vector<kvlm::Token> prompt = prompt_of(n_tokens, model->config().vocab_size);
  kvlm::SessionOptions options;
  options.n_threads = n_threads;
  kvlm::Session session(model, options);
  for (auto _ : state) {
    session.reset();
    benchmark::DoNotOptimize(session.prefill(prompt).data());
  }
  const kvlm::ModelConfig& c = model->config();
  // Every matrix but the embedding table runs for every token, the classifier for the last one.
  const double classifier_weights = static_cast<double>(c.vocab_size) * c.dim;
  const double layer_weights = static_cast<double>(model->parameter_count()) -
                               classifier_weights * (c.shared_classifier ? 1 : 2);
  const double weight_flops = 2.0 * (layer_weights * n_tokens + classifier_weights);
  const double attention_flops = 2.0 * 2.0 * c.n_layers * c.n_heads * c.head_dim *
                                 (n_tokens * (n_tokens + 1.0) / 2.0);
  const double flops = weight_flops + attention_flops;
  const double share = static_cast<double>(session.n_threads()) / kvlm::detail::hardware_threads();
  state.SetItemsProcessed(state.iterations() * n_tokens);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["fraction_of_peak"] = benchmark::Counter(
      flops / (share * measure_peak_flops()), benchmark::Counter::kIsIterationInvariantRate);
  const kvlm::DType layer_type = model->block(0).w_gate.dtype;
  if (layer_type != kvlm::DType::kF32 && kvlm::kernels::kernels(layer_type).gemm != nullptr) {
    state.counters["fraction_of_int8_peak"] = benchmark::Counter(
        flops / (share * measure_peak_int8_ops()), benchmark::Counter::kIsIterationInvariantRate);
  }
  if (layer_type == kvlm::DType::kBF16 && kvlm::kernels::pair_panel_kernels() != nullptr) {
    state.counters["fraction_of_bf16_peak"] = benchmark::Counter(
        flops / (share * measure_peak_bf16_flops()), benchmark::Counter::kIsIterationInvariantRate);
  }
  add_context(state, session.n_threads());
}

void BM_Prefill(benchmark::State& state) {
  prefill_against_peak(state, stories110m(), static_cast<int>(state.range(0)));
}
BENCHMARK(BM_Prefill)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

// --- Sessions: what restoring a conversation costs, and narrower caches ----------------------

// A session holding a prompt of n tokens on the stories110M shape, three ways: prefilling the
// prompt again (BM_SessionReprefill), fork() of a session that holds it (BM_SessionFork) and
// load() of a saved one from memory (BM_SessionLoad). Items are the prompt's tokens.
kvlm::SessionOptions restore_options(int n_tokens) {
  kvlm::SessionOptions o;
  o.max_seq_len = n_tokens + 64;
  return o;
}

void BM_SessionReprefill(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  kvlm::Session session(stories110m(), restore_options(n));
  const std::vector<kvlm::Token> prompt = prompt_of(n, session.model().config().vocab_size);
  for (auto _ : state) {
    session.reset();
    benchmark::DoNotOptimize(session.prefill(prompt).data());
  }
  state.SetItemsProcessed(state.iterations() * n);
  add_context(state, session.n_threads());
}
BENCHMARK(BM_SessionReprefill)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_SessionFork(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  kvlm::Session session(stories110m(), restore_options(n));
  session.prefill(prompt_of(n, session.model().config().vocab_size));
  for (auto _ : state) {
    kvlm::Session copy = session.fork();
    benchmark::DoNotOptimize(copy.position());
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["session_MB"] = static_cast<double>(session.memory_bytes()) / 1e6;
  add_context(state, session.n_threads());
}
BENCHMARK(BM_SessionFork)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_SessionLoad(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  kvlm::Session session(stories110m(), restore_options(n));
  session.prefill(prompt_of(n, session.model().config().vocab_size));
  std::ostringstream saved;
  session.save(saved);
  const std::string bytes = saved.str();
  kvlm::Session target(stories110m(), restore_options(n));
  for (auto _ : state) {
    std::istringstream in(bytes);
    target.load(in);
    benchmark::DoNotOptimize(target.position());
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["file_MB"] = static_cast<double>(bytes.size()) / 1e6;
  add_context(state, session.n_threads());
}
BENCHMARK(BM_SessionLoad)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

// Decode steps at position 2048 on the stories110M shape with each cache type
// (BM_KvTypeDecode/<ggml type id>): the cache read per step is 2 * 12 layers * 2048 rows of 768
// values, 151 MB in F32 against 440 MB of weights.
void BM_KvTypeDecode(benchmark::State& state) {
  constexpr int kPosition = 2048, kSteps = 8;
  kvlm::SessionOptions o;
  o.max_seq_len = kPosition + kSteps;
  o.kv_type = static_cast<kvlm::DType>(state.range(0));
  kvlm::Session session(stories110m(), o);
  session.prefill(prompt_of(kPosition, session.model().config().vocab_size));
  for (auto _ : state) {
    kvlm::Span<const float> logits = session.step(1);
    for (int i = 1; i < kSteps; ++i) logits = session.step(argmax(logits));
    benchmark::DoNotOptimize(logits.data());
    state.PauseTiming();
    session.rewind(kSteps);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kSteps);
  state.SetLabel(kvlm::to_string(o.kv_type));
  state.counters["kv_cache_MB"] = static_cast<double>(session.kv_cache_bytes()) / 1e6;
  state.counters["threads"] = session.n_threads();
}
BENCHMARK(BM_KvTypeDecode)
    ->Arg(static_cast<int>(kvlm::DType::kF32))->Arg(static_cast<int>(kvlm::DType::kF16))
    ->Arg(static_cast<int>(kvlm::DType::kBF16))->Arg(static_cast<int>(kvlm::DType::kQ8_0))
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// B sessions, each on a host thread of its own, decoding kSteps greedy tokens after an 8-token
// prompt through one Batcher; items are all sessions' tokens (aggregate tok/s).
void batched_decode(benchmark::State& state, const std::shared_ptr<const kvlm::Model>& model,
                    int n_sessions) {
  constexpr int kPrompt = 8, kSteps = 16;
  kvlm::SessionOptions o;
  o.max_seq_len = kPrompt + kSteps;
  o.max_batch = kPrompt;
  o.batcher = std::make_shared<kvlm::Batcher>(model);
  std::vector<std::unique_ptr<kvlm::Session>> sessions;
  for (int i = 0; i < n_sessions; ++i) {
    sessions.push_back(std::make_unique<kvlm::Session>(model, o));
    sessions.back()->prefill(prompt_of(kPrompt, model->config().vocab_size));
  }
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (auto& session : sessions) {
      threads.emplace_back([&session] {
        kvlm::Span<const float> logits = session->step(1);
        for (int i = 1; i < kSteps; ++i) logits = session->step(argmax(logits));
      });
    }
    for (std::thread& t : threads) t.join();
    state.PauseTiming();
    for (auto& session : sessions) session->rewind(kSteps);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * n_sessions * kSteps);
  state.counters["sessions"] = n_sessions;
  const kvlm::Batcher::Stats stats = o.batcher->stats();
  state.counters["rows_per_pass"] = static_cast<double>(stats.rows) / static_cast<double>(stats.passes);
  state.counters["per_session_tok_s"] = benchmark::Counter(
      static_cast<double>(kSteps), benchmark::Counter::kIsIterationInvariantRate);
  add_context(state, o.batcher->options().n_threads > 0 ? o.batcher->options().n_threads
                                                        : kvlm::detail::hardware_threads());
}

// The model at path, loaded on first use, so that a filtered run maps only the files it measures.
std::function<std::shared_ptr<const kvlm::Model>()> lazy_model(const std::string& path,
                                                              kvlm::LoadOptions options = {}) {
  auto cached = std::make_shared<std::shared_ptr<const kvlm::Model>>();
  return [path, options, cached] {
    if (!*cached) *cached = kvlm::Model::load(path, "", options);
    return *cached;
  };
}

// The same file with its matrices used as stored (LoadOptions::interleave off), for the README's
// with and without columns; the name gains "-stored".
kvlm::LoadOptions stored() {
  kvlm::LoadOptions options;
  options.interleave = false;
  return options;
}

void register_batched_benchmarks() {
  std::vector<std::pair<std::string, std::function<std::shared_ptr<const kvlm::Model>()>>> models =
      {{"stories110M-F32", [] { return stories110m(); }}};
  if (const char* dir = std::getenv("KVLM_BENCH_MODELS"); dir != nullptr && *dir != '\0') {
    for (const char* name : {"stories110M-Q4_0", "tinyllama-1.1b-F32", "tinyllama-1.1b-Q8_0",
                             "tinyllama-1.1b-Q4_0", "tinyllama-1.1b-Q4_K_M"}) {
      const std::string path = std::string(dir) + "/" + name + ".gguf";
      if (!std::ifstream(path).good()) continue;
      models.emplace_back(name, lazy_model(path));
      if (std::strstr(name, "Q4_") != nullptr) {  // Q4_0 and Q4_K_M
        models.emplace_back(std::string(name) + "-stored", lazy_model(path, stored()));
      }
    }
  }
  for (const auto& [name, model] : models) {
    for (int b : {1, 2, 4, 8, 16}) {
      benchmark::RegisterBenchmark(("BM_BatchedDecode/" + name + "/" + std::to_string(b)).c_str(),
                                   [model = model, b](benchmark::State& s) {
                                     batched_decode(s, model(), b);
                                   })
          ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
    }
  }
}

// Every weight type at a real size: the GGUF files in $KVLM_BENCH_MODELS named
// <shape>-<TYPE>.gguf, TYPE as quantize names it (F32, ..., Q4_K_M; scripts/bench-types writes
// them with random_gguf), each as BM_TypeDecode/<file> (16 tokens after a 128-token prompt,
// against the bandwidth roofline) and BM_TypePrefill/<file> (512 tokens, against the FMA peak),
// on every core, also as <file>-stored (the types with an interleaved copy); and the same on one
// thread, against one thread's bandwidth and one core's share of the peaks, as
// BM_TypeDecodeOneThread/<file> and BM_TypePrefillOneThread/<file>.
void register_type_benchmarks() {
  const char* dir = std::getenv("KVLM_BENCH_MODELS");
  if (dir == nullptr || *dir == '\0') return;
  for (const char* shape : {"stories110M", "tinyllama-1.1b"}) {
    for (const kvlm::QuantizeRecipe& recipe : kvlm::kQuantizeRecipes) {
      const std::string name = std::string(shape) + "-" + recipe.name;
      const std::string path = std::string(dir) + "/" + name + ".gguf";
      if (!std::ifstream(path).good()) continue;
      std::vector<std::pair<std::string, std::function<std::shared_ptr<const kvlm::Model>()>>>
          variants = {{name, lazy_model(path)}};
      if (kvlm::kernels::kernels(recipe.type).gemm_interleaved != nullptr) {
        variants.emplace_back(name + "-stored", lazy_model(path, stored()));
      }
      for (const auto& [variant, model] : variants) {
        benchmark::RegisterBenchmark(("BM_TypeDecode/" + variant).c_str(),
                                     [model = model](benchmark::State& s) {
                                       decode_against_roofline(s, model(), 128, 16);
                                     })
            ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
        benchmark::RegisterBenchmark(("BM_TypePrefill/" + variant).c_str(),
                                     [model = model](benchmark::State& s) {
                                       prefill_against_peak(s, model(), 512);
                                     })
            ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
      }
      const auto model = variants.front().second;
      benchmark::RegisterBenchmark(("BM_TypeDecodeOneThread/" + name).c_str(),
                                   [model](benchmark::State& s) {
                                     decode_against_roofline(s, model(), 128, 16, 1);
                                   })
          ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
      benchmark::RegisterBenchmark(("BM_TypePrefillOneThread/" + name).c_str(),
                                   [model](benchmark::State& s) {
                                     prefill_against_peak(s, model(), 512, 1);
                                   })
          ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_type_benchmarks();
  register_batched_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
