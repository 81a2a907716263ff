// quantize: converts a llama2.c checkpoint or a GGUF file into a GGUF file whose weight matrices
// are all of one type (norms stay F32), carrying the tokenizer along: the input GGUF's own, or
// the SentencePiece model given with -z. Prints one line per tensor type written.

#include <iostream>
#include <map>
#include <optional>
#include <string>

#include "common.hpp"
#include "kvlm/kvlm.hpp"
#include "kvlm/quantize.hpp"

namespace {

constexpr const char* kUsage =
    "usage: quantize IN OUT TYPE [-z TOKENIZER]\n"
    "  IN            llama2.c checkpoint (.bin) or GGUF file\n"
    "  OUT           the GGUF file to write\n"
    "  TYPE          F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K or Q6_K: every weight matrix is\n"
    "                stored so; or Q4_K_M / Q5_K_M, llama.cpp's mixes (Q6_K for the classifier\n"
    "                and some attn_v / ffn_down). A matrix whose rows do not split into the\n"
    "                type's blocks falls back to Q8_0 (K-quants) or F16\n"
    "  -z TOKENIZER  SentencePiece .model (or GGUF) to embed; default: IN's own if it is GGUF,\n"
    "                else the *.model file beside IN\n";

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  std::vector<std::string> positional;
  std::string tokenizer_path;
  while (!args.done()) {
    const std::string arg = args.next();
    if (arg == "-z") tokenizer_path = args.value(arg);
    else if (arg == "-h" || arg == "--help") { std::cout << kUsage; return 0; }
    else if (!arg.empty() && arg[0] == '-') throw examples::UsageError("unknown argument '" + arg + "'");
    else positional.push_back(arg);
  }
  if (positional.size() != 3) throw examples::UsageError("expected IN OUT TYPE");
  const std::string& in = positional[0];
  const std::string& out = positional[1];
  const kvlm::QuantizeRecipe& recipe = [&]() -> const kvlm::QuantizeRecipe& {
    try {
      return kvlm::quantize_recipe(positional[2]);
    } catch (const kvlm::Error& e) {
      throw examples::UsageError(e.what());
    }
  }();

  const bool gguf = kvlm::detect_format(in) == kvlm::FileFormat::kGguf;
  const kvlm::ModelFile file = gguf ? kvlm::load_gguf(in) : kvlm::load_llama2c(in);
  if (tokenizer_path.empty()) tokenizer_path = examples::find_tokenizer(in);
  std::optional<kvlm::TokenizerVocab> vocab = file.vocab;
  if (!tokenizer_path.empty()) vocab = kvlm::Tokenizer::load(tokenizer_path).vocab();
  if (vocab && static_cast<int>(vocab->tokens.size()) != file.config.vocab_size) {
    throw kvlm::Error(kvlm::ErrorCode::kTokenizer,
                      tokenizer_path + " has " + std::to_string(vocab->tokens.size()) +
                          " pieces but " + in + " has a vocabulary of " +
                          std::to_string(file.config.vocab_size));
  }
  const kvlm::QuantizeReport report = kvlm::write_gguf(file, recipe, vocab ? &*vocab : nullptr, out);

  std::map<std::string, int> counts;
  for (const auto& [name, t] : report.types) ++counts[kvlm::to_string(t)];
  for (const auto& [name, count] : counts) std::cout << name << ": " << count << " tensors\n";
  for (const std::string& name : report.fallbacks) {
    std::cout << name << ": rows do not split into " << recipe.name << " blocks, stored as "
              << kvlm::to_string(report.types.at(name)) << "\n";
  }
  std::cout << "wrote " << out << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("quantize", kUsage, [&] { return run(argc, argv); });
}
