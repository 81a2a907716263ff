#pragma once
// Fnv1a: the 64-bit FNV-1a hash (Fowler, Noll, Vo), for fingerprints and checksums that must be
// the same on every platform and run. Not cryptographic: it detects accidents, not attacks.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "kvlm/detail/checked.hpp"

namespace kvlm::detail {

class Fnv1a {
 public:
  void add(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) hash_ = (hash_ ^ p[i]) * 0x100000001b3ULL;
  }
  // A number as its little-endian bytes.
  template <typename T>
  void add_value(T value) {
    std::string bytes;
    append_le(bytes, value);
    add(bytes.data(), bytes.size());
  }
  std::uint64_t value() const { return hash_; }

 private:
  std::uint64_t hash_ = 0xcbf29ce484222325ULL;
};

}  // namespace kvlm::detail
