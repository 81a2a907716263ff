#pragma once
// Tensor<T> owns 64-byte-aligned memory; TensorView<T> is a non-owning, row-major, contiguous
// view with a shape of rank 1 to 3. WeightView is a typed view of one weight matrix, usually
// pointing into a memory-mapped model file. Eigen::Map bridges views to Eigen's products.

#include <Eigen/Core>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <type_traits>
#include <string>
#include <utility>

#include "kvlm/detail/assert.hpp"
#include "kvlm/dtype.hpp"

namespace kvlm {

template <typename T>
using RowMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A row-major view of rank 1 to 3. The last dimension is contiguous; rows() folds all the
/// others, so a [n_tokens, n_heads, head_dim] view is also a [n_tokens * n_heads, head_dim] matrix.
template <typename T>
class TensorView {
 public:
  TensorView() = default;
  TensorView(T* data, std::initializer_list<std::int64_t> shape) : data_(data) {
    KVLM_ASSERT(shape.size() >= 1 && shape.size() <= 3);
    for (std::int64_t d : shape) shape_[rank_++] = d;
  }
  // A view of const T from a view of T.
  template <typename U, typename = std::enable_if_t<std::is_same_v<const U, T>>>
  TensorView(const TensorView<U>& other)  // NOLINT: implicit like T* -> const T*
      : data_(other.data()), rank_(other.rank()) {
    for (int i = 0; i < rank_; ++i) shape_[i] = other.dim(i);
  }

  T* data() const { return data_; }
  int rank() const { return rank_; }
  std::int64_t dim(int i) const { return shape_[i]; }
  std::int64_t cols() const { return rank_ == 0 ? 0 : shape_[rank_ - 1]; }
  std::int64_t rows() const { return rank_ == 0 ? 0 : size() / cols(); }
  std::int64_t size() const {
    std::int64_t n = rank_ == 0 ? 0 : 1;
    for (int i = 0; i < rank_; ++i) n *= shape_[i];
    return n;
  }

  T* row(std::int64_t i) const { return data_ + i * cols(); }
  T& operator[](std::int64_t i) const { return data_[i]; }

  /// Rows [begin, begin + count) of the folded matrix, as a [count, cols] view.
  TensorView rows_slice(std::int64_t begin, std::int64_t count) const {
    KVLM_ASSERT(begin >= 0 && count >= 0 && begin + count <= rows());
    return TensorView(row(begin), {count, cols()});
  }

  auto matrix() const { return Eigen::Map<std::conditional_t<std::is_const_v<T>,
      const RowMajorMatrix<std::remove_const_t<T>>, RowMajorMatrix<T>>>(data_, rows(), cols()); }
  auto vector() const { return Eigen::Map<std::conditional_t<std::is_const_v<T>,
      const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>,
      Eigen::Matrix<T, Eigen::Dynamic, 1>>>(data_, size()); }

 private:
  T* data_ = nullptr;
  std::array<std::int64_t, 3> shape_{};
  int rank_ = 0;
};

/// Owning, zero-initialised, 64-byte-aligned storage with a shape. Moves but does not copy:
/// copies of activations and caches are always explicit (copy_from).
template <typename T>
class Tensor {
 public:
  static constexpr std::size_t kAlignment = 64;

  Tensor() = default;
  explicit Tensor(std::initializer_list<std::int64_t> shape) {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    KVLM_ASSERT(n >= 0);
    const std::size_t bytes = round_up(static_cast<std::size_t>(n) * sizeof(T));
    data_ = static_cast<T*>(::operator new(bytes, std::align_val_t{kAlignment}));
    std::memset(static_cast<void*>(data_), 0, bytes);
    view_ = TensorView<T>(data_, shape);
  }
  Tensor(Tensor&& other) noexcept { swap(other); }
  Tensor& operator=(Tensor&& other) noexcept {
    Tensor(std::move(other)).swap(*this);
    return *this;
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  ~Tensor() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t{kAlignment});
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::int64_t size() const { return view_.size(); }
  std::size_t byte_size() const { return static_cast<std::size_t>(size()) * sizeof(T); }
  TensorView<T> view() { return view_; }
  TensorView<const T> view() const { return view_; }

 private:
  static std::size_t round_up(std::size_t bytes) {
    return (bytes + kAlignment - 1) / kAlignment * kAlignment + (bytes == 0 ? kAlignment : 0);
  }
  void swap(Tensor& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(view_, other.view_);
  }

  T* data_ = nullptr;
  TensorView<T> view_;
};

/// A weight matrix as stored: [rows, cols] elements of `dtype`, row-major, rows = outputs and
/// cols = inputs (y = W x). A vector (a norm's weights) is [1, n]. Does not own `data`.
struct WeightView {
  DType dtype = DType::kF32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  const void* data = nullptr;
  /// The same matrix with its rows interleaved (kernels/interleaved.hpp), which matmul then
  /// multiplies by instead of `data`, or null. Does not own it either.
  const void* interleaved = nullptr;

  std::size_t byte_size() const { return static_cast<std::size_t>(rows) * row_bytes(dtype, cols); }
  /// Row r's bytes: row_bytes(dtype, cols) of them.
  const std::byte* row(std::int64_t r) const {
    return static_cast<const std::byte*>(data) + static_cast<std::size_t>(r) * row_bytes(dtype, cols);
  }

  /// The matrix as floats; valid only for kF32.
  TensorView<const float> f32() const {
    KVLM_ASSERT(dtype == DType::kF32);
    return TensorView<const float>(static_cast<const float*>(data), {rows, cols});
  }
};

}  // namespace kvlm
