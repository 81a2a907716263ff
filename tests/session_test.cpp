// Session: the golden text on real weights, and the identities a KV cache must keep:
// cached == recomputed, prefill == steps, rewind + redo == fresh, sessions independent.

#include "kvlm/session.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "models.hpp"
#include "random_model.hpp"
#include "reference_forward.hpp"

namespace kvlm {
namespace {

// Logits differ between orders of float summation; 1e-4 is the bound the issue sets for an
// all-float32 implementation against another (the shared models' README measures the same).
constexpr float kLogitTolerance = 1e-4f;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

float max_abs_diff(Span<const float> a, Span<const float> b) {
  float m = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Logits after every token, one step() call per token: [tokens.size()][vocab].
std::vector<std::vector<float>> step_logits(Session& s, const std::vector<Token>& tokens) {
  std::vector<std::vector<float>> out;
  for (Token t : tokens) {
    const Span<const float> l = s.step(t);
    out.emplace_back(l.begin(), l.end());
  }
  return out;
}

// The first n tokens of the reference story, as tok512 encodes it (with BOS).
std::vector<Token> story_tokens(const Model& model, const std::string& text, std::size_t n) {
  std::vector<Token> tokens = model.tokenizer().encode(text, true);
  tokens.resize(std::min(tokens.size(), n));
  return tokens;
}

TEST(SessionGolden, GreedyFromBosReproducesLlama2cReference) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  KVLM_REQUIRE_MODEL(ref, "stories260K/greedy-bos-256.txt");
  Session session(Model::load(bin, tok), SessionOptions{});
  GenerateOptions options;
  // run.c with -n 256 runs 256 positions from BOS and prints the token sampled at each: 256 new
  // tokens, the last one sampled after position 255.
  options.max_new_tokens = 256;
  options.sampler.temperature = 0.0f;
  std::string text;
  const GenerateResult r = session.generate("", options, [&](std::string_view piece) {
    text += piece;
    return true;
  });
  EXPECT_EQ(r.prompt_tokens, 1);
  EXPECT_EQ(r.generated_tokens, 256);
  EXPECT_EQ(r.stop_reason, StopReason::kMaxNewTokens);
  EXPECT_EQ(session.position(), 257);  // every sampled token is in the cache
  std::string expected = read_text(ref);
  ASSERT_EQ(expected.back(), '\n');  // run.c ends its output with a newline of its own
  expected.pop_back();
  EXPECT_EQ(text, expected);
}

class RealModel : public ::testing::TestWithParam<const char*> {};

TEST_P(RealModel, CachedEqualsRecomputedAtEveryPosition) {
  KVLM_REQUIRE_MODEL(bin, GetParam());
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  KVLM_REQUIRE_MODEL(ref, "stories260K/greedy-bos-256.txt");
  const auto model = Model::load(bin, tok);
  const std::vector<Token> tokens = story_tokens(*model, read_text(ref), 64);
  ASSERT_EQ(tokens.size(), 64u);

  Session cached(model, SessionOptions{});
  SessionOptions recompute_options;
  recompute_options.cache_mode = CacheMode::kRecompute;
  Session recomputed(model, recompute_options);
  const auto a = step_logits(cached, tokens);
  const auto b = step_logits(recomputed, tokens);
  float worst = 0.0f;
  for (std::size_t t = 0; t < tokens.size(); ++t) worst = std::max(worst, max_abs_diff(a[t], b[t]));
  EXPECT_LE(worst, kLogitTolerance);
  EXPECT_EQ(cached.position(), 64);
  EXPECT_EQ(recomputed.position(), 64);
}

TEST_P(RealModel, MatchesDoublePrecisionReference) {
  KVLM_REQUIRE_MODEL(bin, GetParam());
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  KVLM_REQUIRE_MODEL(ref, "stories260K/greedy-bos-256.txt");
  const auto model = Model::load(bin, tok);
  const std::vector<Token> tokens = story_tokens(*model, read_text(ref), 24);
  const std::vector<double> expected = test::reference_logits(*model, tokens);
  Session session(model, SessionOptions{});
  const int vocab = model->config().vocab_size;
  Tensor<float> logits({static_cast<std::int64_t>(tokens.size()), vocab});
  session.evaluate(tokens, logits.view());
  double worst = 0.0;
  for (std::int64_t i = 0; i < logits.size(); ++i) {
    worst = std::max(worst, std::abs(logits.data()[i] - expected[i]));
  }
  EXPECT_LE(worst, kLogitTolerance);
}

INSTANTIATE_TEST_SUITE_P(Shared, RealModel,
                         ::testing::Values("stories260K/stories260K.bin", "tinygqa/tinygqa.bin"));

TEST(Session, PrefillEqualsSingleSteps) {
  const auto model = test::random_model(test::small_gqa_config(), 1);
  std::vector<Token> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back((i * 37 + 11) % 100);
  SessionOptions options;
  options.max_batch = 16;  // forces three chunks
  Session batched(model, options);
  Tensor<float> all({40, 100});
  batched.evaluate(tokens, all.view());

  Session stepped(model, SessionOptions{});
  const auto steps = step_logits(stepped, tokens);
  for (int t = 0; t < 40; ++t) {
    EXPECT_LE(max_abs_diff(Span<const float>(all.view().row(t), 100), steps[t]), kLogitTolerance)
        << "position " << t;
  }
  Session prefilled(model, SessionOptions{});
  const Span<const float> last = prefilled.prefill(tokens);
  EXPECT_LE(max_abs_diff(last, steps.back()), kLogitTolerance);
}

TEST(Session, RewindThenRedoEqualsFreshRun) {
  const auto model = test::random_model(test::small_gqa_config(), 2);
  const std::vector<Token> prefix = {1, 5, 9, 13, 17, 21};
  const std::vector<Token> detour = {60, 61, 62, 63};
  const std::vector<Token> redo = {30, 31, 32};

  Session fresh(model, SessionOptions{});
  fresh.prefill(prefix);
  const auto expected = step_logits(fresh, redo);

  Session s(model, SessionOptions{});
  s.prefill(prefix);
  s.prefill(detour);
  s.rewind(static_cast<int>(detour.size()));
  EXPECT_EQ(s.position(), static_cast<int>(prefix.size()));
  const auto got = step_logits(s, redo);
  for (std::size_t t = 0; t < redo.size(); ++t) EXPECT_EQ(got[t], expected[t]);
}

TEST(Session, SessionsOnOneModelDoNotInterfere) {
  const auto model = test::random_model(test::small_gqa_config(), 3);
  Session alone(model, SessionOptions{});
  const auto expected = step_logits(alone, {7, 8, 9, 10});
  Session a(model, SessionOptions{});
  Session b(model, SessionOptions{});
  std::vector<std::vector<float>> got;
  for (Token t : {7, 8, 9, 10}) {
    const Span<const float> l = a.step(t);
    got.emplace_back(l.begin(), l.end());
    b.step(static_cast<Token>(99 - t));  // writes its own cache in between
  }
  EXPECT_EQ(got, expected);
}

TEST(Session, SessionsRunConcurrentlyOnHostThreads) {
  ModelConfig c = test::small_gqa_config();
  c.dim = 256;  // large enough that each session also starts threads of its own
  c.hidden_dim = 512;
  c.head_dim = 32;
  const auto model = test::random_model(c, 8);
  const std::vector<std::vector<Token>> prompts = {{1, 2, 3, 4, 5, 6}, {9, 8, 7, 6, 5, 4, 3}};
  std::vector<std::vector<float>> expected;
  for (const auto& p : prompts) {
    Session s(model, SessionOptions{});
    const Span<const float> l = s.prefill(p);
    expected.emplace_back(l.begin(), l.end());
  }
  // Host threads from OpenMP itself: kvlm's own regions nest inside them.
  std::vector<std::vector<float>> got(prompts.size());
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 2; ++i) {
    SessionOptions options;
    options.n_threads = 2 - i;  // host thread 1 runs a one-thread session: its scratch index is 0
    Session s(model, options);
    for (int round = 0; round < 20; ++round) {
      s.reset();
      const Span<const float> l = s.prefill(prompts[i]);
      got[i].assign(l.begin(), l.end());
    }
  }
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_LE(max_abs_diff(got[i], expected[i]), kLogitTolerance) << "prompt " << i;
  }
}

TEST(Session, ThreadCountDoesNotChangeLogits) {
  ModelConfig c = test::small_gqa_config();
  c.dim = 256;  // large enough that matmul and attention really split across threads
  c.hidden_dim = 512;
  c.head_dim = 32;
  const auto model = test::random_model(c, 4);
  std::vector<Token> tokens;
  for (int i = 0; i < 48; ++i) tokens.push_back((i * 13 + 5) % 100);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2}) {
    SessionOptions options;
    options.n_threads = threads;
    Session s(model, options);
    Tensor<float> all({48, 100});
    s.evaluate(tokens, all.view());
    results.emplace_back(all.data(), all.data() + all.size());
    const Span<const float> l = s.step(3);
    results.back().insert(results.back().end(), l.begin(), l.end());
  }
  EXPECT_LE(max_abs_diff(results[0], results[1]), kLogitTolerance);
}

TEST(Session, DecodeStepAllocatesNothing) {
  ModelConfig c = test::small_gqa_config();
  c.dim = 256;  // big enough that matmul and attention run on 2 threads
  c.hidden_dim = 512;
  c.head_dim = 32;
  c.max_seq_len = 128;
  const auto model = test::random_model(c, 7);
  for (int threads : {1, 2}) {
    SessionOptions options;
    options.n_threads = threads;
    Session s(model, options);
    s.prefill(std::vector<Token>{1, 2, 3, 4, 5, 6, 7, 8});
    s.step(9);  // the first parallel region starts OpenMP's thread pool
    std::size_t allocations = 0;
    {
      const test::AllocationCounter counter;
      for (Token t = 10; t < 60; ++t) s.step(t);
      allocations = counter.count();
    }
    EXPECT_EQ(allocations, 0u) << "n_threads = " << threads;
  }
}

TEST(SessionErrors, PromptLongerThanContextLeavesSessionUnchanged) {
  const auto model = test::random_model(test::small_gqa_config(), 5);
  SessionOptions options;
  options.max_seq_len = 8;
  Session s(model, options);
  s.prefill(std::vector<Token>{1, 2, 3, 4, 5});
  const Span<const float> first = s.step(6);
  const std::vector<float> before(first.begin(), first.end());
  try {
    s.prefill(std::vector<Token>{1, 2, 3});
    FAIL() << "expected kvlm::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kContextFull);
    EXPECT_NE(std::string(e.what()).find("3 tokens do not fit"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.position(), 6);
  s.rewind(1);
  const Span<const float> again = s.step(6);
  EXPECT_EQ(std::vector<float>(again.begin(), again.end()), before);
}

TEST(SessionErrors, BadTokensAndArguments) {
  const auto model = test::random_model(test::small_gqa_config(), 6);
  Session s(model, SessionOptions{});
  s.prefill(std::vector<Token>{1, 2});
  auto expect_error = [](ErrorCode code, const std::string& needle, auto&& call) {
    try {
      call();
      ADD_FAILURE() << "expected kvlm::Error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(ErrorCode::kInvalidArgument, "token 100 at index 1", [&] { s.prefill(std::vector<Token>{3, 100}); });
  expect_error(ErrorCode::kInvalidArgument, "token -1", [&] { s.step(-1); });
  expect_error(ErrorCode::kInvalidArgument, "no tokens", [&] { s.prefill(std::vector<Token>{}); });
  expect_error(ErrorCode::kInvalidArgument, "rewind(3)", [&] { s.rewind(3); });
  EXPECT_EQ(s.position(), 2);
  Tensor<float> wrong({2, 99});
  expect_error(ErrorCode::kInvalidArgument, "logits must be [2, 100]",
               [&] { s.evaluate(std::vector<Token>{4, 5}, wrong.view()); });
  expect_error(ErrorCode::kTokenizer, "without a tokenizer",
               [&] { s.generate("hi", GenerateOptions{}, nullptr); });
  SessionOptions too_long;
  too_long.max_seq_len = 97;
  expect_error(ErrorCode::kInvalidArgument, "max_seq_len = 97", [&] { Session(model, too_long); });
  SessionOptions no_batch;
  no_batch.max_batch = 0;
  expect_error(ErrorCode::kInvalidArgument, "max_batch = 0", [&] { Session(model, no_batch); });
  EXPECT_EQ(s.position(), 2);
}

}  // namespace
}  // namespace kvlm
