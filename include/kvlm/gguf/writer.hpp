#pragma once
// GgufWriter: writes a GGUF version 3 file (little-endian) that gguf::GgufFile and llama.cpp
// read: metadata in insertion order, then the tensor table, then each tensor's data at an offset
// aligned to general.alignment (32 unless set), zero-padded. Follow llama.cpp's key and type
// conventions when writing models (e.g. llama.embedding_length as uint32,
// llama.attention.layer_norm_rms_epsilon as float32, tokenizer.ggml.bos_token_id as uint32).

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvlm/detail/checked.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/gguf/reader.hpp"

namespace kvlm::gguf {

class GgufWriter {
 public:
  static constexpr std::uint32_t kVersion = 3;

  /// Sets `key` to a value. Keys keep the position of their first set(); setting a key again
  /// replaces its value (and type). general.alignment must be a uint32 power of two >= 8.
  /// @throws Error(kInvalidArgument) for a bad general.alignment, a key longer than
  ///         kMaxKeyBytes or a string longer than kMaxStringBytes.
  void set(const std::string& key, const std::string& value) {
    std::string v;
    put_string(v, value, key);
    store(key, ValueType::kString, std::move(v));
  }
  void set(const std::string& key, const char* value) { set(key, std::string(value)); }
  void set(const std::string& key, std::uint8_t value) { scalar(key, ValueType::kUint8, value); }
  void set(const std::string& key, std::int8_t value) { scalar(key, ValueType::kInt8, value); }
  void set(const std::string& key, std::uint16_t value) { scalar(key, ValueType::kUint16, value); }
  void set(const std::string& key, std::int16_t value) { scalar(key, ValueType::kInt16, value); }
  void set(const std::string& key, std::uint32_t value) {
    if (key == kAlignmentKey) {
      if (value < kMinAlignment || (value & (value - 1)) != 0) {
        throw Error(ErrorCode::kInvalidArgument,
                    "GgufWriter: general.alignment = " + std::to_string(value) +
                        " must be a power of two >= " + std::to_string(kMinAlignment));
      }
      alignment_ = value;
    }
    scalar(key, ValueType::kUint32, value);
  }
  void set(const std::string& key, std::int32_t value) { scalar(key, ValueType::kInt32, value); }
  void set(const std::string& key, std::uint64_t value) { scalar(key, ValueType::kUint64, value); }
  void set(const std::string& key, std::int64_t value) { scalar(key, ValueType::kInt64, value); }
  void set(const std::string& key, float value) { scalar(key, ValueType::kFloat32, value); }
  void set(const std::string& key, double value) { scalar(key, ValueType::kFloat64, value); }
  void set(const std::string& key, bool value) {
    scalar(key, ValueType::kBool, static_cast<std::uint8_t>(value ? 1 : 0));
  }

  /// Sets `key` to an array (same replacement rule as set()).
  void set_array(const std::string& key, const std::vector<std::string>& values) {
    std::string v;
    detail::append_le<std::uint32_t>(v, static_cast<std::uint32_t>(ValueType::kString));
    detail::append_le<std::uint64_t>(v, values.size());
    for (const std::string& s : values) put_string(v, s, key);
    store(key, ValueType::kArray, std::move(v));
  }
  void set_array(const std::string& key, const std::vector<float>& values) {
    array(key, ValueType::kFloat32, values);
  }
  void set_array(const std::string& key, const std::vector<std::int32_t>& values) {
    array(key, ValueType::kInt32, values);
  }
  void set_array(const std::string& key, const std::vector<std::uint8_t>& values) {
    array(key, ValueType::kUint8, values);
  }
  void set_array(const std::string& key, const std::vector<std::int8_t>& values) {
    array(key, ValueType::kInt8, values);
  }
  void set_array(const std::string& key, const std::vector<std::uint16_t>& values) {
    array(key, ValueType::kUint16, values);
  }
  void set_array(const std::string& key, const std::vector<std::int16_t>& values) {
    array(key, ValueType::kInt16, values);
  }
  void set_array(const std::string& key, const std::vector<std::uint32_t>& values) {
    array(key, ValueType::kUint32, values);
  }
  void set_array(const std::string& key, const std::vector<std::uint64_t>& values) {
    array(key, ValueType::kUint64, values);
  }
  void set_array(const std::string& key, const std::vector<std::int64_t>& values) {
    array(key, ValueType::kInt64, values);
  }
  void set_array(const std::string& key, const std::vector<double>& values) {
    array(key, ValueType::kFloat64, values);
  }
  void set_array(const std::string& key, const std::vector<bool>& values) {
    std::vector<std::uint8_t> bytes(values.begin(), values.end());
    array(key, ValueType::kBool, bytes);
  }

  /// Removes `key` if present; returns whether it was.
  bool remove(const std::string& key) {
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->key != key) continue;
      if (key == kAlignmentKey) alignment_ = kDefaultAlignment;
      entries_.erase(it);
      return true;
    }
    return false;
  }

  /// Adds a tensor of shape ne (ne[0] contiguous: a [rows, cols] matrix is ne = {cols, rows})
  /// whose row_bytes(dtype, ne[0]) * ne[1] * ... bytes are at `data`. Does not copy: `data`
  /// must stay valid until write() or to_bytes() returns.
  /// @throws Error(kInvalidArgument) for a duplicate or over-long name, 0 or more than 4 dims,
  ///         a dimension of 0 or above kMaxDimensionSize, ne[0] not a whole number of blocks,
  ///         or null data.
  void add_tensor(const std::string& name, DType dtype, std::vector<std::uint64_t> ne,
                  const void* data) {
    auto bad = [&](const std::string& why) {
      throw Error(ErrorCode::kInvalidArgument, "GgufWriter: tensor " + name + ": " + why);
    };
    if (name.size() > kMaxTensorNameBytes) {
      bad("name longer than " + std::to_string(kMaxTensorNameBytes) + " bytes");
    }
    for (const Tensor& t : tensors_) {
      if (t.name == name) bad("added twice");
    }
    if (ne.empty() || ne.size() > kMaxDims) bad(std::to_string(ne.size()) + " dimensions");
    std::uint64_t rows = 1;
    for (std::uint64_t n : ne) {
      if (n == 0 || n > kMaxDimensionSize) bad("dimension " + std::to_string(n));
    }
    for (std::size_t d = 1; d < ne.size(); ++d) {
      rows = detail::checked_mul(rows, ne[d], "GgufWriter: tensor " + name + " rows");
    }
    const DTypeInfo i = info(dtype);
    if (ne[0] % static_cast<std::uint64_t>(i.block_size) != 0) {
      bad("ne[0] = " + std::to_string(ne[0]) + " is not a multiple of " + i.name +
          "'s block size " + std::to_string(i.block_size));
    }
    if (data == nullptr) bad("no data");
    const std::uint64_t bytes =
        detail::checked_mul(row_bytes(dtype, static_cast<std::int64_t>(ne[0])), rows,
                            "GgufWriter: tensor " + name + " bytes");
    tensors_.push_back(Tensor{name, dtype, std::move(ne), data, bytes});
  }

  std::uint32_t alignment() const { return alignment_; }

  /// The whole file in memory (a copy of every tensor's data).
  std::string to_bytes() const {
    std::string out;
    emit([&](const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); });
    return out;
  }

  /// Writes the file to path + ".tmp", then renames it to path, so a failed write never leaves
  /// a partial file under `path`.
  /// @throws Error(kIo) naming the path and the system's reason.
  void write(const std::string& path) const {
    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (f == nullptr) fail_io(path, tmp, nullptr, "cannot create");
    bool ok = true;
    try {
      emit([&](const void* p, std::size_t n) {
        if (ok && n != 0 && std::fwrite(p, 1, n, f) != n) ok = false;
      });
    } catch (...) {
      std::fclose(f);
      std::remove(tmp.c_str());
      throw;
    }
    if (!ok) fail_io(path, tmp, f, "cannot write");
    if (std::fflush(f) != 0) fail_io(path, tmp, f, "cannot write");
    const int closed = std::fclose(f);
    if (closed != 0) fail_io(path, tmp, nullptr, "cannot write");
    if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_io(path, tmp, nullptr, "cannot rename");
  }

 private:
  static constexpr const char* kAlignmentKey = "general.alignment";

  struct Entry {
    std::string key;
    std::string value;  // uint32 type id, then the value's bytes
  };
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<std::uint64_t> ne;
    const void* data;
    std::uint64_t bytes;
  };

  static void put_string(std::string& out, const std::string& s, const std::string& key) {
    if (s.size() > kMaxStringBytes) {
      throw Error(ErrorCode::kInvalidArgument, "GgufWriter: a string of key " + key + " is " +
                                                   std::to_string(s.size()) +
                                                   " bytes, more than the limit");
    }
    detail::append_le<std::uint64_t>(out, s.size());
    out += s;
  }

  template <typename T>
  void scalar(const std::string& key, ValueType type, T value) {
    std::string v;
    detail::append_le<T>(v, value);
    store(key, type, std::move(v));
  }

  template <typename T>
  void array(const std::string& key, ValueType element, const std::vector<T>& values) {
    std::string v;
    detail::append_le<std::uint32_t>(v, static_cast<std::uint32_t>(element));
    detail::append_le<std::uint64_t>(v, values.size());
    for (const T& x : values) detail::append_le<T>(v, x);
    store(key, ValueType::kArray, std::move(v));
  }

  // Stores the value's bytes (everything after its type id) under `key`, in place if the key
  // exists.
  void store(const std::string& key, ValueType type, std::string bytes) {
    if (key.size() > kMaxKeyBytes) {
      throw Error(ErrorCode::kInvalidArgument, "GgufWriter: a key of " +
                                                   std::to_string(key.size()) +
                                                   " bytes is longer than GGUF allows (65535)");
    }
    if (key == kAlignmentKey && type != ValueType::kUint32) {
      throw Error(
          ErrorCode::kInvalidArgument,
          "GgufWriter: general.alignment must be a uint32, not " + std::string(to_string(type)));
    }
    std::string value;
    detail::append_le<std::uint32_t>(value, static_cast<std::uint32_t>(type));
    value += bytes;
    for (Entry& e : entries_) {
      if (e.key == key) {
        e.value = std::move(value);
        return;
      }
    }
    entries_.push_back(Entry{key, std::move(value)});
  }

  static std::uint64_t round_up(std::uint64_t n, std::uint64_t a) { return (n + a - 1) / a * a; }

  template <typename Sink>
  void emit(Sink&& sink) const {
    std::string head;
    detail::append_le<std::uint32_t>(head, kMagic);
    detail::append_le<std::uint32_t>(head, kVersion);
    detail::append_le<std::uint64_t>(head, tensors_.size());
    detail::append_le<std::uint64_t>(head, entries_.size());
    for (const Entry& e : entries_) {
      put_string(head, e.key, e.key);
      head += e.value;
    }
    std::uint64_t offset = 0;  // relative to the data section
    for (const Tensor& t : tensors_) {
      put_string(head, t.name, t.name);
      detail::append_le<std::uint32_t>(head, static_cast<std::uint32_t>(t.ne.size()));
      for (std::uint64_t n : t.ne) detail::append_le<std::uint64_t>(head, n);
      detail::append_le<std::uint32_t>(head, static_cast<std::uint32_t>(t.dtype));
      detail::append_le<std::uint64_t>(head, offset);
      offset = round_up(offset + t.bytes, alignment_);
    }
    head.resize(static_cast<std::size_t>(round_up(head.size(), alignment_)), '\0');
    sink(head.data(), head.size());
    const std::string zeros(alignment_, '\0');
    for (const Tensor& t : tensors_) {
      sink(t.data, static_cast<std::size_t>(t.bytes));
      const std::uint64_t pad = round_up(t.bytes, alignment_) - t.bytes;
      sink(zeros.data(), static_cast<std::size_t>(pad));
    }
  }

  [[noreturn]] static void fail_io(const std::string& path, const std::string& tmp, std::FILE* f,
                                   const char* what) {
    const int err = errno;
    if (f != nullptr) std::fclose(f);
    std::remove(tmp.c_str());
    throw Error(ErrorCode::kIo, path + ": " + what + " " + tmp + ": " + std::strerror(err));
  }

  std::vector<Entry> entries_;
  std::vector<Tensor> tensors_;
  std::uint32_t alignment_ = kDefaultAlignment;
};

}  // namespace kvlm::gguf
