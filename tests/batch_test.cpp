// Batcher: sessions that decode together in shared forward passes get exactly the tokens each gets
// alone (greedy and seeded), while joining and leaving at different times, beside a prompt that
// is fed in chunks, with narrow caches, and over quantized GQA weights; the passes really are
// shared; cancellation and misuse are clean errors. In the threading binary, so that
// scripts/test-threads runs the batcher's queue under ThreadSanitizer.

#include "kvlm/batch.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "expect_error.hpp"
#include "kvlm/session.hpp"
#include "models.hpp"
#include "step_logits.hpp"

namespace kvlm {
namespace {

using test::throws_error;

struct Request {
  std::string prompt;
  float temperature;
  std::uint64_t seed;
  int max_new_tokens;
  DType kv_type = DType::kF32;
  std::chrono::milliseconds start_after{0};  // joins the batch later
};

std::vector<Token> run_request(const std::shared_ptr<const Model>& model, const Request& r,
                               const std::shared_ptr<Batcher>& batcher) {
  SessionOptions so;
  so.n_threads = 1;
  so.kv_type = r.kv_type;
  so.batcher = batcher;
  Session session(model, so);
  GenerateOptions options;
  options.max_new_tokens = r.max_new_tokens;
  options.sampler.temperature = r.temperature;
  options.sampler.seed = r.seed;
  std::this_thread::sleep_for(r.start_after);
  session.generate(r.prompt, options, nullptr);
  session.generate(" and then", options, nullptr);  // the same session goes on
  return {session.tokens().begin(), session.tokens().end()};
}

// Each request alone, then all of them at once on their own threads through one batcher.
void expect_batched_equals_alone(const std::shared_ptr<const Model>& model,
                                 const std::vector<Request>& requests, BatcherOptions bo) {
  std::vector<std::vector<Token>> alone;
  for (const Request& r : requests) alone.push_back(run_request(model, r, nullptr));
  const auto batcher = std::make_shared<Batcher>(model, bo);
  std::vector<std::vector<Token>> together(requests.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = run_request(model, requests[i], batcher); });
  }
  for (std::thread& t : threads) t.join();
  for (std::size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i], alone[i]) << "request " << i << " ('" << requests[i].prompt << "')";
  }
  const Batcher::Stats stats = batcher->stats();
  // The passes were shared: fewer passes than the sessions' steps, several sequences in some.
  std::int64_t steps = 0;
  for (const auto& tokens : alone) steps += static_cast<std::int64_t>(tokens.size());
  EXPECT_GE(stats.most_sequences, 2);
  EXPECT_LT(stats.passes, steps);
  EXPECT_LE(stats.rows, steps);
}

TEST(Batcher, SessionsDecodingTogetherGetWhatEachGetsAlone) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  // Different prompt lengths, greedy and seeded, different lengths (sessions leave early), and
  // two that join late (continuous batching).
  expect_batched_equals_alone(model,
                              {{"Once upon a time", 0.0f, 1, 60},
                               {"The little dog", 0.9f, 2, 20},
                               {"Lily and Ben went to the park to play with a ball", 1.2f, 3, 45},
                               {"One day", 0.0f, 4, 30, DType::kF32, std::chrono::milliseconds(20)},
                               {"A cat", 0.7f, 5, 50, DType::kF32, std::chrono::milliseconds(50)}},
                              BatcherOptions{});
}

// A long prompt with a small pass: it runs in chunks of the rows the decoders leave, and nobody
// waits for all of it.
TEST(Batcher, LongPromptRunsInChunksBesideDecoders) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  std::string long_prompt;
  for (int i = 0; i < 12; ++i) long_prompt += "Tim had a red ball and he liked to play. ";
  BatcherOptions bo;
  bo.max_rows = 8;
  expect_batched_equals_alone(model,
                              {{"Once upon a time", 0.0f, 1, 80},
                               {"The sun", 0.8f, 2, 80},
                               {long_prompt, 0.0f, 3, 20, DType::kF32, std::chrono::milliseconds(10)}},
                              bo);
}

// Quantized GQA weights and narrow caches, side by side in one batcher.
TEST(Batcher, QuantizedWeightsAndMixedCacheTypes) {
  KVLM_REQUIRE_MODEL(path, "tinygqa/tinygqa-Q4_0.gguf");
  const std::shared_ptr<const Model> model = Model::load(path);
  expect_batched_equals_alone(model,
                              {{"hello", 0.0f, 1, 24, DType::kF32},
                               {"abc", 0.0f, 2, 24, DType::kF16},
                               {"x y z", 1.0f, 3, 24, DType::kQ8_0},
                               {"the end", 0.8f, 4, 24, DType::kBF16}},
                              BatcherOptions{});
}

// Logits of a session stepping through a batcher beside another equal those of the same session
// alone, to float rounding (the batch's products sum in another order).
TEST(Batcher, LogitsMatchASessionAlone) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  const std::vector<Token> prompt = model->tokenizer().encode("Once upon a time there was", true);
  SessionOptions so;
  so.n_threads = 1;
  Session alone(model, so);
  const std::vector<float> expected = test::step_logits(alone, prompt);
  so.batcher = std::make_shared<Batcher>(model);
  Session batched(model, so), other(model, so);
  std::thread noise([&] {
    for (int i = 0; i < 40; ++i) other.step(static_cast<Token>(5 + i));
  });
  const std::vector<float> got = test::step_logits(batched, prompt);
  noise.join();
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], expected[i], 1e-4f) << "logit " << i % 512 << " after token " << i / 512;
  }
}

// Decoders that fill every row of a pass cannot starve a prompt: it gets a row each pass, so it is
// done long before they are.
TEST(Batcher, DecodersFillingThePassDoNotStarveAPrompt) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  BatcherOptions bo;
  bo.max_rows = 2;
  SessionOptions so;
  so.batcher = std::make_shared<Batcher>(model, bo);
  std::atomic<int> decoders_done{0};
  int decoders_done_when_prompt_was = -1;
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      Session s(model, so);
      s.prefill(std::vector<Token>{1, static_cast<Token>(400 + i)});
      for (int t = 0; t < 200; ++t) s.step(static_cast<Token>(300 + t % 50));
      ++decoders_done;
    });
  }
  threads.emplace_back([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the decoders are under way
    Session s(model, so);
    std::vector<Token> prompt(100, 403);
    prompt[0] = 1;
    s.prefill(prompt);
    decoders_done_when_prompt_was = decoders_done.load();
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(decoders_done_when_prompt_was, 0);
}

// A session cancelled while its prompt is fed in chunks beside decoders: kCancelled, its
// position unchanged, and the others get what they get alone.
TEST(Batcher, CancelBesideOthersLeavesEveryoneRight) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  const Request decoder{"Once upon a time", 0.0f, 1, 40};
  const std::vector<Token> alone = run_request(model, decoder, nullptr);
  BatcherOptions bo;
  bo.max_rows = 4;
  const auto batcher = std::make_shared<Batcher>(model, bo);
  std::vector<Token> together;
  std::thread other([&] { together = run_request(model, decoder, batcher); });
  std::atomic<int> asked{0};
  SessionOptions so;
  so.batcher = batcher;
  so.cancel = [&] { return ++asked > 10; };  // some passes into the prompt
  Session s(model, so);
  std::vector<Token> prompt(200, 403);
  prompt[0] = 1;
  EXPECT_TRUE(throws_error([&] { s.prefill(prompt); }, ErrorCode::kCancelled, {"cancelled"}));
  EXPECT_EQ(s.position(), 0);
  other.join();
  EXPECT_EQ(together, alone);
}

TEST(Batcher, CancelLeavesTheSessionAsItWas) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  std::atomic<bool> stop{false};
  SessionOptions so;
  so.batcher = std::make_shared<Batcher>(model);
  so.cancel = [&] { return stop.load(); };
  Session session(model, so);
  session.prefill(std::vector<Token>{1, 403, 407});
  stop = true;
  EXPECT_TRUE(throws_error([&] { session.step(261); }, ErrorCode::kCancelled, {"cancelled"}));
  EXPECT_EQ(session.position(), 3);
  stop = false;
  SessionOptions plain;
  Session reference(model, plain);
  reference.prefill(std::vector<Token>{1, 403, 407});
  const Span<const float> want = reference.step(261);
  const Span<const float> got = session.step(261);
  for (std::size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4f);
}

TEST(Batcher, MisuseIsAnError) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  const std::shared_ptr<const Model> another = Model::load(bin, tok);
  SessionOptions so;
  so.batcher = std::make_shared<Batcher>(another);
  EXPECT_TRUE(throws_error([&] { Session(model, so); }, ErrorCode::kInvalidArgument,
                           {"the batcher serves another model"}));
  EXPECT_TRUE(throws_error([&] { Batcher(nullptr); }, ErrorCode::kInvalidArgument, {"needs a model"}));
  BatcherOptions zero;
  zero.max_rows = 0;
  EXPECT_TRUE(throws_error([&] { Batcher(model, zero); }, ErrorCode::kInvalidArgument,
                           {"max_rows = 0"}));
}

}  // namespace
}  // namespace kvlm
