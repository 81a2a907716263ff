// The examples' command-line parsing (examples/common.hpp: GenerationFlags, the chat template) on
// arbitrary argument lists: every input is accepted or refused with a UsageError, and what is
// accepted stays within its range.
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
  examples::GenerationFlags flags;  // the flags generate and chat read, as they read them
  try {
    while (!parsed.done()) {
      const std::string flag = parsed.next();
      if (!flags.parse(flag, parsed) && flag == "--chat-template") {
        examples::parse_chat_template(flag, parsed.value(flag));
      }
    }
  } catch (const examples::UsageError&) {
  } catch (const kvlm::Error&) {
  }
  // Whatever was accepted is within range: the sampler takes it, and the counts are positive.
  try {
    flags.generate.sampler.validate();
  } catch (const kvlm::Error&) {
    std::abort();
  }
  const kvlm::SessionOptions& so = flags.session;
  if (flags.generate.max_new_tokens < 1 || so.n_threads < 0 || so.n_threads > 1024 ||
      so.max_seq_len < 0) {
    std::abort();
  }
  return 0;
}
