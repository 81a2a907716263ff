#pragma once
// RegularFile: a file opened read-only only if it is a regular file. Directories, FIFOs, sockets
// and devices are an Error naming the path before anything is read (a FIFO without waiting for a
// writer: it is opened non-blocking). Every loader, the tokenizer and session files open through it.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include "kvlm/error.hpp"

namespace kvlm::detail {

class RegularFile {
 public:
  /// @throws Error(kIo): "<path>: cannot open: <reason>" or "<path>: not a regular file".
  explicit RegularFile(const std::string& path)
      : fd_(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)) {
    if (fd_ < 0) throw Error(ErrorCode::kIo, path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw Error(ErrorCode::kIo, path + ": not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
  }
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  ~RegularFile() { ::close(fd_); }

  int fd() const { return fd_; }
  std::size_t size() const { return size_; }

 private:
  int fd_;
  std::size_t size_ = 0;
};

}  // namespace kvlm::detail
