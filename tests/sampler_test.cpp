// Tests for kvlm::Sampler: every stage of the chain against a reference computed here in double
// precision, reproducibility, errors, and that sample() allocates nothing. Also tests
// AllocationCounter (alloc_counter.hpp), which the no-allocation tests rely on.

#include "kvlm/sampler.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <new>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "alloc_counter.hpp"

namespace kvlm {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The frequency tests draw kDraws tokens and require each token's frequency to be within kSigmas
// binomial standard errors, sqrt(p (1 - p) / kDraws), of its probability, plus 1 / kDraws for the
// discreteness of counts; a token of probability 0 must never be drawn. A correct sampler misses a
// 5-sigma bound with probability about 6e-7 per token, and the seeds are fixed, so the tests are
// deterministic.
constexpr int kDraws = 20000;
constexpr double kSigmas = 5.0;

// Options with every stage off; each test turns on the ones it checks.
SamplerOptions plain_options(float temperature) {
  SamplerOptions options;
  options.temperature = temperature;
  options.top_k = 0;
  options.top_p = 1.0f;
  options.min_p = 0.0f;
  options.repeat_penalty = 1.0f;
  return options;
}

// Uniform in [-scale, scale), from std::mt19937's raw output, which the standard fixes (its
// distributions it does not), so the inputs are the same everywhere.
std::vector<float> random_logits(std::size_t n, std::uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::vector<float> logits(n);
  for (float& logit : logits) {
    const float unit = static_cast<float>(rng() >> 8) * 0x1.0p-24f;
    logit = (2.0f * unit - 1.0f) * scale;
  }
  return logits;
}

// softmax(logits / temperature) in double.
std::vector<double> reference_softmax(const std::vector<float>& logits, double temperature) {
  const double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  double total = 0.0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((logits[i] - max) / temperature);
    total += probs[i];
  }
  for (double& p : probs) p /= total;
  return probs;
}

// Token ids by descending logit, lower id first among equal logits.
std::vector<Token> ids_by_logit(const std::vector<float>& logits) {
  std::vector<Token> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](Token a, Token b) { return logits[a] > logits[b]; });
  return ids;
}

// probs restricted to `support` and renormalised; every other token gets 0.
std::vector<double> restrict_to(const std::vector<double>& probs, const std::set<Token>& support) {
  std::vector<double> restricted(probs.size(), 0.0);
  double total = 0.0;
  for (const Token t : support) total += probs[t];
  for (const Token t : support) restricted[t] = probs[t] / total;
  return restricted;
}

std::vector<double> draw_frequencies(Sampler& sampler, const std::vector<float>& logits,
                                     int n_draws) {
  std::vector<double> frequencies(logits.size(), 0.0);
  for (int i = 0; i < n_draws; ++i) frequencies[sampler.sample(logits, {})] += 1.0;
  for (double& f : frequencies) f /= n_draws;
  return frequencies;
}

void expect_frequencies_match(const std::vector<double>& frequencies,
                              const std::vector<double>& probs, int n_draws) {
  ASSERT_EQ(frequencies.size(), probs.size());
  for (std::size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0.0) {
      EXPECT_EQ(frequencies[i], 0.0) << "token " << i << " is outside the support";
      continue;
    }
    const double tolerance =
        kSigmas * std::sqrt(probs[i] * (1.0 - probs[i]) / n_draws) + 1.0 / n_draws;
    EXPECT_NEAR(frequencies[i], probs[i], tolerance) << "token " << i;
  }
}

// sample() with braced lists, which Span does not take.
Token sample_from(Sampler& sampler, const std::vector<float>& logits,
                  const std::vector<Token>& recent) {
  return sampler.sample(logits, recent);
}

std::vector<Token> draw_sequence(Sampler& sampler, const std::vector<float>& logits, int n) {
  std::vector<Token> tokens;
  for (int i = 0; i < n; ++i) tokens.push_back(sampler.sample(logits, {}));
  return tokens;
}

// ---- greedy ----

TEST(SamplerTest, GreedyPicksTheLargestLogit) {
  Sampler sampler(plain_options(0.0f), 5);
  EXPECT_EQ(sample_from(sampler, {0.1f, 2.0f, -1.0f, 1.9f, 1.99f}, {}), 1);

  const std::vector<float> logits = random_logits(32000, 7, 10.0f);
  Sampler large(plain_options(0.0f), 32000);
  EXPECT_EQ(large.sample(logits, {}),
            std::max_element(logits.begin(), logits.end()) - logits.begin());
}

TEST(SamplerTest, GreedyBreaksTiesTowardTheLowestId) {
  SamplerOptions options;  // top-k, top-p and min-p on: greedy ignores them
  options.temperature = 0.0f;
  Sampler sampler(options, 5);
  EXPECT_EQ(sample_from(sampler, {1.0f, 3.0f, 0.0f, 3.0f, 3.0f}, {}), 1);
  EXPECT_EQ(sample_from(sampler, {2.0f, 2.0f, 2.0f, 2.0f, 2.0f}, {}), 0);
}

// ---- reproducibility ----

TEST(SamplerTest, SameSeedGivesTheSameSequence) {
  const std::vector<float> logits = random_logits(50, 1, 2.0f);
  SamplerOptions options;
  options.seed = 123;
  Sampler a(options, 50);
  Sampler b(options, 50);
  const std::vector<Token> first = draw_sequence(a, logits, 1000);
  EXPECT_EQ(first, draw_sequence(b, logits, 1000));
  // Not trivially equal: the distribution is broad.
  EXPECT_GT(std::set<Token>(first.begin(), first.end()).size(), 10u);
}

TEST(SamplerTest, DifferentSeedGivesADifferentSequence) {
  const std::vector<float> logits = random_logits(50, 1, 2.0f);
  SamplerOptions options;
  options.seed = 1;
  Sampler a(options, 50);
  options.seed = 2;
  Sampler b(options, 50);
  const std::vector<Token> from_a = draw_sequence(a, logits, 1000);
  const std::vector<Token> from_b = draw_sequence(b, logits, 1000);
  int differing = 0;
  for (std::size_t i = 0; i < from_a.size(); ++i) differing += from_a[i] != from_b[i];
  EXPECT_GT(differing, 500);
}

TEST(SamplerTest, ReseedRestartsTheSequence) {
  const std::vector<float> logits = random_logits(50, 2, 2.0f);
  SamplerOptions options;
  options.seed = 99;
  Sampler sampler(options, 50);
  const std::vector<Token> first = draw_sequence(sampler, logits, 100);
  sampler.reseed(99);
  EXPECT_EQ(draw_sequence(sampler, logits, 100), first);

  sampler.reseed(7);
  options.seed = 7;
  Sampler fresh(options, 50);
  EXPECT_EQ(draw_sequence(sampler, logits, 100), draw_sequence(fresh, logits, 100));
}

TEST(SamplerTest, DrawsArePinnedAcrossPlatforms) {
  // splitmix64's first output from state 0, from Vigna's reference implementation.
  EXPECT_EQ(detail::SplitMix64(0).next(), 0xe220a8397b1dcdafULL);

  // Equal logits make every probability exp(0) = 1 exactly, with no libm rounding in play, so
  // the token is floor(u * 8) = the top 3 bits of each splitmix64 output: these, for seed 2024.
  SamplerOptions options = plain_options(1.0f);
  options.seed = 2024;
  Sampler sampler(options, 8);
  const std::vector<Token> expected = {4, 0, 2, 0, 6, 4, 1, 4, 1, 3, 3, 6, 6, 5, 1, 5};
  EXPECT_EQ(draw_sequence(sampler, std::vector<float>(8, 0.5f), 16), expected);
}

TEST(SamplerTest, ThrowingLeavesTheGeneratorUnchanged) {
  const std::vector<float> logits = random_logits(10, 3, 2.0f);
  Sampler a(plain_options(1.0f), 10);
  Sampler b(plain_options(1.0f), 10);
  EXPECT_THROW(sample_from(a, {1.0f, 2.0f}, {}), Error);
  EXPECT_EQ(draw_sequence(a, logits, 50), draw_sequence(b, logits, 50));
}

// ---- the distribution ----

TEST(SamplerTest, FrequenciesMatchTheSoftmax) {
  const std::vector<float> logits = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.5f, 1.2f, 0.8f};
  for (const float temperature : {0.5f, 1.0f, 1.7f}) {
    SCOPED_TRACE(temperature);
    Sampler sampler(plain_options(temperature), 8);
    expect_frequencies_match(draw_frequencies(sampler, logits, kDraws),
                             reference_softmax(logits, temperature), kDraws);
  }
}

TEST(SamplerTest, TopKOfOneIsGreedy) {
  SamplerOptions options;
  options.temperature = 1.0f;
  options.top_k = 1;
  for (std::uint32_t trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits = random_logits(1000, trial, 5.0f);
    options.seed = trial;
    Sampler top_1(options, 1000);
    Sampler greedy(plain_options(0.0f), 1000);
    EXPECT_EQ(top_1.sample(logits, {}), greedy.sample(logits, {})) << "trial " << trial;
  }
  Sampler top_1(options, 4);
  EXPECT_EQ(sample_from(top_1, {0.0f, 5.0f, 5.0f, 1.0f}, {}), 1);
}

TEST(SamplerTest, TopKKeepsTheKLargest) {
  constexpr int kK = 5;
  const std::vector<float> logits = random_logits(100, 4, 1.0f);
  const std::vector<Token> ids = ids_by_logit(logits);
  const std::set<Token> top(ids.begin(), ids.begin() + kK);

  SamplerOptions options = plain_options(1.0f);
  options.top_k = kK;
  Sampler sampler(options, 100);
  expect_frequencies_match(draw_frequencies(sampler, logits, kDraws),
                           restrict_to(reference_softmax(logits, 1.0), top), kDraws);
}

TEST(SamplerTest, TopKTiesAtTheBoundaryKeepTheLowerIds) {
  SamplerOptions options = plain_options(1.0f);
  options.top_k = 2;
  Sampler sampler(options, 4);
  const std::vector<float> logits = {1.0f, 2.0f, 1.0f, 1.0f};
  expect_frequencies_match(draw_frequencies(sampler, logits, kDraws),
                           restrict_to(reference_softmax(logits, 1.0), {0, 1}), kDraws);
}

// The smallest set of most probable tokens whose mass is >= top_p, from double probabilities.
// Fails the test if the mass is within `margin` of top_p at the cut, where float and double
// rounding could disagree about it.
std::set<Token> reference_nucleus(const std::vector<double>& probs, double top_p, double margin) {
  std::vector<Token> ids(probs.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](Token a, Token b) { return probs[a] > probs[b]; });
  std::set<Token> nucleus;
  double mass = 0.0;
  for (const Token t : ids) {
    const double before = mass;
    nucleus.insert(t);
    mass += probs[t];
    EXPECT_GT(std::abs(mass - top_p), margin) << "the test's input is too close to the cut";
    if (mass >= top_p) {
      EXPECT_LT(before, top_p - margin);
      break;
    }
  }
  return nucleus;
}

TEST(SamplerTest, TopPKeepsTheNucleus) {
  const std::vector<float> logits = random_logits(20, 5, 3.0f);
  for (const float top_p : {0.3f, 0.7f, 0.9f}) {
    SCOPED_TRACE(top_p);
    SamplerOptions options = plain_options(0.9f);
    options.top_p = top_p;
    Sampler sampler(options, 20);
    const std::vector<double> probs = reference_softmax(logits, 0.9);
    const std::set<Token> nucleus = reference_nucleus(probs, top_p, 1e-4);
    ASSERT_LT(nucleus.size(), logits.size());
    expect_frequencies_match(draw_frequencies(sampler, logits, kDraws),
                             restrict_to(probs, nucleus), kDraws);
  }
}

TEST(SamplerTest, TopPKeepsTheNucleusOfALargeVocabulary) {
  // A nucleus of hundreds of tokens: sample() sorts it out in several batches.
  constexpr int kVocab = 1000;
  const std::vector<float> logits = random_logits(kVocab, 9, 6.0f);
  SamplerOptions options = plain_options(1.0f);
  options.top_p = 0.85f;
  Sampler sampler(options, kVocab);
  const std::vector<double> probs = reference_softmax(logits, 1.0);
  const std::set<Token> nucleus = reference_nucleus(probs, options.top_p, 1e-5);
  ASSERT_GT(nucleus.size(), 128u) << "should take three batches: to 64, 128, then 256";
  ASSERT_LT(nucleus.size(), 256u);
  expect_frequencies_match(draw_frequencies(sampler, logits, kDraws),
                           restrict_to(probs, nucleus), kDraws);
}

TEST(SamplerTest, TopPAlwaysKeepsTheMostLikelyToken) {
  SamplerOptions options = plain_options(1.0f);
  options.top_p = 1e-6f;
  options.seed = 5;
  Sampler sampler(options, 4);
  const std::vector<float> logits = {0.0f, 0.1f, 0.3f, 0.2f};
  for (const Token t : draw_sequence(sampler, logits, 100)) EXPECT_EQ(t, 2);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  // Probabilities 0.5, 0.3, 0.1, 0.06, 0.04 at temperature 1: min_p = 0.15 cuts at 0.075.
  std::vector<float> logits;
  for (const float p : {0.5f, 0.3f, 0.1f, 0.06f, 0.04f}) logits.push_back(std::log(p));
  const std::vector<double> probs = reference_softmax(logits, 1.0);
  const double threshold = 0.15 * *std::max_element(probs.begin(), probs.end());
  std::set<Token> kept;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    ASSERT_GT(std::abs(probs[i] - threshold), 1e-3) << "the test's input is too close to the cut";
    if (probs[i] >= threshold) kept.insert(static_cast<Token>(i));
  }
  ASSERT_EQ(kept, (std::set<Token>{0, 1, 2}));

  SamplerOptions options = plain_options(1.0f);
  options.min_p = 0.15f;
  Sampler sampler(options, 5);
  expect_frequencies_match(draw_frequencies(sampler, logits, kDraws), restrict_to(probs, kept),
                           kDraws);
}

TEST(SamplerTest, StagesApplyInTheDocumentedOrder) {
  // top-k on logits, then softmax with temperature over those, then top-p, then min-p.
  constexpr int kVocab = 200;
  constexpr double kTemperature = 0.6;
  const std::vector<float> logits = random_logits(kVocab, 6, 20.0f);
  SamplerOptions options;
  options.temperature = static_cast<float>(kTemperature);
  options.top_k = 12;
  options.top_p = 0.8f;
  options.min_p = 0.5f;
  Sampler sampler(options, kVocab);

  const std::vector<Token> ids = ids_by_logit(logits);
  const std::set<Token> top_k(ids.begin(), ids.begin() + options.top_k);
  const std::vector<double> after_top_k =
      restrict_to(reference_softmax(logits, kTemperature), top_k);
  const std::set<Token> nucleus = reference_nucleus(after_top_k, options.top_p, 1e-4);
  const std::vector<double> after_top_p = restrict_to(after_top_k, nucleus);
  const double threshold =
      options.min_p * *std::max_element(after_top_p.begin(), after_top_p.end());
  std::set<Token> kept;
  for (const Token t : nucleus) {
    ASSERT_GT(std::abs(after_top_p[t] - threshold), 1e-4);
    if (after_top_p[t] >= threshold) kept.insert(t);
  }
  ASSERT_LT(kept.size(), nucleus.size()) << "min-p should drop something for this input";
  ASSERT_LT(nucleus.size(), top_k.size()) << "top-p should drop something for this input";
  ASSERT_GT(kept.size(), 1u);
  expect_frequencies_match(draw_frequencies(sampler, logits, kDraws),
                           restrict_to(after_top_p, kept), kDraws);
}

TEST(SamplerTest, NonFiniteLogits) {
  // NaN is treated as -inf; -inf is never drawn.
  Sampler sampler(plain_options(1.0f), 4);
  expect_frequencies_match(draw_frequencies(sampler, {-kInf, 0.0f, kNaN, 0.0f}, 2000),
                           {0.0, 0.5, 0.0, 0.5}, 2000);
  // Tokens at +inf share all the probability.
  expect_frequencies_match(draw_frequencies(sampler, {1.0f, kInf, 3.0f, kInf}, 2000),
                           {0.0, 0.5, 0.0, 0.5}, 2000);
  Sampler greedy(plain_options(0.0f), 4);
  EXPECT_EQ(sample_from(greedy, {1.0f, kInf, 3.0f, kInf}, {}), 1);
  EXPECT_EQ(sample_from(greedy, {kNaN, -kInf, -1.0f, kNaN}, {}), 2);

  for (Sampler* s : {&sampler, &greedy}) {
    try {
      sample_from(*s, {-kInf, kNaN, -kInf, -kInf}, {});
      ADD_FAILURE() << "every logit -inf or NaN should throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    }
  }
}

// ---- repetition penalty ----

SamplerOptions greedy_with_penalty(float penalty, int last_n) {
  SamplerOptions options = plain_options(0.0f);
  options.repeat_penalty = penalty;
  options.repeat_last_n = last_n;
  return options;
}

TEST(SamplerTest, RepeatPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  Sampler sampler(greedy_with_penalty(1.5f, 64), 4);
  // 2.0 / 1.5 = 1.33 < 1.5
  EXPECT_EQ(sample_from(sampler, {2.0f, 1.5f, -1.0f, -1.2f}, {}), 0);
  EXPECT_EQ(sample_from(sampler, {2.0f, 1.5f, -1.0f, -1.2f}, {0}), 1);
  // -1.0 * 1.5 = -1.5 < -1.2
  EXPECT_EQ(sample_from(sampler, {-3.0f, -3.0f, -1.0f, -1.2f}, {2}), 3);
  // Once per distinct token: 2.0 / 1.5 = 1.33 > 1.2, whereas three times would give 0.59.
  EXPECT_EQ(sample_from(sampler, {2.0f, 1.0f, 1.2f, 0.0f}, {0, 0, 0}), 0);
  // A penalty below 1 rewards repeats.
  Sampler reward(greedy_with_penalty(0.5f, 64), 4);
  EXPECT_EQ(sample_from(reward, {2.0f, 1.5f, 0.0f, 0.0f}, {1}), 1);
}

TEST(SamplerTest, RepeatPenaltyLooksAtTheLastNTokensOnly) {
  const std::vector<float> logits = {2.0f, 1.5f, 0.0f};
  const std::vector<Token> recent = {0, 2};
  Sampler last_1(greedy_with_penalty(1.5f, 1), 3);
  EXPECT_EQ(last_1.sample(logits, recent), 0);  // only token 2 is penalised
  Sampler last_2(greedy_with_penalty(1.5f, 2), 3);
  EXPECT_EQ(last_2.sample(logits, recent), 1);
  Sampler last_0(greedy_with_penalty(1.5f, 0), 3);
  EXPECT_EQ(last_0.sample(logits, recent), 0);
}

TEST(SamplerTest, RepeatPenaltyMatchesTheFormulaOnRandomInputs) {
  constexpr int kVocab = 64;
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const std::vector<float> logits = random_logits(kVocab, 100 + trial, 2.0f);
    std::vector<Token> recent(30);
    for (Token& t : recent) t = static_cast<Token>(rng() % 8);  // few ids: many repeats
    const int last_n = static_cast<int>(rng() % 40);
    const float penalty = std::vector<float>{0.5f, 1.3f, 2.0f}[rng() % 3];

    std::vector<float> expected = logits;
    const std::size_t start = recent.size() - std::min<std::size_t>(recent.size(), last_n);
    for (const Token t : std::set<Token>(recent.begin() + start, recent.end())) {
      expected[t] = expected[t] > 0.0f ? expected[t] / penalty : expected[t] * penalty;
    }
    Sampler sampler(greedy_with_penalty(penalty, last_n), kVocab);
    EXPECT_EQ(sampler.sample(logits, recent),
              std::max_element(expected.begin(), expected.end()) - expected.begin())
        << "trial " << trial;
  }
}

TEST(SamplerTest, RepeatPenaltyRejectsATokenOutOfRange) {
  Sampler sampler(greedy_with_penalty(1.3f, 2), 4);
  try {
    sample_from(sampler, {0.0f, 1.0f, 2.0f, 3.0f}, {0, 99});
    ADD_FAILURE() << "expected kvlm::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("99"), std::string::npos) << e.what();
  }
  EXPECT_THROW(sample_from(sampler, {0.0f, 1.0f, 2.0f, 3.0f}, {-1}), Error);
  // Tokens the penalty does not look at are not checked.
  EXPECT_EQ(sample_from(sampler, {0.0f, 1.0f, 2.0f, 3.0f}, {99, 0, 1}), 3);
  Sampler off(greedy_with_penalty(1.0f, 2), 4);
  EXPECT_EQ(sample_from(off, {0.0f, 1.0f, 2.0f, 3.0f}, {99}), 3);
}

// ---- errors ----

TEST(SamplerTest, WrongLogitsSizeThrows) {
  Sampler sampler(SamplerOptions{}, 4);
  for (const std::vector<float>& logits : {std::vector<float>(3), std::vector<float>(5)}) {
    try {
      sampler.sample(logits, {});
      ADD_FAILURE() << "expected kvlm::Error for " << logits.size() << " logits";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("vocab_size"), std::string::npos) << e.what();
    }
  }
}

TEST(SamplerOptionsTest, DefaultsAndBoundaryValuesAreValid) {
  EXPECT_NO_THROW(SamplerOptions{}.validate());
  SamplerOptions options;
  options.temperature = 0.0f;
  options.top_k = 0;
  options.top_p = 1.0f;
  options.min_p = 1.0f;
  options.repeat_last_n = 0;
  EXPECT_NO_THROW(options.validate());
  options.min_p = 0.0f;
  EXPECT_NO_THROW(options.validate());
}

TEST(SamplerOptionsTest, ValidateNamesTheFieldAndValue) {
  struct Case {
    const char* field;
    const char* value;  // as the message prints it
    std::function<void(SamplerOptions&)> spoil;
  };
  const std::vector<Case> cases = {
      {"temperature", "-0.1", [](SamplerOptions& o) { o.temperature = -0.1f; }},
      {"temperature", "nan", [](SamplerOptions& o) { o.temperature = kNaN; }},
      {"temperature", "inf", [](SamplerOptions& o) { o.temperature = kInf; }},
      {"top_k", "-1", [](SamplerOptions& o) { o.top_k = -1; }},
      {"top_p", "0", [](SamplerOptions& o) { o.top_p = 0.0f; }},
      {"top_p", "1.01", [](SamplerOptions& o) { o.top_p = 1.01f; }},
      {"top_p", "nan", [](SamplerOptions& o) { o.top_p = kNaN; }},
      {"min_p", "-0.01", [](SamplerOptions& o) { o.min_p = -0.01f; }},
      {"min_p", "1.5", [](SamplerOptions& o) { o.min_p = 1.5f; }},
      {"min_p", "nan", [](SamplerOptions& o) { o.min_p = kNaN; }},
      {"repeat_penalty", "0", [](SamplerOptions& o) { o.repeat_penalty = 0.0f; }},
      {"repeat_penalty", "-1", [](SamplerOptions& o) { o.repeat_penalty = -1.0f; }},
      {"repeat_penalty", "nan", [](SamplerOptions& o) { o.repeat_penalty = kNaN; }},
      {"repeat_penalty", "inf", [](SamplerOptions& o) { o.repeat_penalty = kInf; }},
      {"repeat_last_n", "-1", [](SamplerOptions& o) { o.repeat_last_n = -1; }},
  };
  for (const Case& c : cases) {
    SamplerOptions options;
    c.spoil(options);
    for (const bool construct : {false, true}) {
      try {
        if (construct) {
          Sampler sampler(options, 10);
        } else {
          options.validate();
        }
        ADD_FAILURE() << c.field << " = " << c.value << " should be rejected";
      } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
        EXPECT_NE(message.find(std::string(c.field) + " = " + c.value), std::string::npos)
            << message;
      }
    }
  }
}

TEST(SamplerOptionsTest, SamplerRejectsAnEmptyVocabulary) {
  for (const int vocab_size : {0, -5}) {
    try {
      Sampler sampler(SamplerOptions{}, vocab_size);
      ADD_FAILURE() << "vocab_size " << vocab_size << " should be rejected";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("vocab_size"), std::string::npos) << e.what();
    }
  }
}

// ---- allocation ----

TEST(SamplerTest, SampleDoesNotAllocate) {
  constexpr int kVocab = 32000;
  const std::vector<float> logits = random_logits(kVocab, 8, 8.0f);
  std::vector<Token> recent(200);
  for (std::size_t i = 0; i < recent.size(); ++i) recent[i] = static_cast<Token>(i * 37 % kVocab);

  SamplerOptions defaults;
  defaults.repeat_penalty = 1.1f;
  SamplerOptions greedy = defaults;
  greedy.temperature = 0.0f;
  SamplerOptions full_sort = defaults;  // top-k off, top-p on: the full-sort path
  full_sort.top_k = 0;
  full_sort.top_p = 0.9f;
  SamplerOptions min_p_only = plain_options(1.0f);
  min_p_only.min_p = 0.05f;

  for (const SamplerOptions& options : {defaults, greedy, full_sort, min_p_only,
                                        plain_options(1.0f)}) {
    Sampler sampler(options, kVocab);
    Token sink = 0;
    const test::AllocationCounter allocations;
    for (int step = 0; step < 10; ++step) sink ^= sampler.sample(logits, recent);
    const std::size_t count = allocations.count();
    EXPECT_EQ(count, 0u) << "top_k " << options.top_k << ", top_p " << options.top_p
                         << ", temperature " << options.temperature << " (token " << sink << ")";
  }
}

}  // namespace
}  // namespace kvlm

// ---- AllocationCounter ----

namespace kvlm::test {
namespace {

// Where allocated pointers escape to, so that the optimiser cannot elide a new/delete pair.
void* volatile g_sink = nullptr;

template <typename T>
T* escape(T* p) {
  g_sink = p;
  return p;
}

struct alignas(64) Wide {
  float lanes[16];
};

TEST(AllocationCounterTest, CountsEveryFormOfNew) {
  const AllocationCounter counter;
  delete escape(new int(1));
  delete[] escape(new int[3]);
  delete escape(new (std::nothrow) int);
  delete[] escape(new (std::nothrow) int[3]);
  Wide* wide = escape(new Wide);
  const bool aligned = reinterpret_cast<std::uintptr_t>(wide) % alignof(Wide) == 0;
  delete wide;
  delete[] escape(new Wide[2]);
  delete escape(new (std::nothrow) Wide);
  delete[] escape(new (std::nothrow) Wide[2]);
  ::operator delete(escape(::operator new(0)));
  const std::size_t count = counter.count();
  EXPECT_EQ(count, 9u);
  EXPECT_TRUE(aligned);
}

TEST(AllocationCounterTest, CountsNothingWhenNothingAllocates) {
  std::vector<int> values(100, 1);
  const AllocationCounter counter;
  const int sum = std::accumulate(values.begin(), values.end(), 0);
  const std::size_t count = counter.count();
  EXPECT_EQ(count, 0u);
  EXPECT_EQ(sum, 100);
}

TEST(AllocationCounterTest, NestsAndCountsOtherThreads) {
  std::thread([] {}).join();  // any one-time cost of the first thread, outside the counts
  const AllocationCounter outer;
  std::size_t idle = 0;
  {
    const AllocationCounter inner;
    std::thread([] {}).join();
    idle = inner.count();  // whatever starting a thread costs
  }
  const AllocationCounter inner;
  std::thread([] { delete escape(new int(2)); }).join();
  const std::size_t busy = inner.count();
  const std::size_t total = outer.count();
  EXPECT_EQ(busy, idle + 1);
  EXPECT_EQ(total, idle + busy);
}

}  // namespace
}  // namespace kvlm::test
