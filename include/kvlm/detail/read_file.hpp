#pragma once
// read_file: a whole file into memory, for small files (a tokenizer model, a text). A path that
// cannot be opened or read, a directory among them, is an Error naming the path.

#include <array>
#include <fstream>
#include <string>

#include "kvlm/error.hpp"

namespace kvlm::detail {

inline std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file.is_open()) {
    throw Error(ErrorCode::kIo, path + ": cannot open");
  }
  std::string bytes;
  std::array<char, 1 << 16> chunk;
  while (file.read(chunk.data(), chunk.size()) || file.gcount() > 0) {
    bytes.append(chunk.data(), static_cast<std::size_t>(file.gcount()));
  }
  if (file.bad()) {  // e.g. the path is a directory
    throw Error(ErrorCode::kIo, path + ": cannot read");
  }
  return bytes;
}

}  // namespace kvlm::detail
