// random_gguf: writes a seeded random-weight model of a real model's shape as a GGUF file of any
// weight type, carrying the Llama 2 vocabulary, so that speed can be measured at real sizes on
// any machine, and beside llama.cpp on the very same file. Speed does not depend on the values.
//
//   random_gguf SHAPE TYPE OUT [--seed S] [--vocab VOCAB.gguf]
//   SHAPE: stories15M, stories110M, tinyllama-1.1b;  TYPE: as quantize takes it (Q4_0, Q4_K_M, ...)
//   VOCAB: default <models>/llama-spm-vocab/ggml-vocab-llama-spm.gguf

#include <cstdlib>
#include <iostream>
#include <string>

#include "../examples/common.hpp"
#include "kvlm/loaders/gguf.hpp"
#include "kvlm/quantize.hpp"
#include "random_model.hpp"

namespace {

constexpr const char* kUsage =
    "usage: random_gguf SHAPE TYPE OUT [--seed S] [--vocab VOCAB.gguf]\n"
    "  SHAPE  stories15M, stories110M or tinyllama-1.1b\n"
    "  TYPE   F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_K_M or Q5_K_M\n";

kvlm::ModelConfig shape(const std::string& name) {
  kvlm::ModelConfig c;
  c.vocab_size = 32000;
  if (name == "stories15M") {
    c.dim = 288, c.hidden_dim = 768, c.n_layers = 6, c.n_heads = 6, c.n_kv_heads = 6;
    c.max_seq_len = 256;
  } else if (name == "stories110M") {
    c.dim = 768, c.hidden_dim = 2048, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12;
    c.max_seq_len = 1024;
  } else if (name == "tinyllama-1.1b") {
    c.dim = 2048, c.hidden_dim = 5632, c.n_layers = 22, c.n_heads = 32, c.n_kv_heads = 4;
    c.max_seq_len = 2048;
    c.shared_classifier = false;
  } else {
    throw examples::UsageError("unknown SHAPE '" + name + "'");
  }
  c.head_dim = c.dim / c.n_heads;
  return c;
}

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  std::vector<std::string> positional;
  std::uint32_t seed = 1;
  const char* env = std::getenv("KVLM_MODELS_DIR");
  std::string vocab_path = std::string(env != nullptr && *env ? env : KVLM_DEFAULT_MODELS_DIR) +
                           "/llama-spm-vocab/ggml-vocab-llama-spm.gguf";
  while (!args.done()) {
    const std::string arg = args.next();
    if (arg == "--seed") seed = static_cast<std::uint32_t>(examples::parse_int(arg, args.value(arg), 0, 0xFFFFFFFF));
    else if (arg == "--vocab") vocab_path = args.value(arg);
    else if (arg == "-h" || arg == "--help") { std::cout << kUsage; return 0; }
    else if (!arg.empty() && arg[0] == '-') throw examples::UsageError("unknown argument '" + arg + "'");
    else positional.push_back(arg);
  }
  if (positional.size() != 3) throw examples::UsageError("expected SHAPE TYPE OUT");
  const kvlm::ModelConfig config = shape(positional[0]);
  const kvlm::QuantizeRecipe& recipe = kvlm::quantize_recipe(positional[1]);
  const kvlm::TokenizerVocab vocab = kvlm::load_gguf_vocab(vocab_path);
  // std 0.02 as in real checkpoints; norms near 1.
  const kvlm::ModelFile file = kvlm::test::random_model_file(config, seed, 0.02f);
  kvlm::write_gguf(file, recipe, &vocab, positional[2], positional[0] + "-random");
  std::cout << "wrote " << positional[2] << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("random_gguf", kUsage, [&] { return run(argc, argv); });
}
