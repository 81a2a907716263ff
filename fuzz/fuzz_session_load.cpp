// Session::load on arbitrary bytes, against stories260K: a refused file leaves the session as it
// was; an accepted one continues with finite logits.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvlm;
  SessionOptions options;
  options.max_seq_len = 64;
  options.n_threads = 1;
  static Session session(fuzz::stories260k(), options);
  session.reset();
  session.prefill(std::vector<Token>{1, 403, 407});
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    session.load(in);
  } catch (const Error&) {
    if (session.position() != 3 || session.tokens()[1] != 403) std::abort();  // not as it was
    return 0;
  }
  for (float l : session.step(5)) {
    if (!std::isfinite(l)) std::abort();
  }
  return 0;
}
