// The corruption sweep: every small model file in ../shared/models (llama2.c and GGUF, every
// weight type), mutated many times with a fixed seed (bits flipped in the header and metadata or
// anywhere, truncations, header integers set to extremes, words moved within the header), then
// loaded and run for a few decode steps. Each attempt must end in a kvlm::Error or in finite
// logits: never a crash, a sanitizer report, another exception or a hang. CI runs it under
// AddressSanitizer and UndefinedBehaviorSanitizer too.

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kvlm/session.hpp"
#include "models.hpp"

namespace kvlm {
namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// One seeded mutation of `bytes`, and its name for messages.
std::string mutate(const std::string& bytes, std::mt19937_64& rng, std::string& what) {
  std::string m = bytes;
  // Headers, metadata and GGUF's tensor table sit at the start: most mutations aim there.
  const std::size_t head = std::min<std::size_t>(m.size(), 64 * 1024);
  const auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  switch (pick(5)) {
    case 0: {  // bits flipped in the head
      const std::size_t n = 1 + pick(8);
      for (std::size_t i = 0; i < n; ++i) m[pick(head)] ^= static_cast<char>(1u << pick(8));
      what = std::to_string(n) + " bits flipped in the head";
      break;
    }
    case 1: {  // bits flipped anywhere (weights: NaN, infinities, huge values)
      const std::size_t n = 1 + pick(32);
      for (std::size_t i = 0; i < n; ++i) m[pick(m.size())] ^= static_cast<char>(1u << pick(8));
      what = std::to_string(n) + " bits flipped anywhere";
      break;
    }
    case 2: {  // truncated
      m.resize(pick(m.size()));
      what = "truncated to " + std::to_string(m.size()) + " bytes";
      break;
    }
    case 3: {  // an aligned 4- or 8-byte integer of the head set to an extreme
      static const std::uint64_t kExtremes[] = {0,          1,          0x7fffffffu, 0x80000000u,
                                                0xffffffffu, 1ull << 32, 1ull << 62,  ~0ull};
      const std::size_t width = pick(2) == 0 ? 4 : 8;
      const std::size_t at = pick(head / width) * width;
      const std::uint64_t value = kExtremes[pick(8)];
      for (std::size_t i = 0; i < width && at + i < m.size(); ++i) {
        m[at + i] = static_cast<char>(value >> (8 * i));
      }
      what = std::to_string(width) + "-byte integer at " + std::to_string(at) + " set to " +
             std::to_string(value);
      break;
    }
    default: {  // an 8-byte word of the head copied over another (offsets, lengths, counts)
      const std::size_t from = pick(head - 8), to = pick(head - 8);
      m.replace(to, 8, m, from, 8);
      what = "8 bytes moved from " + std::to_string(from) + " to " + std::to_string(to);
      break;
    }
  }
  return m;
}

// Loads the file and decodes a few tokens; returns "" when that ends in a kvlm::Error (its code
// goes to *outcome) or finite logits (*outcome "ran"), else what went wrong.
std::string load_and_run(const std::string& path, std::string* outcome = nullptr) {
  try {
    const auto model = Model::load(path);
    SessionOptions options;
    options.max_seq_len = 8;
    options.n_threads = 1;
    Session session(model, options);
    const int vocab = model->config().vocab_size;
    Span<const float> logits = session.prefill(std::vector<Token>{1 % vocab, 2 % vocab, 3 % vocab});
    for (int i = 0; i < 2; ++i) logits = session.step((7 * i + 5) % vocab);
    for (float l : logits) {
      if (!std::isfinite(l)) return "logits are not finite, and no kvlm::Error said so";
    }
    if (outcome) *outcome = "ran";
  } catch (const Error& e) {
    if (outcome) *outcome = to_string(e.code());
  } catch (const std::exception& e) {
    return std::string("threw a non-kvlm exception: ") + e.what();
  }
  return "";
}

TEST(CorruptionSweep, EveryMutationEndsInAnErrorOrFiniteLogits) {
  KVLM_REQUIRE_MODEL(dir, "stories260K");
  const std::string models = test::models_dir();
  const std::vector<std::string> files = {
      "stories260K/stories260K.bin",      "stories260K/stories260K-F32.gguf",
      "stories260K/stories260K-F16.gguf", "tinygqa/tinygqa.bin",
      "tinygqa/tinygqa-F32.gguf",         "tinygqa/tinygqa-F16.gguf",
      "tinygqa/tinygqa-BF16.gguf",        "tinygqa/tinygqa-Q8_0.gguf",
      "tinygqa/tinygqa-Q4_0.gguf",        "tinygqa/tinygqa-Q4_K_M.gguf",
      "tinygqa/tinygqa-Q5_K_M.gguf",      "tinygqa/tinygqa-Q6_K.gguf"};
  constexpr int kMutationsPerFile = 60;
  const std::string path = ::testing::TempDir() + "kvlm_mutated_model";
  const auto start = std::chrono::steady_clock::now();
  std::map<std::string, int> outcomes;
  for (std::size_t f = 0; f < files.size(); ++f) {
    const std::string& file = files[f];
    const std::string original = read_bytes(models + "/" + file);
    ASSERT_GT(original.size(), 64u * 1024) << file;
    ASSERT_EQ(load_and_run(models + "/" + file), "") << file << " itself";
    std::mt19937_64 rng(0x6b766c6d + f);
    for (int i = 0; i < kMutationsPerFile; ++i) {
      std::string what;
      const std::string mutated = mutate(original, rng, what);
      std::ofstream(path, std::ios::binary | std::ios::trunc) << mutated;
      std::string outcome;
      const std::string failure = load_and_run(path, &outcome);
      ++outcomes[outcome];
      EXPECT_EQ(failure, "") << file << ", mutation " << i << ": " << what;
      if (!failure.empty()) {  // keep the input for the regression test it will become
        std::ofstream(path + "-failure-" + std::to_string(i), std::ios::binary) << mutated;
      }
    }
  }
  std::remove(path.c_str());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string tally;
  for (const auto& [outcome, count] : outcomes) tally += " " + outcome + ": " + std::to_string(count) + ";";
  std::printf("[ sweep    ] %zu files x %d mutations in %.1f s;%s\n", files.size(),
              kMutationsPerFile, seconds, tally.c_str());
  // Not vacuous: the mutations reach the parsers and the arithmetic.
  EXPECT_GT(outcomes["format"], 0);
  EXPECT_GT(outcomes["numerical"], 0);
  EXPECT_GT(outcomes["ran"], 0);
}

}  // namespace
}  // namespace kvlm
