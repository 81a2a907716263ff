#pragma once
// Checked reading of untrusted bytes: 64-bit add and multiply that throw instead of wrapping, and
// ByteCursor, which hands out a file's bytes in order and refuses to read past the end. Loaders do
// all their size arithmetic and all their reads of file data through these, so a lying length or
// count becomes a kvlm::Error(kFormat) naming the file, what was being read and where, never an
// out-of-bounds read.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "kvlm/error.hpp"

namespace kvlm::detail {

/// a + b, or Error(kFormat) whose message is `what` followed by the operands.
inline std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, std::string_view what) {
  if (b > std::numeric_limits<std::uint64_t>::max() - a) {
    throw Error(ErrorCode::kFormat, std::string(what) + " (" + std::to_string(a) + " + " +
                                        std::to_string(b) + " overflows 64 bits)");
  }
  return a + b;
}

/// a * b, or Error(kFormat) whose message is `what` followed by the operands.
inline std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, std::string_view what) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) {
    throw Error(ErrorCode::kFormat, std::string(what) + " (" + std::to_string(a) + " * " +
                                        std::to_string(b) + " overflows 64 bits)");
  }
  return a * b;
}

/// Appends value's bytes to out, little-endian whatever the host's order (ByteCursor reads them).
template <typename T>
void append_le(std::string& out, T value) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>, "append_le writes numbers");
  using Bits = std::conditional_t<
      sizeof(T) == 1, std::uint8_t,
      std::conditional_t<sizeof(T) == 2, std::uint16_t,
                         std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>>;
  static_assert(sizeof(Bits) == sizeof(T), "no unsigned integer of that size");
  Bits bits;
  std::memcpy(&bits, &value, sizeof bits);
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
  }
}

/// A read position in the bytes [data, data + size) of a file named `source`. Every read checks
/// that the bytes are there first; on failure it throws Error(kFormat) naming the source, what was
/// being read, the offset and how many bytes were needed and left. Offsets are from `data`.
/// Does not own the bytes. Integers and floats are read little-endian whatever the host's order.
class ByteCursor {
 public:
  ByteCursor(const std::byte* data, std::size_t size, std::string source, std::size_t offset = 0)
      : data_(data), size_(size), source_(std::move(source)), offset_(offset) {
    if (offset_ > size_) fail(0, "a start position");
  }

  /// The next sizeof(T) bytes as a little-endian T (an arithmetic type, not bool).
  template <typename T>
  T read(std::string_view what) {
    static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                  "read<T> reads integers and floats");
    const std::byte* p = read_bytes(sizeof(T), what);
    using Bits = std::conditional_t<
        sizeof(T) == 1, std::uint8_t,
        std::conditional_t<sizeof(T) == 2, std::uint16_t,
                           std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>>;
    static_assert(sizeof(Bits) == sizeof(T), "no unsigned integer of that size");
    Bits bits = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
      bits = static_cast<Bits>(bits | static_cast<Bits>(static_cast<Bits>(p[i]) << (8 * i)));
    }
    T value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  /// The next n bytes, in place: a pointer to them, valid as long as the underlying data.
  const std::byte* read_bytes(std::uint64_t n, std::string_view what) {
    if (n > remaining()) fail(n, what);
    const std::byte* p = data_ + offset_;
    offset_ += static_cast<std::size_t>(n);
    return p;
  }

  void skip(std::uint64_t n, std::string_view what) { read_bytes(n, what); }

  /// Moves to an absolute offset in [0, size()].
  void seek(std::uint64_t offset, std::string_view what) {
    if (offset > size_) {
      throw Error(ErrorCode::kFormat, source_ + ": " + std::string(what) + " at offset " +
                                          std::to_string(offset) + " lies past the end of the " +
                                          std::to_string(size_) + "-byte file");
    }
    offset_ = static_cast<std::size_t>(offset);
  }

  std::size_t offset() const { return offset_; }
  std::size_t remaining() const { return size_ - offset_; }
  std::size_t size() const { return size_; }
  const std::string& source() const { return source_; }

 private:
  [[noreturn]] void fail(std::uint64_t n, std::string_view what) const {
    throw Error(ErrorCode::kFormat, source_ + ": file ends inside " + std::string(what) +
                                        " at offset " + std::to_string(offset_) + " (needs " +
                                        std::to_string(n) + " bytes, " +
                                        std::to_string(size_ - std::min(offset_, size_)) +
                                        " remain of " + std::to_string(size_) + ")");
  }

  const std::byte* data_;
  std::size_t size_;
  std::string source_;
  std::size_t offset_;
};

}  // namespace kvlm::detail
