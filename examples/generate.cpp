// generate: prints the prompt and the model's continuation to stdout, and one line of timings to
// stderr. --temp 0 is greedy; with no -p generation starts from BOS alone.

#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <random>
#include <string>

#include "common.hpp"
#include "kvlm/kvlm.hpp"

namespace {

constexpr const char* kUsage =
    "usage: generate -m MODEL [-z TOKENIZER] [-p PROMPT] [-n MAX_NEW] [--temp T] [--top-k K]\n"
    "                [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [-t THREADS]\n"
    "                [-c CONTEXT] [--kv-type TYPE] [--shift] [--stop STRING]... [-v]\n"
    "  -m MODEL          GGUF file, or llama2.c checkpoint (.bin)\n"
    "  -z TOKENIZER      SentencePiece .model or GGUF file; default: the GGUF's own, or for a\n"
    "                    .bin the *.model file beside it\n"
    "  -p PROMPT         text to continue; default: start from BOS alone\n"
    "  -n MAX_NEW        most tokens to generate (default 256)\n"
    "  --temp T          temperature, 0 = greedy (default 0.8)\n"
    "  --top-k K         keep the K most likely tokens, 0 = off (default 40)\n"
    "  --top-p P         keep the smallest set of mass >= P, 1 = off (default 0.95)\n"
    "  --min-p P         drop tokens below P x the top probability, 0 = off (default 0.05)\n"
    "  --repeat-penalty R  penalise recent tokens, 1 = off (default 1)\n"
    "  --seed S          sampling seed (default: random)\n"
    "  -t THREADS        threads (default: all cores)\n"
    "  -c CONTEXT        context length (default: the model's; may exceed it)\n"
    "  --kv-type TYPE    KV cache type: F32 (default), F16, BF16 or Q8_0\n"
    "  --shift           when the context fills, drop the oldest half (keeping BOS) and go on\n"
    "  --stop STRING     stop before STRING (repeatable)\n"
    "  -v, --verbose     describe the model on stderr before generating\n";

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  std::string model_path, tokenizer_path, prompt;
  kvlm::SessionOptions session_options;
  kvlm::GenerateOptions options;
  bool verbose = false;
  options.sampler.seed = std::random_device{}();
  constexpr long long kIntMax = std::numeric_limits<int>::max();
  while (!args.done()) {
    const std::string flag = args.next();
    if (flag == "-m") model_path = args.value(flag);
    else if (flag == "-z") tokenizer_path = args.value(flag);
    else if (flag == "-p") prompt = args.value(flag);
    else if (flag == "-n") options.max_new_tokens = static_cast<int>(examples::parse_int(flag, args.value(flag), 1, kIntMax));
    else if (flag == "--temp") options.sampler.temperature = examples::parse_float(flag, args.value(flag), 0.0f, 1e6f);
    else if (flag == "--top-k") options.sampler.top_k = static_cast<int>(examples::parse_int(flag, args.value(flag), 0, kIntMax));
    else if (flag == "--top-p") options.sampler.top_p = examples::parse_float(flag, args.value(flag), 1e-6f, 1.0f);
    else if (flag == "--min-p") options.sampler.min_p = examples::parse_float(flag, args.value(flag), 0.0f, 1.0f);
    else if (flag == "--repeat-penalty") options.sampler.repeat_penalty = examples::parse_float(flag, args.value(flag), 1e-6f, 1e6f);
    else if (flag == "--seed") options.sampler.seed = static_cast<std::uint64_t>(examples::parse_int(flag, args.value(flag), 0, std::numeric_limits<long long>::max()));
    else if (flag == "-t") session_options.n_threads = static_cast<int>(examples::parse_int(flag, args.value(flag), 1, 1024));
    else if (flag == "-c") session_options.max_seq_len = static_cast<int>(examples::parse_int(flag, args.value(flag), 1, kIntMax));
    else if (flag == "--kv-type") session_options.kv_type = examples::parse_kv_type(flag, args.value(flag));
    else if (flag == "--shift") session_options.on_full = kvlm::OnFull::kShift;
    else if (flag == "--stop") options.stop.push_back(args.value(flag));
    else if (flag == "-v" || flag == "--verbose") verbose = true;
    else if (flag == "-h" || flag == "--help") { std::cout << kUsage; return 0; }
    else throw examples::UsageError("unknown argument '" + flag + "'");
  }
  if (model_path.empty()) throw examples::UsageError("-m MODEL is required");
  if (tokenizer_path.empty()) tokenizer_path = examples::find_tokenizer(model_path);

  const auto model = kvlm::Model::load(model_path, tokenizer_path);
  if (verbose) std::cerr << model->summary();
  kvlm::Session session(model, session_options);
  // The prompt is printed once generation has started, so a prompt that is refused (say, longer
  // than the context) leaves stdout empty.
  bool prompt_printed = false;
  auto print_prompt = [&] {
    if (!prompt_printed) std::cout << prompt;
    prompt_printed = true;
  };
  const kvlm::GenerateResult r = session.generate(prompt, options, [&](std::string_view piece) {
    print_prompt();
    std::cout << piece << std::flush;
    return true;
  });
  print_prompt();
  std::cout << "\n" << std::flush;
  auto per_second = [](int n, double seconds) { return seconds > 0.0 ? n / seconds : 0.0; };
  std::fprintf(stderr,
               "timings: prompt_tokens=%d prefill_tok_s=%.1f gen_tokens=%d decode_tok_s=%.1f "
               "kv_cache_bytes=%zu\n",
               r.prompt_tokens, per_second(r.prompt_tokens, r.prefill_seconds), r.generated_tokens,
               per_second(r.generated_tokens, r.decode_seconds), session.kv_cache_bytes());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("generate", kUsage, [&] { return run(argc, argv); });
}
