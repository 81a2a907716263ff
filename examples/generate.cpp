// generate: prints the prompt and the model's continuation to stdout, and one line of timings to
// stderr. --temp 0 is greedy; with no -p generation starts from BOS alone.

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "common.hpp"
#include "kvlm/kvlm.hpp"

namespace {

const std::string kUsage =
    std::string(
        "usage: generate -m MODEL [-z TOKENIZER] [-p PROMPT] [-n MAX_NEW] [--temp T] [--top-k K]\n"
        "                [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [-t THREADS]\n"
        "                [-c CONTEXT] [--kv-type TYPE] [--shift] [--stop STRING]... [-v]\n") +
    examples::kModelUsage +
    "  -p PROMPT         text to continue; default: start from BOS alone\n" +
    examples::kSamplingUsage + examples::kSessionUsage +
    "  --shift           when the context fills, drop the oldest half (keeping BOS) and go on\n"
    "  --stop STRING     stop before STRING (repeatable)\n"
    "  -v, --verbose     describe the model on stderr before generating\n";

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  examples::GenerationFlags flags;
  std::string prompt;
  while (!args.done()) {
    const std::string flag = args.next();
    if (flags.parse(flag, args)) continue;
    if (flag == "-p") prompt = args.value(flag);
    else if (flag == "--shift") flags.session.on_full = kvlm::OnFull::kShift;
    else if (flag == "--stop") flags.generate.stop.push_back(args.value(flag));
    else if (flag == "-h" || flag == "--help") { std::cout << kUsage; return 0; }
    else throw examples::UsageError("unknown argument '" + flag + "'");
  }
  const auto model = examples::load_model(flags);
  kvlm::Session session(model, flags.session);
  // The prompt is printed once generation has started, so a prompt that is refused (say, longer
  // than the context) leaves stdout empty.
  bool prompt_printed = false;
  auto print_prompt = [&] {
    if (!prompt_printed) std::cout << prompt;
    prompt_printed = true;
  };
  const kvlm::GenerateResult r =
      session.generate(prompt, flags.generate, [&](std::string_view piece) {
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
  return examples::run_main("generate", kUsage.c_str(), [&] { return run(argc, argv); });
}
