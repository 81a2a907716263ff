// GGUF: the reader (header, metadata, tensor table), the embedded tokenizer, model assembly and a
// few decode steps, on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <optional>

#include "fuzz_common.hpp"
#include "kvlm/loaders/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvlm;
  try {
    ModelFile file = load_gguf(gguf::GgufFile::from_bytes(data, size, "fuzz.gguf"));
    std::optional<Tokenizer> tokenizer;
    if (file.vocab) tokenizer.emplace(Tokenizer::from_vocab(*file.vocab, "fuzz.gguf"));
    fuzz::run_a_few_tokens(Model::from_file(std::move(file), std::move(tokenizer)));
  } catch (const Error&) {
  }
  return 0;
}
