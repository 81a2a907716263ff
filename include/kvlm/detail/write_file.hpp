#pragma once
// write_file_atomically: a file written beside `path` (path + ".tmp") and renamed over it, so
// that no reader and no crash ever sees half a file, and a failure leaves an earlier file whole.

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ostream>
#include <string>

#include "kvlm/error.hpp"

namespace kvlm::detail {

/// write(out) writes the content to a std::ostream; a kvlm::Error it throws counts as a failed
/// write. @throws Error(kIo) "<path>: cannot write it: <reason>" if anything fails.
template <typename Write>
void write_file_atomically(const std::string& path, Write&& write) {
  const std::string temporary = path + ".tmp";
  std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
  if (out) {
    try {
      write(static_cast<std::ostream&>(out));
    } catch (const Error&) {
      out.setstate(std::ios::badbit);
    }
    out.close();
  }
  if (!out || std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temporary.c_str());
    throw Error(ErrorCode::kIo, path + ": cannot write it: " + std::strerror(error));
  }
}

}  // namespace kvlm::detail
