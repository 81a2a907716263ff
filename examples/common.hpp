#pragma once
// What the example programs share: strict command-line parsing (the sampling and session flags
// among it) and finding a model's tokenizer.
// Every problem becomes a kvlm::Error (or UsageError) that run_main prints as one line.

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <dirent.h>
#include <exception>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "kvlm/chat_template.hpp"
#include "kvlm/detail/read_file.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/loaders/model_file.hpp"
#include "kvlm/session.hpp"

namespace examples {

// A mistake on the command line; run_main prints it with the usage text and exits with 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Walks argv: `next_value(flag)` returns the argument after a flag or throws.
class Args {
 public:
  Args(int argc, char** argv) : args_(argv + 1, argv + argc) {}
  bool done() const { return i_ >= args_.size(); }
  std::string next() { return args_[i_++]; }
  std::string value(const std::string& flag) {
    if (done()) throw UsageError(flag + " needs a value");
    return next();
  }

 private:
  std::vector<std::string> args_;
  std::size_t i_ = 0;
};

// An integer in [min, max]; anything else (empty, trailing text, out of range) is an error.
inline long long parse_int(const std::string& flag, const std::string& text, long long min,
                           long long max) {
  long long v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty() || v < min || v > max) {
    throw UsageError(flag + " expects an integer in [" + std::to_string(min) + ", " +
                     std::to_string(max) + "], got '" + text + "'");
  }
  return v;
}

// A finite float in [min, max].
inline float parse_float(const std::string& flag, const std::string& text, float min, float max) {
  char* end = nullptr;
  const float v = std::strtof(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v) || v < min ||
      v > max) {
    std::ostringstream range;
    range << "[" << min << ", " << max << "]";
    throw UsageError(flag + " expects a number in " + range.str() + ", got '" + text + "'");
  }
  return v;
}

// A KV cache type by name (F32, F16, BF16, Q8_0; any case).
inline kvlm::DType parse_kv_type(const std::string& flag, const std::string& text) {
  std::string upper = text;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (kvlm::DType t : {kvlm::DType::kF32, kvlm::DType::kF16, kvlm::DType::kBF16, kvlm::DType::kQ8_0}) {
    if (upper == kvlm::to_string(t)) return t;
  }
  throw UsageError(flag + " expects F32, F16, BF16 or Q8_0, not '" + text + "'");
}

// Usage lines the examples share: the model and tokenizer (-m, -z), and the flags that
// parse_sampling_flag and parse_session_flag read.
constexpr const char* kModelUsage =
    "  -m MODEL          GGUF file, or llama2.c checkpoint (.bin)\n"
    "  -z TOKENIZER      SentencePiece .model or GGUF file; default: the GGUF's own, or for a\n"
    "                    .bin the *.model file beside it\n"
    "  --no-interleave   multiply by the weights as stored, not by an interleaved copy\n";
constexpr const char* kSamplingUsage =
    "  -n MAX_NEW        most tokens to generate (default 256)\n"
    "  --temp T          temperature, 0 = greedy (default 0.8)\n"
    "  --top-k K         keep the K most likely tokens, 0 = off (default 40)\n"
    "  --top-p P         keep the smallest set of mass >= P, 1 = off (default 0.95)\n"
    "  --min-p P         drop tokens below P x the top probability, 0 = off (default 0.05)\n"
    "  --repeat-penalty R  penalise recent tokens, 1 = off (default 1)\n"
    "  --seed S          sampling seed (default: random)\n";
constexpr const char* kSessionUsage =
    "  -t THREADS        threads (default: all cores)\n"
    "  -c CONTEXT        context length (default: the model's; may exceed it)\n"
    "  --kv-type TYPE    KV cache type: F32 (default), F16, BF16 or Q8_0\n";

// The token budget and the sampler's flags (kSamplingUsage); false for any other flag.
inline bool parse_sampling_flag(const std::string& flag, Args& args,
                                kvlm::GenerateOptions& options) {
  constexpr long long kIntMax = std::numeric_limits<int>::max();
  kvlm::SamplerOptions& s = options.sampler;
  if (flag == "-n") options.max_new_tokens = static_cast<int>(parse_int(flag, args.value(flag), 1, kIntMax));
  else if (flag == "--temp") s.temperature = parse_float(flag, args.value(flag), 0.0f, 1e6f);
  else if (flag == "--top-k") s.top_k = static_cast<int>(parse_int(flag, args.value(flag), 0, kIntMax));
  else if (flag == "--top-p") s.top_p = parse_float(flag, args.value(flag), 1e-6f, 1.0f);
  else if (flag == "--min-p") s.min_p = parse_float(flag, args.value(flag), 0.0f, 1.0f);
  else if (flag == "--repeat-penalty") s.repeat_penalty = parse_float(flag, args.value(flag), 1e-6f, 1e6f);
  else if (flag == "--seed") s.seed = static_cast<std::uint64_t>(parse_int(flag, args.value(flag), 0, std::numeric_limits<long long>::max()));
  else return false;
  return true;
}

// Threads, context length and cache type (kSessionUsage); false for any other flag.
inline bool parse_session_flag(const std::string& flag, Args& args,
                               kvlm::SessionOptions& options) {
  if (flag == "-t") options.n_threads = static_cast<int>(parse_int(flag, args.value(flag), 1, 1024));
  else if (flag == "-c") options.max_seq_len = static_cast<int>(parse_int(flag, args.value(flag), 1, std::numeric_limits<int>::max()));
  else if (flag == "--kv-type") options.kv_type = parse_kv_type(flag, args.value(flag));
  else return false;
  return true;
}

// The model and tokenizer (kModelUsage) and -v, which every program that loads a model reads.
struct ModelFlags {
  std::string model_path, tokenizer_path;
  kvlm::LoadOptions load;
  bool verbose = false;

  // Reads `flag` and its value if it is one of these; false for any other flag.
  bool parse(const std::string& flag, Args& args) {
    if (flag == "-m") model_path = args.value(flag);
    else if (flag == "-z") tokenizer_path = args.value(flag);
    else if (flag == "--no-interleave") load.interleave = false;
    else if (flag == "-v" || flag == "--verbose") verbose = true;
    else return false;
    return true;
  }
};

// The flags generate and chat share: the model (ModelFlags), the token budget and sampler
// (kSamplingUsage) and the session (kSessionUsage).
struct GenerationFlags : ModelFlags {
  kvlm::SessionOptions session;
  kvlm::GenerateOptions generate;

  GenerationFlags() { generate.sampler.seed = std::random_device{}(); }

  // Reads `flag` and its value if it is one of these; false for any other flag.
  bool parse(const std::string& flag, Args& args) {
    return parse_sampling_flag(flag, args, generate) || parse_session_flag(flag, args, session) ||
           ModelFlags::parse(flag, args);
  }
};

// A chat template's name (llama2, llama3, gemma, chatml), for choose_chat_format.
inline kvlm::ChatFormat parse_chat_template(const std::string& flag, const std::string& text) {
  try {
    return kvlm::parse_chat_format(text);
  } catch (const kvlm::Error& e) {
    throw UsageError(flag + ": " + e.what());
  }
}

inline bool has_suffix(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The tokenizer to use with `model_path` when none was given: "" for a GGUF file (it embeds its
// own); for a llama2.c checkpoint tokenizer.model beside the model, else the only *.model there.
inline std::string find_tokenizer(const std::string& model_path) {
  if (kvlm::detect_format(model_path) == kvlm::FileFormat::kGguf) return "";  // or kIo
  const std::size_t slash = model_path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : model_path.substr(0, slash);
  if (std::ifstream(dir + "/tokenizer.model").good()) return dir + "/tokenizer.model";
  std::vector<std::string> found;
  if (DIR* d = opendir(dir.c_str())) {
    while (const dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (has_suffix(name, ".model")) found.push_back(name);
    }
    closedir(d);
  }
  if (found.size() != 1) {
    throw UsageError("no tokenizer given and " +
                     std::string(found.empty() ? "no" : "more than one") + " *.model file in " +
                     dir + "; pass -z TOKENIZER");
  }
  return dir + "/" + found[0];
}

// The model of -m with the tokenizer of -z (else find_tokenizer's), described on stderr with -v.
// @throws UsageError without -m; kvlm::Error as Model::load.
inline std::shared_ptr<const kvlm::Model> load_model(const ModelFlags& flags) {
  if (flags.model_path.empty()) throw UsageError("-m MODEL is required");
  auto model = kvlm::Model::load(flags.model_path, flags.tokenizer_path.empty()
                                                       ? find_tokenizer(flags.model_path)
                                                       : flags.tokenizer_path,
                                 flags.load);
  if (flags.verbose) std::cerr << model->summary();
  return model;
}

// Runs body(), turning errors into one line on stderr and an exit code: 2 for usage, 1 otherwise.
template <typename Body>
int run_main(const char* program, const char* usage, Body&& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    std::cerr << program << ": " << e.what() << "\n" << usage;
    return 2;
  } catch (const kvlm::Error& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace examples
