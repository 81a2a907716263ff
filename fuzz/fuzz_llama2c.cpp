// llama2.c checkpoints (legacy and version 1), on arbitrary bytes: the loader reads a file, so
// each input is written to one first.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/kvlm_fuzz_llama2c_" + std::to_string(::getpid()) + ".bin";
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  try {
    kvlm::fuzz::run_a_few_tokens(kvlm::Model::load(path));
  } catch (const kvlm::Error&) {
  }
  return 0;
}
