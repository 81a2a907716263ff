#pragma once
// What the example programs share: strict command-line parsing and finding a model's tokenizer.
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
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "kvlm/detail/read_file.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/loaders/model_file.hpp"

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
