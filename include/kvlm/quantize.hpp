#pragma once
// quantize: writes a model as a GGUF file with its weight matrices converted, the way llama.cpp's
// llama-quantize does: every matrix (the embedding table and the classifier included) in the
// target type (--pure), or llama.cpp's Q4_K_M / Q5_K_M mixes; norms in F32, the tokenizer
// carried along, the metadata keys and tensor names llama.cpp uses. Conversion goes through
// float32 and the reference quantizers (kernels::scalar::from_float), whose bytes equal
// llama.cpp's for F16, BF16, Q8_0 and Q4_0.

#include <cmath>
#include <cstdint>
#include <cstdlib>
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

/// What quantize stores: every matrix as `type` (llama-quantize --pure), or one of llama.cpp's
/// medium K-quant mixes, which give Q6_K to the tensors that suffer most from fewer bits.
struct QuantizeRecipe {
  const char* name;        // as llama-quantize names it: "Q8_0", "Q4_K_M", ...
  DType type;              // every matrix's type, unless the mix says otherwise
  bool medium_mix;         // Q4_K_M / Q5_K_M: Q6_K for the classifier, and for attn_v and
                           // ffn_down in the layers llama.cpp's use_more_bits() picks
  std::uint32_t file_type; // llama.cpp's general.file_type (LLAMA_FTYPE_*)
};

inline constexpr QuantizeRecipe kQuantizeRecipes[] = {
    {"F32", DType::kF32, false, 0},     {"F16", DType::kF16, false, 1},
    {"BF16", DType::kBF16, false, 32},  {"Q8_0", DType::kQ8_0, false, 7},
    {"Q4_0", DType::kQ4_0, false, 2},   {"Q4_K", DType::kQ4_K, false, 14},
    {"Q5_K", DType::kQ5_K, false, 16},  {"Q6_K", DType::kQ6_K, false, 18},
    {"Q4_K_M", DType::kQ4_K, true, 15}, {"Q5_K_M", DType::kQ5_K, true, 17},
};

/// The recipe llama-quantize calls `name` ("Q8_0", "Q4_K_M", ...).
/// @throws Error(kInvalidArgument) naming the known recipes.
inline const QuantizeRecipe& quantize_recipe(const std::string& name) {
  std::string known;
  for (const QuantizeRecipe& r : kQuantizeRecipes) {
    if (name == r.name) return r;
    known += (known.empty() ? "" : ", ") + std::string(r.name);
  }
  throw Error(ErrorCode::kInvalidArgument,
              "unknown quantization type '" + name + "' (known: " + known + ")");
}

/// What write_gguf stored, tensor by tensor.
struct QuantizeReport {
  std::map<std::string, DType> types;  // every tensor written, by name
  std::vector<std::string> fallbacks;  // matrices whose rows do not split into their type's
                                       // blocks, stored in a fallback type instead
};

namespace detail {

// llama.cpp's use_more_bits(i_layer, n_layers): the first and last eighth of the layers and
// every third one between them.
inline bool use_more_bits(int layer, int n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

// The layer of a tensor named "blk.<layer>.<suffix>" with that suffix, else -1.
inline int layer_of(const std::string& name, const std::string& suffix) {
  if (name.compare(0, 4, "blk.") != 0 || name.size() <= suffix.size() ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return -1;
  }
  return std::atoi(name.c_str() + 4);
}

// The type `recipe` gives tensor `name` of a model with `n_layers` layers, as llama.cpp's
// llama_tensor_get_type does for these mixes. The classifier is output.weight, or token_embd
// when the model has none (tied).
inline DType recipe_type(const QuantizeRecipe& recipe, const std::string& name, int n_layers,
                         bool shared_classifier) {
  if (!recipe.medium_mix) return recipe.type;
  const bool classifier =
      name == "output.weight" || (shared_classifier && name == "token_embd.weight");
  const int v = layer_of(name, ".attn_v.weight"), down = layer_of(name, ".ffn_down.weight");
  if (classifier || (v >= 0 && use_more_bits(v, n_layers)) ||
      (down >= 0 && use_more_bits(down, n_layers))) {
    return DType::kQ6_K;
  }
  return recipe.type;
}

// For a matrix whose rows do not split into `type`'s blocks: Q8_0 for a K-quant when 32-weight
// blocks fit (llama.cpp picks Q5_0/Q5_1/Q8_0, which kvlm does not all have), else F16.
inline DType fallback_type(DType type, std::int64_t cols) {
  const bool k_quant = info(type).block_size == 256;
  return k_quant && cols % BlockQ8_0::kSize == 0 ? DType::kQ8_0 : DType::kF16;
}

}  // namespace detail

/// Writes `file` (any loader's output, or a model built in memory) to `path` as GGUF v3 with its
/// matrices stored as `recipe` says and its norms as F32; `vocab`, if given, becomes the file's
/// tokenizer.ggml.* keys and, when it has one, tokenizer.chat_template. `name` is general.name.
/// Memory: the converted tensors are held until the file is written (about the output file's
/// size).
/// @throws Error(kIo) if the file cannot be written, (kFormat) naming the tensor and row if a
///         weight is not finite.
inline QuantizeReport write_gguf(const ModelFile& file, const QuantizeRecipe& recipe,
                                 const TokenizerVocab* vocab, const std::string& path,
                                 const std::string& name = "llama") {
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
  out.set("general.file_type", recipe.file_type);
  if (info(recipe.type).block_size > 1) out.set("general.quantization_version", 2u);
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
    if (!vocab->chat_template.empty()) out.set("tokenizer.chat_template", vocab->chat_template);
  }

  QuantizeReport report;
  std::vector<std::vector<std::byte>> buffers;  // the converted tensors, alive until written
  buffers.reserve(file.weights.size());
  std::vector<float> row;
  for (const auto& [tensor_name, w] : file.weights) {
    const bool is_norm = w.rows == 1;  // norms are [1, n]; every matrix has more rows
    DType to = is_norm ? DType::kF32
                       : detail::recipe_type(recipe, tensor_name, c.n_layers, c.shared_classifier);
    if (w.cols % info(to).block_size != 0) {
      to = detail::fallback_type(to, w.cols);
      report.fallbacks.push_back(tensor_name);
    }
    std::vector<std::byte>& bytes = buffers.emplace_back(static_cast<std::size_t>(w.rows) *
                                                         row_bytes(to, w.cols));
    row.resize(static_cast<std::size_t>(w.cols));
    for (std::int64_t r = 0; r < w.rows; ++r) {
      kernels::scalar::to_float(w.dtype, w.row(r), row.data(), w.cols);
      for (float v : row) {
        if (!std::isfinite(v)) {  // the quantizers' scales would be NaN
          throw Error(ErrorCode::kFormat, "tensor " + tensor_name + " row " + std::to_string(r) +
                                              " holds a non-finite weight (" + std::to_string(v) +
                                              "); it cannot be converted");
        }
      }
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
