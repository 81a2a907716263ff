// The sampler on arbitrary options, logits and recent tokens: validation refuses bad options
// with an Error; valid ones return a token within the vocabulary whose logit is not -inf.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kvlm/sampler.hpp"

namespace {

template <typename T>
T take(const std::uint8_t*& data, std::size_t& size) {
  T value{};
  const std::size_t n = size < sizeof(T) ? size : sizeof(T);
  std::memcpy(&value, data, n);
  data += n;
  size -= n;
  return value;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvlm;
  SamplerOptions o;
  o.temperature = take<float>(data, size);
  o.top_k = take<std::int32_t>(data, size);
  o.top_p = take<float>(data, size);
  o.min_p = take<float>(data, size);
  o.repeat_penalty = take<float>(data, size);
  o.repeat_last_n = take<std::int32_t>(data, size);
  o.seed = take<std::uint64_t>(data, size);
  const int vocab = 1 + take<std::uint8_t>(data, size) % 64;
  std::vector<float> logits(static_cast<std::size_t>(vocab));
  for (float& l : logits) l = take<float>(data, size);
  std::vector<Token> recent;
  while (size > 0) recent.push_back(take<std::int8_t>(data, size));
  try {
    Sampler sampler(o, vocab);
    const Token t = sampler.sample(logits, recent);
    if (t < 0 || t >= vocab) std::abort();
    const float l = logits[static_cast<std::size_t>(t)];
    if (l == -INFINITY) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
