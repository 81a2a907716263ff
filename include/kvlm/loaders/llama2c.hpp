#pragma once
// Loader for llama2.c checkpoints (karpathy/llama2.c export.py), float32 only:
//  - legacy (v0): a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//    vocab_size, max_seq_len; a negative vocab_size means a separate classifier), then
//    token_embd, per-layer stacks of attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, the final
//    norm, two RoPE tables [max_seq_len, head_dim / 2] (ignored: kvlm computes its own), and the
//    classifier if it is not shared;
//  - version 1: magic "ak42" (uint32 0x616b3432), int32 version = 1, the same 7 int32, a uint8
//    shared-classifier flag, zero padding to 256 bytes, then the norms first (attn_norm stack,
//    ffn_norm stack, final norm), token_embd, the stacks wq, wk, wv, wo, w1, w2, w3, and the
//    classifier if it is not shared. No RoPE tables.
// Every size is checked against the file length before a view is made; head_dim = dim / n_heads.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "kvlm/config.hpp"
#include "kvlm/detail/mapped_file.hpp"
#include "kvlm/error.hpp"
#include "kvlm/loaders/model_file.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {
namespace detail {

constexpr std::uint32_t kLlama2cMagic = 0x616b3432;  // "ak42"
constexpr std::size_t kLlama2cLegacyHeaderBytes = 7 * sizeof(std::int32_t);
constexpr std::size_t kLlama2cV1HeaderBytes = 256;

inline std::int32_t read_i32(const std::byte* p) {
  std::int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Hands out consecutive float32 matrices of a mapped file as named weight views, refusing any
// that would run past the end of the file.
class Llama2cCursor {
 public:
  Llama2cCursor(const MappedFile& file, std::size_t offset, ModelFile& out)
      : file_(file), offset_(offset), out_(out) {}

  void matrix(const std::string& name, std::int64_t rows, std::int64_t cols) {
    out_.weights[name] = WeightView{DType::kF32, rows, cols, take(rows * cols, name)};
  }
  // A stack of one [rows, cols] matrix per layer, named blk.<layer>.<suffix>.
  void layers(const char* suffix, std::int64_t rows, std::int64_t cols) {
    for (int l = 0; l < out_.config.n_layers; ++l) {
      matrix("blk." + std::to_string(l) + "." + suffix, rows, cols);
    }
  }
  void skip(std::int64_t floats, const std::string& what) { take(floats, what); }

  std::size_t offset() const { return offset_; }
  std::size_t remaining() const { return file_.size() - offset_; }

 private:
  const void* take(std::int64_t floats, const std::string& what) {
    // Every dimension is at most 2^24 (validate()), so floats * 4 cannot overflow.
    const auto bytes = static_cast<std::size_t>(floats) * sizeof(float);
    if (bytes > remaining()) {
      throw Error(ErrorCode::kFormat,
                  file_.path() + ": file ends inside " + what + " (needs " +
                      std::to_string(bytes) + " bytes at offset " + std::to_string(offset_) +
                      ", file has " + std::to_string(file_.size()) + ")");
    }
    const std::byte* p = file_.data() + offset_;
    offset_ += bytes;
    return p;
  }

  const MappedFile& file_;
  std::size_t offset_;
  ModelFile& out_;
};

}  // namespace detail

/// Loads a llama2.c checkpoint (legacy or version 1) by mapping it read-only.
/// @throws Error: kIo if the file cannot be read; kFormat if it is too short, has an unsupported
///         version or its size does not match its header; kConfig if the header makes no sense.
inline ModelFile load_llama2c(const std::string& path) {
  auto file = std::make_shared<const detail::MappedFile>(path);
  const std::byte* bytes = file->data();
  const bool v1 = file->size() >= 4 &&
                  static_cast<std::uint32_t>(detail::read_i32(bytes)) == detail::kLlama2cMagic;
  const std::size_t header_bytes =
      v1 ? detail::kLlama2cV1HeaderBytes : detail::kLlama2cLegacyHeaderBytes;
  if (file->size() < header_bytes) {
    throw Error(ErrorCode::kFormat, path + ": file is " + std::to_string(file->size()) +
                                        " bytes, shorter than a llama2.c header (" +
                                        std::to_string(header_bytes) + " bytes)");
  }
  if (v1 && detail::read_i32(bytes + 4) != 1) {
    throw Error(ErrorCode::kFormat, path + ": llama2.c export version " +
                                        std::to_string(detail::read_i32(bytes + 4)) +
                                        " is not supported (only version 1, float32)");
  }

  ModelFile out;
  ModelConfig& c = out.config;
  const std::byte* fields = bytes + (v1 ? 8 : 0);
  c.dim = detail::read_i32(fields + 0);
  c.hidden_dim = detail::read_i32(fields + 4);
  c.n_layers = detail::read_i32(fields + 8);
  c.n_heads = detail::read_i32(fields + 12);
  c.n_kv_heads = detail::read_i32(fields + 16);
  const std::int32_t vocab = detail::read_i32(fields + 20);
  c.max_seq_len = detail::read_i32(fields + 24);
  c.shared_classifier = v1 ? bytes[36] != std::byte{0} : vocab > 0;
  // Only the legacy header signs vocab_size; INT32_MIN has no absolute value and stays as read,
  // so validate() names it.
  c.vocab_size = (v1 || vocab == INT32_MIN) ? vocab : std::abs(vocab);
  if (c.n_heads > 0 && c.dim % c.n_heads != 0) {
    throw Error(ErrorCode::kConfig, path + ": not a llama2.c checkpoint's header: dim = " +
                                        std::to_string(c.dim) +
                                        " is not divisible by n_heads = " +
                                        std::to_string(c.n_heads));
  }
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.code(), path + ": not a llama2.c checkpoint's header: " + e.what());
  }

  const std::int64_t dim = c.dim, hidden = c.hidden_dim, vocab_size = c.vocab_size;
  const std::int64_t q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const std::int64_t rope_tables = 2LL * c.max_seq_len * (c.head_dim / 2);
  detail::Llama2cCursor cursor(*file, header_bytes, out);
  if (v1) {
    cursor.layers("attn_norm.weight", 1, dim);
    cursor.layers("ffn_norm.weight", 1, dim);
    cursor.matrix("output_norm.weight", 1, dim);
    cursor.matrix("token_embd.weight", vocab_size, dim);
  } else {
    cursor.matrix("token_embd.weight", vocab_size, dim);
    cursor.layers("attn_norm.weight", 1, dim);
  }
  cursor.layers("attn_q.weight", q_dim, dim);
  cursor.layers("attn_k.weight", kv_dim, dim);
  cursor.layers("attn_v.weight", kv_dim, dim);
  cursor.layers("attn_output.weight", dim, q_dim);
  if (!v1) cursor.layers("ffn_norm.weight", 1, dim);
  cursor.layers("ffn_gate.weight", hidden, dim);
  cursor.layers("ffn_down.weight", dim, hidden);
  cursor.layers("ffn_up.weight", hidden, dim);
  if (!v1) {
    cursor.matrix("output_norm.weight", 1, dim);
    // Shared-classifier legacy files may end before the RoPE tables; all others carry them.
    const bool ends_here = c.shared_classifier && cursor.remaining() == 0;
    if (!ends_here) cursor.skip(rope_tables, "the RoPE tables");
  }
  if (!c.shared_classifier) cursor.matrix("output.weight", vocab_size, dim);
  if (cursor.remaining() != 0) {
    throw Error(ErrorCode::kFormat,
                path + ": " + std::to_string(cursor.remaining()) +
                    " bytes follow the last tensor; the file does not match its header (" +
                    std::to_string(file->size()) + " bytes, tensors end at " +
                    std::to_string(cursor.offset()) + ")");
  }
  out.format = v1 ? "llama2.c (version 1)" : "llama2.c (legacy)";
  out.file_bytes = file->size();
  out.source = path;
  out.storage = std::move(file);
  return out;
}

}  // namespace kvlm
