// perplexity: exp(mean negative log-likelihood) of a text file under a model, in chunks of at
// most CONTEXT tokens (each after the first starts with BOS). The last stdout line is
// "perplexity: <value>".

#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <string>

#include "common.hpp"
#include "kvlm/kvlm.hpp"

namespace {

constexpr const char* kUsage =
    "usage: perplexity -m MODEL [-z TOKENIZER] -f TEXT_FILE [-c CONTEXT] [-t THREADS]\n"
    "                  [--kv-type TYPE] [--logits-out FILE]\n"
    "  -m MODEL           GGUF file, or llama2.c checkpoint (.bin)\n"
    "  -z TOKENIZER       default: the GGUF's own, or the *.model file beside a .bin\n"
    "  -c CONTEXT         tokens per chunk (default: the model's context)\n"
    "  --kv-type TYPE     KV cache type: F32 (default), F16, BF16 or Q8_0\n"
    "  --logits-out FILE  write the first chunk's logits as float32 [n_tokens, vocab_size]\n";

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  std::string model_path, tokenizer_path, text_path, logits_path;
  int context = 0;
  kvlm::SessionOptions session_options;
  while (!args.done()) {
    const std::string flag = args.next();
    if (flag == "-m") model_path = args.value(flag);
    else if (flag == "-z") tokenizer_path = args.value(flag);
    else if (flag == "-f") text_path = args.value(flag);
    else if (flag == "-c") context = static_cast<int>(examples::parse_int(flag, args.value(flag), 2, std::numeric_limits<int>::max()));
    else if (flag == "-t") session_options.n_threads = static_cast<int>(examples::parse_int(flag, args.value(flag), 1, 1024));
    else if (flag == "--kv-type") session_options.kv_type = examples::parse_kv_type(flag, args.value(flag));
    else if (flag == "--logits-out") logits_path = args.value(flag);
    else if (flag == "-h" || flag == "--help") { std::cout << kUsage; return 0; }
    else throw examples::UsageError("unknown argument '" + flag + "'");
  }
  if (model_path.empty() || text_path.empty()) throw examples::UsageError("-m and -f are required");
  if (tokenizer_path.empty()) tokenizer_path = examples::find_tokenizer(model_path);

  const auto model = kvlm::Model::load(model_path, tokenizer_path);
  if (context == 0) context = model->config().max_seq_len;
  const std::vector<kvlm::Token> tokens =
      model->tokenizer().encode(kvlm::detail::read_file(text_path), true);
  std::ofstream logits_out;
  if (!logits_path.empty()) {
    logits_out.open(logits_path, std::ios::binary | std::ios::trunc);
    if (!logits_out) throw kvlm::Error(kvlm::ErrorCode::kIo, logits_path + ": cannot write");
  }
  const kvlm::PerplexityResult r = kvlm::perplexity(
      model, tokens, context, session_options, [&](int chunk, kvlm::TensorView<const float> l) {
        if (chunk == 0 && logits_out.is_open()) {
          logits_out.write(reinterpret_cast<const char*>(l.data()),
                           static_cast<std::streamsize>(l.size() * sizeof(float)));
        }
      });
  if (logits_out.is_open() && !logits_out.flush()) {
    throw kvlm::Error(kvlm::ErrorCode::kIo, logits_path + ": write failed");
  }
  std::printf("tokens: %zu chunks: %d scored: %d mean_nll: %.6f\n", tokens.size(), r.chunks,
              r.scored_tokens, r.mean_nll);
  std::printf("perplexity: %.6f\n", r.perplexity);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("perplexity", kUsage, [&] { return run(argc, argv); });
}
