#pragma once
// read_file: a whole file into memory, for small files (a tokenizer model, a text). A path that
// cannot be opened or read, or that is not a regular file (a directory, a FIFO, a device), is an
// Error naming the path; a FIFO is refused without waiting for a writer.

#include <unistd.h>

#include <array>
#include <cerrno>
#include <string>

#include "kvlm/detail/regular_file.hpp"
#include "kvlm/error.hpp"

namespace kvlm::detail {

inline std::string read_file(const std::string& path) {
  const RegularFile file(path);
  std::string bytes;
  std::array<char, 1 << 16> chunk;
  while (true) {
    const ssize_t n = ::read(file.fd(), chunk.data(), chunk.size());
    if (n > 0) {
      bytes.append(chunk.data(), static_cast<std::size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      throw Error(ErrorCode::kIo, path + ": cannot read");
    }
  }
  return bytes;
}

}  // namespace kvlm::detail
