// The tokenizer on arbitrary input: encoding the bytes as text, decoding them as token ids (in
// and out of the vocabulary), and the streaming decoder, whose pieces must add up to decode().
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvlm;
  const Tokenizer& tok = fuzz::stories260k()->tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const std::vector<Token> ids = tok.encode(text, size % 2 == 0, size % 3 == 0);
    tok.decode(ids);
  } catch (const Error&) {
  }
  // Pairs of bytes as ids, some outside the vocabulary.
  std::vector<Token> ids;
  for (std::size_t i = 0; i + 1 < size; i += 2) {
    std::int16_t id;
    std::memcpy(&id, data + i, 2);
    ids.push_back(id % 600);
  }
  std::string whole;
  try {
    whole = tok.decode(ids);
  } catch (const Error&) {
    return 0;  // an id outside the vocabulary
  }
  StreamingDecoder decoder(tok);
  std::string streamed;
  for (Token id : ids) decoder.push(id, streamed);
  decoder.flush(streamed);
  if (streamed != whole) std::abort();
  return 0;
}
