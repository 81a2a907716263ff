#pragma once
// What the fuzz targets share: running a model for a few tokens, and the test models they load
// once (from KVLM_MODELS_DIR, as the tests do). Every target calls the library with the input and
// accepts kvlm::Error; anything else (a crash, a sanitizer report, another exception, a hang)
// is a finding.

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "kvlm/session.hpp"

namespace kvlm::fuzz {

inline std::string models_dir() {
  const char* env = std::getenv("KVLM_MODELS_DIR");
  return env != nullptr && *env != '\0' ? env : KVLM_DEFAULT_MODELS_DIR;
}

// stories260K with its tokenizer: the model session files and tokenizer inputs are checked against.
inline const std::shared_ptr<const Model>& stories260k() {
  static const std::shared_ptr<const Model> model = Model::load(
      models_dir() + "/stories260K/stories260K.bin", models_dir() + "/stories260K/tok512.model");
  return model;
}

// A few decode steps on a model a fuzzer built: they must end in finite logits or an Error.
inline void run_a_few_tokens(const std::shared_ptr<const Model>& model) {
  SessionOptions options;
  options.max_seq_len = 8;
  options.n_threads = 1;
  Session session(model, options);
  const int vocab = model->config().vocab_size;
  Span<const float> logits = session.prefill(std::vector<Token>{1 % vocab, 2 % vocab});
  logits = session.step(3 % vocab);
  for (float l : logits) {
    if (!std::isfinite(l)) std::abort();  // kvlm must have thrown kNumerical
  }
}

}  // namespace kvlm::fuzz
