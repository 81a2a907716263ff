#pragma once
// read_file: a whole file into memory, for small files (a tokenizer model, a text). A path that
// cannot be opened or read, or that is not a regular file (a directory, a FIFO, a device), is an
// Error naming the path; a FIFO is refused without waiting for a writer.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <string>

#include "kvlm/error.hpp"

namespace kvlm::detail {

inline std::string read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorCode::kIo, path + ": cannot open");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kIo, path + ": cannot read (not a regular file)");
  }
  std::string bytes;
  std::array<char, 1 << 16> chunk;
  while (true) {
    const ssize_t n = ::read(fd, chunk.data(), chunk.size());
    if (n > 0) {
      bytes.append(chunk.data(), static_cast<std::size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      ::close(fd);
      throw Error(ErrorCode::kIo, path + ": cannot read");
    }
  }
  ::close(fd);
  return bytes;
}

}  // namespace kvlm::detail
