#pragma once
// Span<T>: a non-owning view of contiguous elements (pointer + count), the C++17 stand-in for
// std::span used by the public API. It never owns memory; the caller keeps the elements alive.

#include <array>
#include <cstddef>
#include <vector>

namespace kvlm {

template <typename T>
class Span {
 public:
  Span() = default;
  Span(T* data, std::size_t size) : data_(data), size_(size) {}
  template <typename U, typename A>
  Span(std::vector<U, A>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT: implicit by design
  template <typename U, typename A>
  Span(const std::vector<U, A>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT
  template <typename U, std::size_t N>
  Span(std::array<U, N>& a) : data_(a.data()), size_(N) {}  // NOLINT
  template <typename U, std::size_t N>
  Span(const std::array<U, N>& a) : data_(a.data()), size_(N) {}  // NOLINT

  T* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](std::size_t i) const { return data_[i]; }
  T* begin() const { return data_; }
  T* end() const { return data_ + size_; }
  Span subspan(std::size_t offset, std::size_t count) const { return {data_ + offset, count}; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace kvlm
