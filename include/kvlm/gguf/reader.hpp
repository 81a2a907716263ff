#pragma once
// GgufFile: a GGUF file (ggml's model format, versions 2 and 3, little-endian) mapped read-only
// and validated in one pass: its metadata (typed key-value pairs, in file order) and its tensor
// table, each tensor a view into the mapped file. Layout:
//   "GGUF", uint32 version, uint64 n_tensors, uint64 n_kv,
//   n_kv x (string key, uint32 value type, value),
//   n_tensors x (string name, uint32 n_dims, n_dims x uint64 ne, uint32 ggml type,
//                uint64 offset relative to the data section),
//   padding to general.alignment (default 32), the data section.
// A string is a uint64 byte count and the bytes (no terminator, not checked for UTF-8); an array
// is a uint32 element type, a uint64 count and the elements. ne[0] is the contiguous dimension.
//
// Nothing in the file is trusted: every count, length, dimension and offset is checked against
// the named limits below and against the bytes that are actually there, with checked 64-bit
// arithmetic, before it is used; all reads go through detail::ByteCursor. Anything wrong is an
// Error(kFormat) naming the file, the key or tensor, and the offending value. The whole file is
// checked by open(); the getters only decode what open() has already walked.

#include <array>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvlm/detail/checked.hpp"
#include "kvlm/detail/mapped_file.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"

namespace kvlm::gguf {

/// The type of a metadata value, with GGUF's ids.
enum class ValueType : std::uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,  // one byte, 0 or 1
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

inline const char* to_string(ValueType type) {
  switch (type) {
    case ValueType::kUint8: return "uint8";
    case ValueType::kInt8: return "int8";
    case ValueType::kUint16: return "uint16";
    case ValueType::kInt16: return "int16";
    case ValueType::kUint32: return "uint32";
    case ValueType::kInt32: return "int32";
    case ValueType::kFloat32: return "float32";
    case ValueType::kBool: return "bool";
    case ValueType::kString: return "string";
    case ValueType::kArray: return "array";
    case ValueType::kUint64: return "uint64";
    case ValueType::kInt64: return "int64";
    case ValueType::kFloat64: return "float64";
  }
  return "unknown";
}

// Limits. Real files stay far below each; they exist so that no count from a file can make the
// reader allocate or loop without bound.
constexpr std::uint32_t kMagic = 0x46554747;            // "GGUF" read little-endian
constexpr std::uint32_t kDefaultAlignment = 32;         // when general.alignment is absent
constexpr std::uint32_t kMinAlignment = 8;              // the spec: a multiple of 8
constexpr std::uint64_t kMaxStringBytes = 64ull << 20;  // any string value: 64 MiB
constexpr std::uint64_t kMaxKeyBytes = 65535;           // the spec: keys < 2^16 bytes
constexpr std::uint64_t kMaxTensorNameBytes = 63;       // ggml's GGML_MAX_NAME, less its NUL
constexpr std::uint64_t kMaxArrayElements = 1ull << 31;
constexpr std::uint64_t kMaxKeyValues = 1ull << 20;
constexpr std::uint64_t kMaxTensors = 1ull << 20;
constexpr std::uint32_t kMaxDims = 4;
constexpr std::uint64_t kMaxDimensionSize = 1ull << 40;  // any one ne[i]
constexpr std::size_t kHeaderBytes = 4 + 4 + 8 + 8;
// The smallest a metadata entry can be (empty key, uint8 value) and the smallest a tensor info
// can be (empty name, one dimension): bounds on the counts before anything is reserved.
constexpr std::uint64_t kMinKeyValueBytes = 8 + 4 + 1;
constexpr std::uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

/// ggml's name for a tensor type id (including the many kvlm does not implement), or nullptr for
/// an id ggml never assigned (or has since removed).
inline const char* ggml_type_name(std::uint32_t id) {
  static constexpr std::array<const char*, 40> kNames = {
      "F32",     "F16",    "Q4_0",    "Q4_1",  nullptr,  nullptr, "Q5_0",  "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
      "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16",  nullptr,
      nullptr,   nullptr,  "TQ1_0",   "TQ2_0", nullptr,  nullptr, nullptr, "MXFP4"};
  return id < kNames.size() ? kNames[id] : nullptr;
}

/// One entry of the tensor table, checked: the dims fit the limits, the type is one kvlm runs,
/// ne[0] is a whole number of blocks, and [offset, offset + bytes) lies inside the file.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::uint32_t n_dims = 0;                     // 1..4
  std::array<std::uint64_t, 4> ne{1, 1, 1, 1};  // ne[0] contiguous (columns); unused dims are 1
  std::uint64_t offset = 0;                     // absolute, from the start of the file
  std::uint64_t bytes = 0;                      // row_bytes(dtype, ne[0]) * ne[1] * ne[2] * ne[3]
  const void* data = nullptr;                   // into GgufFile::storage()
};

/// A parsed, validated GGUF file. Copies share the mapped bytes; every TensorInfo::data stays
/// valid while any copy (or storage()) is alive. All const members are thread-safe.
class GgufFile {
 public:
  /// Maps `path` read-only (zero-copy) and validates all of it.
  /// @throws Error: kIo if the file cannot be mapped; kFormat for anything malformed.
  static GgufFile open(const std::string& path) {
    auto file = std::make_shared<const detail::MappedFile>(path);
    const std::byte* data = file->data();
    const std::size_t size = file->size();
    GgufFile f = parse(std::move(file), data, size, path);
    f.mapped_ = true;
    return f;
  }

  /// Parses bytes that `owner` keeps alive; `source` names them in messages. The bytes must be
  /// 8-byte aligned (a mapping or any allocation is), so that tensor data, at multiples of the
  /// file's alignment (itself a multiple of 8), is aligned for its element type.
  /// @throws Error: kInvalidArgument if `data` is misaligned; kFormat for anything malformed.
  static GgufFile parse(std::shared_ptr<const void> owner, const std::byte* data, std::size_t size,
                        std::string source) {
    if (reinterpret_cast<std::uintptr_t>(data) % kMinAlignment != 0) {
      throw Error(ErrorCode::kInvalidArgument,
                  source + ": GGUF bytes must start at an 8-byte-aligned address");
    }
    GgufFile f;
    f.owner_ = std::move(owner);
    f.data_ = data;
    f.size_ = size;
    f.path_ = std::move(source);
    f.parse_all();
    return f;
  }

  /// Copies `size` bytes into 64-byte-aligned memory the result owns, then parses them: for
  /// tests and for hosts that hold a model in memory.
  /// @throws Error(kFormat) for anything malformed.
  static GgufFile from_bytes(const void* bytes, std::size_t size, std::string source) {
    constexpr std::align_val_t kAlign{64};
    std::byte* copy = static_cast<std::byte*>(::operator new(size == 0 ? 1 : size, kAlign));
    std::shared_ptr<const void> owner(copy, [](const void* p) {
      ::operator delete(const_cast<void*>(p), std::align_val_t{64});
    });
    if (size != 0) std::memcpy(copy, bytes, size);
    return parse(std::move(owner), copy, size, std::move(source));
  }

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  std::uint32_t alignment() const { return alignment_; }
  /// Where the data section starts: the end of the tensor table rounded up to alignment().
  std::uint64_t data_offset() const { return data_offset_; }
  std::size_t size() const { return size_; }
  /// Owns the bytes every TensorInfo::data points into (the MappedFile for open()).
  std::shared_ptr<const void> storage() const { return owner_; }
  /// Whether storage() is a read-only mapping of the file (open()), not bytes in memory.
  bool mapped() const { return mapped_; }

  // ---- metadata ----

  /// The keys in file order.
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const Entry& e : entries_) out.push_back(e.key);
    return out;
  }
  std::size_t key_count() const { return entries_.size(); }
  bool has(const std::string& key) const { return index_.count(key) != 0; }

  /// @throws Error(kFormat) if the key is missing.
  ValueType type(const std::string& key) const { return value(key, "any type").type; }
  /// For an array: its element type and count. @throws Error(kFormat) if missing or not an array.
  ValueType array_type(const std::string& key) const { return array(key, nullptr).element; }
  std::uint64_t array_size(const std::string& key) const { return array(key, nullptr).count; }

  /// Typed getters: each throws Error(kFormat) naming the file, the key, the type expected and
  /// the type found when the key is missing or holds something else.
  std::string get_string(const std::string& key) const {
    const Value& v = value(key, "string");
    if (v.type != ValueType::kString) wrong_type(key, v, "string");
    detail::ByteCursor c = cursor_at(v.offset);
    const std::byte* p = c.read_bytes(v.count, key);
    return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(v.count));
  }

  /// Any integer type whose value fits in uint32: u8/u16/u32, non-negative i8..i64, and u64.
  std::uint32_t get_uint32(const std::string& key) const {
    const Value& v = value(key, "uint32");
    if (!is_integer(v.type)) wrong_type(key, v, "uint32");
    const bool fits = is_signed(v.type) ? (v.i >= 0 && v.i <= 0xFFFFFFFFll) : v.u <= 0xFFFFFFFFull;
    if (!fits) {
      throw Error(ErrorCode::kFormat, path_ + ": key " + key + " = " + scalar_text(v) + " (" +
                                          to_string(v.type) + ") does not fit uint32");
    }
    return static_cast<std::uint32_t>(is_signed(v.type) ? static_cast<std::uint64_t>(v.i) : v.u);
  }

  /// Any integer type whose value fits in int64 (all but uint64 values of 2^63 and above).
  std::int64_t get_int64(const std::string& key) const {
    const Value& v = value(key, "integer");
    if (!is_integer(v.type)) wrong_type(key, v, "an integer");
    if (is_signed(v.type)) return v.i;
    if (v.u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw Error(ErrorCode::kFormat,
                  path_ + ": key " + key + " = " + scalar_text(v) + " does not fit int64");
    }
    return static_cast<std::int64_t>(v.u);
  }

  /// float32, or float64 rounded to float (one beyond float's range is an Error(kFormat)).
  float get_float(const std::string& key) const {
    const Value& v = value(key, "float32");
    if (v.type != ValueType::kFloat32 && v.type != ValueType::kFloat64) {
      wrong_type(key, v, "float32");
    }
    if (std::isfinite(v.f) && std::abs(v.f) > std::numeric_limits<float>::max()) {
      throw Error(ErrorCode::kFormat, path() + ": " + key + " = " + std::to_string(v.f) +
                                          " does not fit a float32");
    }
    return static_cast<float>(v.f);
  }

  bool get_bool(const std::string& key) const {
    const Value& v = value(key, "bool");
    if (v.type != ValueType::kBool) wrong_type(key, v, "bool");
    return v.u != 0;
  }

  std::vector<std::string> get_string_array(const std::string& key) const {
    const Value& v = array(key, "array of string");
    if (v.element != ValueType::kString) wrong_type(key, v, "array of string");
    detail::ByteCursor c = cursor_at(v.offset);
    std::vector<std::string> out;
    out.reserve(static_cast<std::size_t>(v.count));  // open() walked them: count is real
    for (std::uint64_t i = 0; i < v.count; ++i) {
      const std::uint64_t n = c.read<std::uint64_t>(key);
      const std::byte* p = c.read_bytes(n, key);
      out.emplace_back(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    }
    return out;
  }

  /// Element type float32 only: a float64 or integer array is an error, not a silent conversion.
  std::vector<float> get_float_array(const std::string& key) const {
    const Value& v = array(key, "array of float32");
    if (v.element != ValueType::kFloat32) wrong_type(key, v, "array of float32");
    detail::ByteCursor c = cursor_at(v.offset);
    std::vector<float> out(static_cast<std::size_t>(v.count));
    for (float& x : out) x = c.read<float>(key);
    return out;
  }

  /// Element type int32, or uint32 whose every value is below 2^31 (some writers store
  /// non-negative ids that way); anything else is an error.
  std::vector<std::int32_t> get_int32_array(const std::string& key) const {
    const Value& v = array(key, "array of int32");
    if (v.element != ValueType::kInt32 && v.element != ValueType::kUint32) {
      wrong_type(key, v, "array of int32");
    }
    detail::ByteCursor c = cursor_at(v.offset);
    std::vector<std::int32_t> out(static_cast<std::size_t>(v.count));
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (v.element == ValueType::kInt32) {
        out[i] = c.read<std::int32_t>(key);
        continue;
      }
      const std::uint32_t u = c.read<std::uint32_t>(key);
      if (u > 0x7FFFFFFFu) {
        throw Error(ErrorCode::kFormat, path_ + ": key " + key + "[" + std::to_string(i) + "] = " +
                                            std::to_string(u) + " (uint32) does not fit int32");
      }
      out[i] = static_cast<std::int32_t>(u);
    }
    return out;
  }

  /// The same, or nothing when the key is absent; a key of the wrong type still throws.
  std::optional<std::string> find_string(const std::string& key) const {
    return has(key) ? std::optional<std::string>(get_string(key)) : std::nullopt;
  }
  std::optional<std::uint32_t> find_uint32(const std::string& key) const {
    return has(key) ? std::optional<std::uint32_t>(get_uint32(key)) : std::nullopt;
  }
  std::optional<std::int64_t> find_int64(const std::string& key) const {
    return has(key) ? std::optional<std::int64_t>(get_int64(key)) : std::nullopt;
  }
  std::optional<float> find_float(const std::string& key) const {
    return has(key) ? std::optional<float>(get_float(key)) : std::nullopt;
  }
  std::optional<bool> find_bool(const std::string& key) const {
    return has(key) ? std::optional<bool>(get_bool(key)) : std::nullopt;
  }

  /// A short, printable rendering of a value for summaries: "llama" (quoted, escaped, cut after
  /// 60 bytes), 128, 1e-05, true, [string x 32000].
  /// @throws Error(kFormat) if the key is missing.
  std::string describe(const std::string& key) const {
    const Value& v = value(key, "any type");
    if (v.type == ValueType::kArray) {
      return std::string("[") + to_string(v.element) + " x " + std::to_string(v.count) + "]";
    }
    if (v.type != ValueType::kString) return scalar_text(v);
    constexpr std::uint64_t kShown = 60;
    detail::ByteCursor c = cursor_at(v.offset);
    const std::uint64_t shown = v.count < kShown ? v.count : kShown;
    const std::byte* p = c.read_bytes(shown, key);
    std::string out = "\"";
    for (std::uint64_t i = 0; i < shown; ++i) {
      const auto ch = static_cast<unsigned char>(p[i]);
      if (ch == '"' || ch == '\\') {
        out += '\\';
        out += static_cast<char>(ch);
      } else if (ch < 0x20 || ch == 0x7F) {
        static constexpr char kHex[] = "0123456789abcdef";
        out += "\\x";
        out += kHex[ch >> 4];
        out += kHex[ch & 15];
      } else {
        out += static_cast<char>(ch);  // UTF-8 passes through
      }
    }
    out += '"';
    if (shown < v.count) out += "... (" + std::to_string(v.count) + " bytes)";
    return out;
  }

  // ---- tensors ----

  /// The tensor table in file order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The tensor called `name`, or nullptr.
  const TensorInfo* find_tensor(const std::string& name) const {
    const auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
  }

 private:
  struct Value {
    ValueType type = ValueType::kUint8;
    ValueType element = ValueType::kUint8;  // arrays: the element type
    std::uint64_t count = 0;                // strings: bytes; arrays: elements
    std::size_t offset = 0;                 // strings, arrays: where the payload starts
    std::uint64_t u = 0;                    // unsigned integers and bool
    std::int64_t i = 0;                     // signed integers
    double f = 0.0;                         // floats
  };
  struct Entry {
    std::string key;
    Value value;
  };
  // Tensors of one type kvlm does not run, gathered so the error can name them all at once.
  struct Unsupported {
    std::uint32_t type_id;
    std::uint64_t count;
    std::string first_tensor;
  };

  GgufFile() = default;

  static bool is_signed(ValueType t) {
    return t == ValueType::kInt8 || t == ValueType::kInt16 || t == ValueType::kInt32 ||
           t == ValueType::kInt64;
  }
  static bool is_integer(ValueType t) {
    return is_signed(t) || t == ValueType::kUint8 || t == ValueType::kUint16 ||
           t == ValueType::kUint32 || t == ValueType::kUint64;
  }
  // Bytes of one element of a fixed-size type; 0 for string and array.
  static std::uint64_t fixed_size(ValueType t) {
    switch (t) {
      case ValueType::kUint8:
      case ValueType::kInt8:
      case ValueType::kBool: return 1;
      case ValueType::kUint16:
      case ValueType::kInt16: return 2;
      case ValueType::kUint32:
      case ValueType::kInt32:
      case ValueType::kFloat32: return 4;
      case ValueType::kUint64:
      case ValueType::kInt64:
      case ValueType::kFloat64: return 8;
      case ValueType::kString:
      case ValueType::kArray: return 0;
    }
    return 0;
  }
  static bool is_known(std::uint32_t id) {
    return id <= static_cast<std::uint32_t>(ValueType::kFloat64);
  }

  static std::string type_text(const Value& v) {
    if (v.type != ValueType::kArray) return to_string(v.type);
    return std::string("array of ") + to_string(v.element);
  }

  static std::string scalar_text(const Value& v) {
    switch (v.type) {
      case ValueType::kBool: return v.u != 0 ? "true" : "false";
      case ValueType::kFloat32:
      case ValueType::kFloat64: {
        std::ostringstream s;
        s << v.f;
        return s.str();
      }
      default: return is_signed(v.type) ? std::to_string(v.i) : std::to_string(v.u);
    }
  }

  detail::ByteCursor cursor_at(std::size_t offset) const {
    return detail::ByteCursor(data_, size_, path_, offset);
  }

  const Value& value(const std::string& key, const char* expected) const {
    const auto it = index_.find(key);
    if (it == index_.end()) {
      throw Error(ErrorCode::kFormat,
                  path_ + ": key " + key + " is missing (expected " + expected + ")");
    }
    return entries_[it->second].value;
  }

  const Value& array(const std::string& key, const char* expected) const {
    const Value& v = value(key, expected ? expected : "array");
    if (v.type != ValueType::kArray) wrong_type(key, v, expected ? expected : "array");
    return v;
  }

  [[noreturn]] void wrong_type(const std::string& key, const Value& v, const char* expected) const {
    throw Error(ErrorCode::kFormat,
                path_ + ": key " + key + " is " + type_text(v) + ", expected " + expected);
  }

  [[noreturn]] void fail(const std::string& message) const {
    throw Error(ErrorCode::kFormat, path_ + ": " + message);
  }

  // A GGUF string in place: its byte count, checked against `limit` and the bytes left, and a
  // pointer to the bytes. `what` names it for messages.
  std::string read_string(detail::ByteCursor& c, std::uint64_t limit, const std::string& what) {
    const std::uint64_t n = c.read<std::uint64_t>("the length of " + what);
    if (n > limit) {
      fail(what + " is " + std::to_string(n) + " bytes long, more than the limit of " +
           std::to_string(limit));
    }
    const std::byte* p = c.read_bytes(n, what);
    return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
  }

  void parse_all() {
    detail::ByteCursor c(data_, size_, path_);
    parse_header(c);
    entries_.reserve(static_cast<std::size_t>(n_kv_));
    for (std::uint64_t k = 0; k < n_kv_; ++k) parse_key_value(c, k);
    parse_alignment();
    tensors_.reserve(static_cast<std::size_t>(n_tensors_));
    std::vector<Unsupported> unsupported;  // by first appearance
    for (std::uint64_t t = 0; t < n_tensors_; ++t) parse_tensor_info(c, t, unsupported);
    if (!unsupported.empty()) refuse_unsupported(unsupported);
    data_offset_ =
        detail::checked_add(c.offset(), alignment_ - 1, path_ + ": the start of the data section");
    data_offset_ &= ~static_cast<std::uint64_t>(alignment_ - 1);
    for (TensorInfo& t : tensors_) locate(c, t);
  }

  void parse_header(detail::ByteCursor& c) {
    if (size_ < 4) {
      fail("not a GGUF file: it is " + std::to_string(size_) + " bytes, shorter than the magic");
    }
    const std::uint32_t magic = c.read<std::uint32_t>("the magic");
    if (magic != kMagic) {
      char hex[32];
      std::snprintf(hex, sizeof hex, "%02x %02x %02x %02x", magic & 0xFF, (magic >> 8) & 0xFF,
                    (magic >> 16) & 0xFF, magic >> 24);
      fail(std::string("not a GGUF file: it starts with bytes ") + hex + ", not \"GGUF\"");
    }
    version_ = c.read<std::uint32_t>("the version");
    const std::uint32_t swapped = (version_ >> 24) | ((version_ >> 8) & 0xFF00) |
                                  ((version_ << 8) & 0xFF0000) | (version_ << 24);
    if ((version_ & 0xFFFF) == 0 && swapped >= 1 && swapped <= 3) {
      fail("big-endian GGUF file (version " + std::to_string(swapped) +
           " stored big-endian); kvlm reads little-endian GGUF only");
    }
    if (version_ == 1) {
      fail("GGUF version 1 is not supported (it has 32-bit counts); re-convert the model");
    }
    if (version_ != 2 && version_ != 3) {
      fail("unsupported GGUF version " + std::to_string(version_) + " (kvlm reads 2 and 3)");
    }
    n_tensors_ = c.read<std::uint64_t>("the tensor count");
    n_kv_ = c.read<std::uint64_t>("the metadata count");
    const std::uint64_t left = c.remaining();
    if (n_kv_ > kMaxKeyValues || n_kv_ > left / kMinKeyValueBytes) {
      fail("metadata count " + std::to_string(n_kv_) + " cannot be right: the limit is " +
           std::to_string(kMaxKeyValues) + " and the " + std::to_string(left) +
           " bytes after the header hold at most " + std::to_string(left / kMinKeyValueBytes));
    }
    if (n_tensors_ > kMaxTensors || n_tensors_ > left / kMinTensorInfoBytes) {
      fail("tensor count " + std::to_string(n_tensors_) + " cannot be right: the limit is " +
           std::to_string(kMaxTensors) + " and the " + std::to_string(left) +
           " bytes after the header hold at most " + std::to_string(left / kMinTensorInfoBytes));
    }
    // Both below 2^20, so neither product nor the sum can overflow.
    if (n_kv_ * kMinKeyValueBytes + n_tensors_ * kMinTensorInfoBytes > left) {
      fail(std::to_string(n_kv_) + " metadata entries and " + std::to_string(n_tensors_) +
           " tensor infos cannot fit in the " + std::to_string(left) + " bytes after the header");
    }
  }

  void parse_key_value(detail::ByteCursor& c, std::uint64_t k) {
    const std::string key = read_string(c, kMaxKeyBytes, "key " + std::to_string(k));
    const std::string what = "the value of key " + key;
    Value v;
    const std::uint32_t type_id = c.read<std::uint32_t>("the type of key " + key);
    if (!is_known(type_id)) {
      fail("key " + key + " has value type " + std::to_string(type_id) +
           ", which is not a GGUF type (0..12)");
    }
    v.type = static_cast<ValueType>(type_id);
    if (v.type == ValueType::kArray) {
      const std::uint32_t element_id = c.read<std::uint32_t>("the element type of key " + key);
      if (element_id == static_cast<std::uint32_t>(ValueType::kArray)) {
        fail("key " + key +
             " is an array of arrays; nested arrays are not supported "
             "(kvlm has no use for them)");
      }
      if (!is_known(element_id)) {
        fail("key " + key + " is an array of value type " + std::to_string(element_id) +
             ", which is not a GGUF type (0..12)");
      }
      v.element = static_cast<ValueType>(element_id);
      v.count = c.read<std::uint64_t>("the length of key " + key);
      if (v.count > kMaxArrayElements) {
        fail("key " + key + " is an array of " + std::to_string(v.count) +
             " elements, more than the limit of " + std::to_string(kMaxArrayElements));
      }
      v.offset = c.offset();
      if (v.element == ValueType::kString) {
        if (v.count > c.remaining() / 8) {
          fail("key " + key + " is an array of " + std::to_string(v.count) +
               " strings, which cannot fit in the " + std::to_string(c.remaining()) +
               " bytes left");
        }
        for (std::uint64_t i = 0; i < v.count; ++i) {
          const std::uint64_t n = c.read<std::uint64_t>(what);
          if (n > kMaxStringBytes) {
            fail("key " + key + "[" + std::to_string(i) + "] is " + std::to_string(n) +
                 " bytes long, more than the limit of " + std::to_string(kMaxStringBytes));
          }
          c.skip(n, what);
        }
      } else {
        const std::uint64_t bytes =
            detail::checked_mul(v.count, fixed_size(v.element), path_ + ": key " + key + " size");
        const std::byte* p = c.read_bytes(bytes, what);
        if (v.element == ValueType::kBool) {
          detail::ByteCursor b(p, static_cast<std::size_t>(bytes), path_);
          for (std::uint64_t i = 0; i < v.count; ++i) {
            const auto x = b.read<std::uint8_t>(what);
            if (x > 1) {
              fail("key " + key + "[" + std::to_string(i) + "] is a bool of value " +
                   std::to_string(x) + ", neither 0 nor 1");
            }
          }
        }
      }
    } else if (v.type == ValueType::kString) {
      const std::uint64_t n = c.read<std::uint64_t>("the length of " + what);
      if (n > kMaxStringBytes) {
        fail("key " + key + " is a string of " + std::to_string(n) +
             " bytes, more than the limit of " + std::to_string(kMaxStringBytes));
      }
      v.count = n;
      v.offset = c.offset();
      c.skip(n, what);
    } else {
      read_scalar(c, v, key, what);
    }
    const auto [it, inserted] = index_.emplace(key, entries_.size());
    if (!inserted) {
      fail("key " + key + " appears twice (metadata entries " + std::to_string(it->second) +
           " and " + std::to_string(k) + ")");
    }
    entries_.push_back(Entry{key, v});
  }

  void read_scalar(detail::ByteCursor& c, Value& v, const std::string& key,
                   const std::string& what) {
    switch (v.type) {
      case ValueType::kUint8: v.u = c.read<std::uint8_t>(what); break;
      case ValueType::kInt8: v.i = c.read<std::int8_t>(what); break;
      case ValueType::kUint16: v.u = c.read<std::uint16_t>(what); break;
      case ValueType::kInt16: v.i = c.read<std::int16_t>(what); break;
      case ValueType::kUint32: v.u = c.read<std::uint32_t>(what); break;
      case ValueType::kInt32: v.i = c.read<std::int32_t>(what); break;
      case ValueType::kUint64: v.u = c.read<std::uint64_t>(what); break;
      case ValueType::kInt64: v.i = c.read<std::int64_t>(what); break;
      case ValueType::kFloat32: v.f = c.read<float>(what); break;
      case ValueType::kFloat64: v.f = c.read<double>(what); break;
      case ValueType::kBool:
        v.u = c.read<std::uint8_t>(what);
        if (v.u > 1) {
          fail("key " + key + " is a bool of value " + std::to_string(v.u) + ", neither 0 nor 1");
        }
        break;
      case ValueType::kString:
      case ValueType::kArray: break;  // handled by the caller
    }
  }

  void parse_alignment() {
    const auto it = index_.find("general.alignment");
    if (it == index_.end()) return;
    const Value& v = entries_[it->second].value;
    if (v.type != ValueType::kUint32) {
      fail("general.alignment is " + type_text(v) + " (" +
           (v.type == ValueType::kArray ? std::string("...") : describe("general.alignment")) +
           "), expected uint32");
    }
    const std::uint64_t a = v.u;
    if (a == 0 || (a & (a - 1)) != 0) {
      fail("general.alignment = " + std::to_string(a) + " is not a power of two");
    }
    if (a < kMinAlignment) {
      fail("general.alignment = " + std::to_string(a) + " is not a multiple of " +
           std::to_string(kMinAlignment) + " (GGUF requires one)");
    }
    alignment_ = static_cast<std::uint32_t>(a);
  }

  void parse_tensor_info(detail::ByteCursor& c, std::uint64_t index,
                         std::vector<Unsupported>& unsupported) {
    TensorInfo t;
    t.name = read_string(c, kMaxTensorNameBytes, "the name of tensor " + std::to_string(index));
    const std::string label = "tensor " + t.name;
    t.n_dims = c.read<std::uint32_t>("the n_dims of " + label);
    if (t.n_dims == 0 || t.n_dims > kMaxDims) {
      fail(label + " has n_dims = " + std::to_string(t.n_dims) + "; GGUF tensors have 1 to " +
           std::to_string(kMaxDims));
    }
    std::uint64_t elements = 1;
    for (std::uint32_t d = 0; d < t.n_dims; ++d) {
      const std::uint64_t n = c.read<std::uint64_t>("the shape of " + label);
      if (n == 0 || n > kMaxDimensionSize) {
        fail(label + " has ne[" + std::to_string(d) + "] = " + std::to_string(n) +
             ", outside [1, " + std::to_string(kMaxDimensionSize) + "]");
      }
      t.ne[d] = n;
      elements = detail::checked_mul(elements, n, path_ + ": " + label + " element count");
    }
    const std::uint32_t type_id = c.read<std::uint32_t>("the type of " + label);
    const std::uint64_t relative = c.read<std::uint64_t>("the offset of " + label);
    const auto [it, inserted] = tensor_index_.emplace(t.name, tensors_.size());
    if (!inserted) {
      fail(label + " appears twice (tensor infos " + std::to_string(it->second) + " and " +
           std::to_string(index) + ")");
    }
    const std::optional<DType> dtype = dtype_from_ggml(type_id);
    if (!dtype) {
      auto u = unsupported.begin();
      while (u != unsupported.end() && u->type_id != type_id) ++u;
      if (u == unsupported.end()) {
        unsupported.push_back(Unsupported{type_id, 1, t.name});
      } else {
        ++u->count;
      }
      tensors_.push_back(std::move(t));  // keeps tensor_index_ in step; the file is refused later
      return;
    }
    t.dtype = *dtype;
    const DTypeInfo info = kvlm::info(t.dtype);
    if (t.ne[0] % static_cast<std::uint64_t>(info.block_size) != 0) {
      fail(label + " has ne[0] = " + std::to_string(t.ne[0]) + ", not a multiple of " + info.name +
           "'s block size " + std::to_string(info.block_size));
    }
    // ne[0] <= 2^40 and block_bytes <= 210, so one row's bytes cannot overflow.
    const std::uint64_t row = row_bytes(t.dtype, static_cast<std::int64_t>(t.ne[0]));
    t.bytes = detail::checked_mul(row, elements / t.ne[0], path_ + ": " + label + " byte size");
    t.offset = relative;  // made absolute by locate() once the data section is known
    tensors_.push_back(std::move(t));
  }

  [[noreturn]] void refuse_unsupported(const std::vector<Unsupported>& unsupported) const {
    auto name = [](std::uint32_t id) {
      const char* n = ggml_type_name(id);
      if (n != nullptr) return std::string(n);
      if (id > 0x7FFFFFFFu) {  // ggml stores the type as a signed enum
        return "negative as int32: " + std::to_string(static_cast<std::int64_t>(id) - (1ll << 32));
      }
      return std::string("unknown to ggml");
    };
    const Unsupported& first = unsupported.front();
    std::string message = "tensor " + first.first_tensor + " has type " +
                          std::to_string(first.type_id) + " (" + name(first.type_id) +
                          "), which kvlm does not support (this file's unsupported types:";
    for (const Unsupported& u : unsupported) {
      message += " " + name(u.type_id) + " x" + std::to_string(u.count) + ", first " +
                 u.first_tensor + ";";
    }
    message += " kvlm runs F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K)";
    fail(message);
  }

  void locate(detail::ByteCursor& c, TensorInfo& t) {
    const std::string label = "tensor " + t.name;
    if (t.offset % alignment_ != 0) {
      fail(label + " has offset " + std::to_string(t.offset) +
           ", not a multiple of the alignment " + std::to_string(alignment_));
    }
    const std::uint64_t begin =
        detail::checked_add(data_offset_, t.offset, path_ + ": " + label + " offset");
    const std::uint64_t end = detail::checked_add(begin, t.bytes, path_ + ": " + label + " end");
    if (end > size_) {
      fail(label + " (" + std::to_string(t.bytes) + " bytes at offset " + std::to_string(t.offset) +
           " in the data section, file offset " + std::to_string(begin) +
           ") runs past the end of the " + std::to_string(size_) + "-byte file");
    }
    c.seek(begin, label);
    t.data = c.read_bytes(t.bytes, label);
    t.offset = begin;
  }

  std::shared_ptr<const void> owner_;
  bool mapped_ = false;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
  std::uint32_t version_ = 0;
  std::uint32_t alignment_ = kDefaultAlignment;
  std::uint64_t n_tensors_ = 0;
  std::uint64_t n_kv_ = 0;
  std::uint64_t data_offset_ = 0;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> tensor_index_;
};

}  // namespace kvlm::gguf
