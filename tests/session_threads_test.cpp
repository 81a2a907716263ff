// One Model shared by sessions on several host threads: each session gets exactly the tokens it
// gets alone (greedy and seeded), whatever the others do at the same time. A binary of its own so
// that scripts/test-threads can build it with ThreadSanitizer, which then checks that the sharing
// is free of data races.

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kvlm/session.hpp"
#include "models.hpp"

namespace kvlm {
namespace {

struct Job {
  std::string prompt;
  float temperature;
  std::uint64_t seed;
};

std::vector<Token> generate_tokens(const std::shared_ptr<const Model>& model, const Job& job,
                                   int n_threads) {
  SessionOptions so;
  so.n_threads = n_threads;
  Session session(model, so);
  GenerateOptions options;
  options.max_new_tokens = 40;
  options.sampler.temperature = job.temperature;
  options.sampler.seed = job.seed;
  session.generate(job.prompt, options, nullptr);
  session.generate(" and then", options, nullptr);  // a second call on the same session
  return {session.tokens().begin(), session.tokens().end()};
}

TEST(SessionThreads, FourSessionsOnFourThreadsGetWhatEachGetsAlone) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok, "stories260K/tok512.model");
  const std::shared_ptr<const Model> model = Model::load(bin, tok);
  const std::vector<Job> jobs = {{"Once upon a time", 0.0f, 1},
                                 {"The little dog", 0.9f, 2},
                                 {"Lily and Ben", 1.2f, 3},
                                 {"One day", 0.0f, 4}};
  std::vector<std::vector<Token>> alone;
  for (const Job& job : jobs) alone.push_back(generate_tokens(model, job, 1));

  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<Token>> together(jobs.size());
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      threads.emplace_back([&, i] { together[i] = generate_tokens(model, jobs[i], 1 + (i % 2)); });
    }
    for (std::thread& t : threads) t.join();
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      EXPECT_EQ(together[i], alone[i]) << "job " << i << ", round " << round;
    }
  }
  EXPECT_NE(alone[0], alone[1]);
}

}  // namespace
}  // namespace kvlm
