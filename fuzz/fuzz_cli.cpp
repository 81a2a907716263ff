// The examples' command-line parsing (examples/common.hpp) on arbitrary argument lists: every
// input is accepted or refused with a UsageError, and numbers stay within their ranges.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "../examples/common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // NUL bytes separate the arguments.
  std::vector<std::string> args = {"prog"};
  std::string current;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      args.push_back(current);
      current.clear();
    } else {
      current += static_cast<char>(data[i]);
    }
  }
  args.push_back(current);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  examples::Args parsed(static_cast<int>(argv.size()), argv.data());
  try {
    while (!parsed.done()) {
      const std::string flag = parsed.next();
      if (flag == "-n") {
        const long long n = examples::parse_int(flag, parsed.value(flag), 1, 1000);
        if (n < 1 || n > 1000) std::abort();
      } else if (flag == "--temp") {
        const float t = examples::parse_float(flag, parsed.value(flag), 0.0f, 2.0f);
        if (!(t >= 0.0f && t <= 2.0f)) std::abort();
      } else if (flag == "--kv-type") {
        examples::parse_kv_type(flag, parsed.value(flag));
      }
    }
  } catch (const examples::UsageError&) {
  } catch (const kvlm::Error&) {
  }
  return 0;
}
