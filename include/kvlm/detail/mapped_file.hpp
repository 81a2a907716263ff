#pragma once
// MappedFile: a whole file mapped read-only (POSIX mmap). Weight views point straight into it, so
// loading costs no copy and pages are shared between processes that map the same model.

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "kvlm/detail/regular_file.hpp"
#include "kvlm/error.hpp"

namespace kvlm::detail {

class MappedFile {
 public:
  /// @throws Error(kIo) naming the path, and the system's reason when the file cannot be mapped.
  explicit MappedFile(const std::string& path) : path_(path) {
    const RegularFile file(path);
    size_ = file.size();
    if (size_ > 0) {
      // MAP_POPULATE reads the file in now, so the first forward pass does not stall on page
      // faults: a model is loaded once to be used at once. The mapping outlives the descriptor.
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, file.fd(), 0);
      if (p == MAP_FAILED) fail("cannot map");
      data_ = static_cast<const std::byte*>(p);
    }
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  }

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw Error(ErrorCode::kIo, path_ + ": " + what + ": " + std::strerror(errno));
  }

  std::string path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Lets the pages that lie wholly inside [data, data + bytes) of a read-only file mapping go:
/// they leave the process's resident memory and are read from the file again if touched.
inline void release_pages(const void* data, std::size_t bytes) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (begin + page - 1) / page * page, last = (begin + bytes) / page * page;
  // Advice, not a requirement: if the kernel declines, the pages merely stay resident.
  if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

}  // namespace kvlm::detail
