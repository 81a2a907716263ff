#pragma once
// quantize: writes a model as a GGUF file with its weight matrices converted to one DType, the
// way llama.cpp's `llama-quantize --pure` does: every matrix (the embedding table and the
// classifier included) in the target type, norms in F32, the tokenizer carried along, the
// metadata keys and tensor names llama.cpp uses. Conversion goes through float32 and the
// reference quantizers (kernels::scalar::from_float), whose bytes equal llama.cpp's.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/gguf/writer.hpp"
#include "kvlm/kernels/scalar.hpp"
#include "kvlm/loaders/model_file.hpp"

namespace kvlm {

/// What write_gguf stored, tensor by tensor.
struct QuantizeReport {
  std::map<std::string, DType> types;        // every tensor written, by name
  std::vector<std::string> fallbacks;        // matrices whose rows do not split into the type's
                                             // blocks, stored as F16 instead
};

namespace detail {

// llama.cpp's general.file_type for a file whose matrices are all `type` (LLAMA_FTYPE_*).
inline std::uint32_t llama_file_type(DType type) {
  switch (type) {
    case DType::kF32: return 0;   // ALL_F32
    case DType::kF16: return 1;   // MOSTLY_F16
    case DType::kQ4_0: return 2;  // MOSTLY_Q4_0
    case DType::kQ8_0: return 7;  // MOSTLY_Q8_0
    case DType::kBF16: return 32; // MOSTLY_BF16
  }
  return 0;
}

}  // namespace detail

/// Writes `file` (any loader's output, or a model built in memory) to `path` as GGUF v3 with its
/// matrices stored as `type`; `vocab`, if given, becomes the file's tokenizer.ggml.* keys.
/// `name` is general.name. Memory: the converted tensors are held until the file is written
/// (about the output file's size).
/// @throws Error(kIo) if the file cannot be written.
inline QuantizeReport write_gguf(const ModelFile& file, DType type, const TokenizerVocab* vocab,
                                 const std::string& path, const std::string& name = "llama") {
  const ModelConfig& c = file.config;
  gguf::GgufWriter out;
  out.set("general.architecture", "llama");
  out.set("general.name", name);
  out.set("llama.context_length", static_cast<std::uint32_t>(c.max_seq_len));
  out.set("llama.embedding_length", static_cast<std::uint32_t>(c.dim));
  out.set("llama.block_count", static_cast<std::uint32_t>(c.n_layers));
  out.set("llama.feed_forward_length", static_cast<std::uint32_t>(c.hidden_dim));
  out.set("llama.rope.dimension_count", static_cast<std::uint32_t>(c.head_dim));
  out.set("llama.attention.head_count", static_cast<std::uint32_t>(c.n_heads));
  out.set("llama.attention.head_count_kv", static_cast<std::uint32_t>(c.n_kv_heads));
  out.set("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  out.set("llama.rope.freq_base", c.rope_theta);
  out.set("llama.vocab_size", static_cast<std::uint32_t>(c.vocab_size));
  out.set("general.file_type", detail::llama_file_type(type));
  if (type == DType::kQ8_0 || type == DType::kQ4_0) out.set("general.quantization_version", 2u);
  if (vocab != nullptr) {
    auto id = [](std::int32_t token) { return static_cast<std::uint32_t>(token); };  // -1: none
    out.set("tokenizer.ggml.model", vocab->model);
    out.set_array("tokenizer.ggml.tokens", vocab->tokens);
    out.set_array("tokenizer.ggml.scores", vocab->scores);
    out.set_array("tokenizer.ggml.token_type", vocab->token_types);
    if (vocab->bos >= 0) out.set("tokenizer.ggml.bos_token_id", id(vocab->bos));
    if (vocab->eos >= 0) out.set("tokenizer.ggml.eos_token_id", id(vocab->eos));
    if (vocab->unk >= 0) out.set("tokenizer.ggml.unknown_token_id", id(vocab->unk));
    if (vocab->pad >= 0) out.set("tokenizer.ggml.padding_token_id", id(vocab->pad));
    out.set("tokenizer.ggml.add_bos_token", vocab->add_bos);
    out.set("tokenizer.ggml.add_eos_token", vocab->add_eos);
    out.set("tokenizer.ggml.add_space_prefix", vocab->add_space_prefix);
    out.set("tokenizer.ggml.remove_extra_whitespaces", vocab->remove_extra_whitespaces);
  }

  QuantizeReport report;
  std::vector<std::vector<std::byte>> buffers;  // the converted tensors, alive until written
  buffers.reserve(file.weights.size());
  std::vector<float> row;
  for (const auto& [tensor_name, w] : file.weights) {
    const bool is_norm = w.rows == 1;  // norms are [1, n]; every matrix has more rows
    DType to = is_norm ? DType::kF32 : type;
    if (w.cols % info(to).block_size != 0) {
      to = DType::kF16;
      report.fallbacks.push_back(tensor_name);
    }
    std::vector<std::byte>& bytes = buffers.emplace_back(static_cast<std::size_t>(w.rows) *
                                                         row_bytes(to, w.cols));
    row.resize(static_cast<std::size_t>(w.cols));
    for (std::int64_t r = 0; r < w.rows; ++r) {
      kernels::scalar::to_float(w.dtype, w.row(r), row.data(), w.cols);
      kernels::scalar::from_float(to, row.data(), bytes.data() + r * row_bytes(to, w.cols), w.cols);
    }
    std::vector<std::uint64_t> ne = {static_cast<std::uint64_t>(w.cols)};
    if (!is_norm) ne.push_back(static_cast<std::uint64_t>(w.rows));
    out.add_tensor(tensor_name, to, ne, bytes.data());
    report.types[tensor_name] = to;
  }
  out.write(path);
  return report;
}

}  // namespace kvlm
