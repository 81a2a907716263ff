// tokenize: prints the token ids of a text on one line, separated by spaces.

#include <iostream>
#include <string>

#include "common.hpp"
#include "kvlm/tokenizer.hpp"

namespace {

constexpr const char* kUsage =
    "usage: tokenize -m MODEL_OR_TOKENIZER [--no-bos] (-p TEXT | -f FILE)\n"
    "  -m PATH     a GGUF file (its embedded vocabulary), a SentencePiece model (*.model),\n"
    "              or a llama2.c checkpoint with a *.model beside it\n"
    "  --no-bos    do not start with BOS\n"
    "  -p TEXT     the text; -f FILE reads it from a file\n";

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  std::string path, text;
  bool add_bos = true, have_text = false;
  while (!args.done()) {
    const std::string flag = args.next();
    if (flag == "-m") path = args.value(flag);
    else if (flag == "--no-bos") add_bos = false;
    else if (flag == "-p" && !have_text) { text = args.value(flag); have_text = true; }
    else if (flag == "-f" && !have_text) { text = kvlm::detail::read_file(args.value(flag)); have_text = true; }
    else if (flag == "-p" || flag == "-f") throw examples::UsageError("give one of -p and -f, once");
    else if (flag == "-h" || flag == "--help") { std::cout << kUsage; return 0; }
    else throw examples::UsageError("unknown argument '" + flag + "'");
  }
  if (path.empty()) throw examples::UsageError("-m MODEL_OR_TOKENIZER is required");
  if (!have_text) throw examples::UsageError("give the text with -p or -f");
  const bool is_llama2c = kvlm::detect_format(path) == kvlm::FileFormat::kLlama2c &&
                         !examples::has_suffix(path, ".model");
  const kvlm::Tokenizer tokenizer =
      kvlm::Tokenizer::load(is_llama2c ? examples::find_tokenizer(path) : path);
  const std::vector<kvlm::Token> ids = tokenizer.encode(text, add_bos);
  for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("tokenize", kUsage, [&] { return run(argc, argv); });
}
