#pragma once
// Loader for GGUF files of the "llama" architecture (llama.cpp's convert_hf_to_gguf.py and
// llama-quantize produce them): the config from the llama.* keys, the weights as zero-copy views
// into the mapped file, and the tokenizer the file embeds (tokenizer.ggml.*), if any.
//
// What kvlm runs, and so what it refuses (each an Error naming the file, the key or tensor and the
// value, never a silently different model):
//  - general.architecture other than "llama" (kFormat);
//  - partial RoPE (llama.rope.dimension_count != head_dim), a head size other than
//    embedding_length / head_count (llama.attention.key_length / value_length), RoPE scaling
//    (llama.rope.scaling.type other than "none", or a linear factor other than 1, or a
//    rope_freqs.weight tensor) and mixtures of experts (llama.expert_count > 0) (kConfig);
//  - tensor types other than F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K (the reader refuses
//    them, kFormat);
//  - a tensor that is not one of the Llama weights listed in model_file.hpp for this config
//    (biases, extra norms, layers past block_count: kFormat), rather than ignoring what might
//    change the model's output;
//  - a quantized norm (kFormat). F16 and BF16 norms are converted to F32 once, at load.
// Defaults for absent keys follow llama.cpp: head_count_kv = head_count, rope.freq_base = 10000,
// vocab_size = llama.vocab_size or else the rows of token_embd.weight.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/detail/checked.hpp"
#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/gguf/reader.hpp"
#include "kvlm/loaders/model_file.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {
namespace gguf {
namespace internal {

// What a ModelFile from GGUF keeps alive: the mapped file, and the norm weights converted to F32
// at load (4 bytes per weight, dim * (2 * n_layers + 1) weights in all; empty for F32 norms).
struct LoadedStorage {
  std::shared_ptr<const void> file;
  std::vector<std::vector<float>> converted;
};

// A config size from a uint32 key: in [1, kvlm::detail::kMaxDimension], else Error(kConfig)
// naming the key.
inline int dimension(const GgufFile& f, const std::string& key, std::optional<int> fallback = {}) {
  if (fallback && !f.has(key)) return *fallback;
  const std::uint32_t v = f.get_uint32(key);
  if (v == 0 || v > kvlm::detail::kMaxDimension) {
    throw Error(ErrorCode::kConfig, f.path() + ": " + key + " = " + std::to_string(v) +
                                        " is outside [1, " +
                                        std::to_string(kvlm::detail::kMaxDimension) + "]");
  }
  return static_cast<int>(v);
}

[[noreturn]] inline void unsupported(const GgufFile& f, const std::string& what) {
  throw Error(ErrorCode::kConfig, f.path() + ": " + what);
}

// RoPE scaling kvlm does not do: a scaling type other than "none" (or "linear" with factor 1),
// or a linear factor (either key) other than 1 with no type.
inline void refuse_rope_scaling(const GgufFile& f) {
  const std::optional<std::string> type = f.find_string("llama.rope.scaling.type");
  if (type && *type == "none") return;
  for (const char* key : {"llama.rope.scaling.factor", "llama.rope.scale_linear"}) {
    const std::optional<float> factor = f.find_float(key);
    if (factor && *factor != 0.0f && *factor != 1.0f) {
      unsupported(f, std::string("RoPE scaling '") + (type ? *type : "linear") + "' with " + key +
                         " = " + f.describe(key) + " is not supported");
    }
  }
  if (type && *type != "linear") {
    unsupported(f, "RoPE scaling type '" + *type + "' (llama.rope.scaling.type) is not supported");
  }
}

// Expected shape of each weight kvlm reads, by name: [rows, cols] (a norm is [1, n]).
struct Expected {
  std::int64_t rows;
  std::int64_t cols;
  bool norm;
};

inline std::unordered_map<std::string, Expected> expected_weights(const ModelConfig& c) {
  const std::int64_t dim = c.dim, hidden = c.hidden_dim, vocab = c.vocab_size;
  const std::int64_t q_dim = c.q_dim(), kv_dim = c.kv_dim();
  std::unordered_map<std::string, Expected> out = {
      {"token_embd.weight", {vocab, dim, false}},
      {"output_norm.weight", {1, dim, true}},
  };
  if (!c.shared_classifier) out.emplace("output.weight", Expected{vocab, dim, false});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    out.emplace(p + "attn_norm.weight", Expected{1, dim, true});
    out.emplace(p + "attn_q.weight", Expected{q_dim, dim, false});
    out.emplace(p + "attn_k.weight", Expected{kv_dim, dim, false});
    out.emplace(p + "attn_v.weight", Expected{kv_dim, dim, false});
    out.emplace(p + "attn_output.weight", Expected{dim, q_dim, false});
    out.emplace(p + "ffn_norm.weight", Expected{1, dim, true});
    out.emplace(p + "ffn_gate.weight", Expected{hidden, dim, false});
    out.emplace(p + "ffn_down.weight", Expected{dim, hidden, false});
    out.emplace(p + "ffn_up.weight", Expected{hidden, dim, false});
  }
  return out;
}

// A norm stored as F16 or BF16, as F32.
inline std::vector<float> to_f32(const GgufFile& f, const TensorInfo& t) {
  kvlm::detail::ByteCursor c(static_cast<const std::byte*>(t.data),
                             static_cast<std::size_t>(t.bytes), f.path());
  std::vector<float> out(static_cast<std::size_t>(t.ne[0]));
  for (float& x : out) {
    const auto h = c.read<std::uint16_t>(t.name);
    x = t.dtype == DType::kF16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
  }
  return out;
}

}  // namespace internal

/// The Llama hyperparameters of a GGUF file, validated (vocab_size and shared_classifier come
/// from the tensor table when the keys do not say).
/// @throws Error: kFormat for a missing or mistyped key or another architecture; kConfig for
///         values that do not make sense or that kvlm does not run (see the top of this header).
inline ModelConfig read_config(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama") {
    throw Error(ErrorCode::kFormat,
                f.path() + ": architecture '" + arch + "' is not supported (kvlm runs 'llama')");
  }
  ModelConfig c;
  c.dim = internal::dimension(f, "llama.embedding_length");
  c.hidden_dim = internal::dimension(f, "llama.feed_forward_length");
  c.n_layers = internal::dimension(f, "llama.block_count");
  c.n_heads = internal::dimension(f, "llama.attention.head_count");
  c.n_kv_heads = internal::dimension(f, "llama.attention.head_count_kv", c.n_heads);
  c.max_seq_len = internal::dimension(f, "llama.context_length");
  if (c.dim % c.n_heads != 0) {
    throw Error(
        ErrorCode::kConfig,
        f.path() + ": llama.embedding_length = " + std::to_string(c.dim) +
            " is not divisible by llama.attention.head_count = " + std::to_string(c.n_heads));
  }
  c.head_dim = c.dim / c.n_heads;
  const std::optional<std::uint32_t> rope_dims = f.find_uint32("llama.rope.dimension_count");
  if (rope_dims && *rope_dims != static_cast<std::uint32_t>(c.head_dim)) {
    internal::unsupported(f, "llama.rope.dimension_count = " + std::to_string(*rope_dims) +
                                 " differs from head_dim = " + std::to_string(c.head_dim) +
                                 ": partial RoPE is not supported");
  }
  for (const char* key : {"llama.attention.key_length", "llama.attention.value_length"}) {
    const std::optional<std::uint32_t> n = f.find_uint32(key);
    if (n && *n != static_cast<std::uint32_t>(c.head_dim)) {
      internal::unsupported(f, std::string(key) + " = " + std::to_string(*n) +
                                   " differs from embedding_length / head_count = " +
                                   std::to_string(c.head_dim) + ", which kvlm requires");
    }
  }
  internal::refuse_rope_scaling(f);
  const std::optional<std::int64_t> experts = f.find_int64("llama.expert_count");
  if (experts && *experts > 0) {
    internal::unsupported(f, "llama.expert_count = " + std::to_string(*experts) +
                                 ": mixtures of experts are not supported");
  }
  c.rope_theta = f.find_float("llama.rope.freq_base").value_or(10000.0f);
  c.norm_eps = f.get_float("llama.attention.layer_norm_rms_epsilon");

  const TensorInfo* embd = f.find_tensor("token_embd.weight");
  if (f.has("llama.vocab_size")) {
    c.vocab_size = internal::dimension(f, "llama.vocab_size");
  } else if (embd != nullptr) {
    if (embd->ne[1] > static_cast<std::uint64_t>(kvlm::detail::kMaxDimension)) {
      throw Error(ErrorCode::kConfig, f.path() + ": token_embd.weight has " +
                                          std::to_string(embd->ne[1]) + " rows, more than " +
                                          std::to_string(kvlm::detail::kMaxDimension));
    }
    c.vocab_size = static_cast<int>(embd->ne[1]);
  } else {
    throw Error(ErrorCode::kFormat, f.path() +
                                        ": neither llama.vocab_size nor a "
                                        "token_embd.weight tensor gives the vocabulary size");
  }
  c.shared_classifier = f.find_tensor("output.weight") == nullptr;
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.code(), f.path() + ": " + e.what());
  }
  return c;
}

/// The tokenizer a GGUF file embeds (tokenizer.ggml.*), checked: scores (default 0) and
/// token_type (default 1, normal; values 0..6) have one entry per token, and every special id is
/// a token or absent / 0xFFFFFFFF / -1 (none). The model name is not checked here (the Tokenizer
/// refuses models it cannot run). tokenizer.chat_template, if present, must be a string (the
/// reader bounds its length like every string's). Works on vocab-only files with no tensors.
/// @throws Error(kFormat) if tokenizer.ggml.model or .tokens is missing, or anything is wrong.
inline TokenizerVocab read_vocab(const GgufFile& f) {
  const std::string p = "tokenizer.ggml.";
  TokenizerVocab v;
  v.model = f.get_string(p + "model");
  v.tokens = f.get_string_array(p + "tokens");
  const std::size_t n = v.tokens.size();
  if (n == 0 || n > static_cast<std::size_t>(kvlm::detail::kMaxDimension)) {
    throw Error(ErrorCode::kFormat, f.path() + ": " + p + "tokens has " + std::to_string(n) +
                                        " tokens, outside [1, " +
                                        std::to_string(kvlm::detail::kMaxDimension) + "]");
  }
  auto check_length = [&](const std::string& key, std::size_t length) {
    if (length != n) {
      throw Error(ErrorCode::kFormat, f.path() + ": " + key + " has " + std::to_string(length) +
                                          " entries but " + p + "tokens has " + std::to_string(n));
    }
  };
  if (f.has(p + "scores")) {
    v.scores = f.get_float_array(p + "scores");
    check_length(p + "scores", v.scores.size());
  } else {
    v.scores.assign(n, 0.0f);
  }
  if (f.has(p + "token_type")) {
    v.token_types = f.get_int32_array(p + "token_type");
    check_length(p + "token_type", v.token_types.size());
    for (std::size_t i = 0; i < n; ++i) {
      if (v.token_types[i] < 0 || v.token_types[i] > 6) {
        throw Error(ErrorCode::kFormat, f.path() + ": " + p + "token_type[" + std::to_string(i) +
                                            "] = " + std::to_string(v.token_types[i]) +
                                            " is not a token type (0..6)");
      }
    }
  } else {
    v.token_types.assign(n, 1);
  }
  auto special = [&](const std::string& key) -> std::int32_t {
    const std::optional<std::int64_t> id = f.find_int64(key);
    if (!id || *id == -1 || *id == 0xFFFFFFFFll) return -1;
    if (*id < 0 || *id >= static_cast<std::int64_t>(n)) {
      throw Error(ErrorCode::kFormat, f.path() + ": " + key + " = " + std::to_string(*id) +
                                          " is not a token id (the vocabulary has " +
                                          std::to_string(n) + " tokens)");
    }
    return static_cast<std::int32_t>(*id);
  };
  v.bos = special(p + "bos_token_id");
  v.eos = special(p + "eos_token_id");
  v.unk = special(p + "unknown_token_id");
  v.pad = special(p + "padding_token_id");
  v.add_bos = f.find_bool(p + "add_bos_token").value_or(v.add_bos);
  v.add_eos = f.find_bool(p + "add_eos_token").value_or(v.add_eos);
  v.add_space_prefix = f.find_bool(p + "add_space_prefix").value_or(v.add_space_prefix);
  v.remove_extra_whitespaces =
      f.find_bool(p + "remove_extra_whitespaces").value_or(v.remove_extra_whitespaces);
  v.chat_template = f.find_string("tokenizer.chat_template").value_or("");
  return v;
}

/// read_vocab() if the file embeds a tokenizer (has tokenizer.ggml.model), else nothing.
inline std::optional<TokenizerVocab> find_vocab(const GgufFile& f) {
  if (!f.has("tokenizer.ggml.model")) return std::nullopt;
  return read_vocab(f);
}

}  // namespace gguf

/// Builds a ModelFile from an opened GGUF file: read_config(), a view per weight (zero-copy; norms
/// stored as F16/BF16 converted to F32), and find_vocab(). See the top of this header for what is
/// refused. The result keeps the file's bytes alive.
/// @throws Error naming the file and the problem (kFormat, kConfig).
inline ModelFile load_gguf(const gguf::GgufFile& f) {
  ModelFile out;
  out.config = gguf::read_config(f);
  auto storage = std::make_shared<gguf::internal::LoadedStorage>();
  storage->file = f.storage();
  const auto expected = gguf::internal::expected_weights(out.config);
  for (const gguf::TensorInfo& t : f.tensors()) {
    if (t.name == "rope_freqs.weight") {
      gguf::internal::unsupported(f,
                                  "tensor rope_freqs.weight (per-dimension RoPE frequency "
                                  "factors, Llama 3.1-style RoPE scaling) is not supported");
    }
    const auto it = expected.find(t.name);
    if (it == expected.end()) {
      throw Error(ErrorCode::kFormat, f.path() + ": tensor " + t.name +
                                          " is not one of the weights of a Llama model " + "with " +
                                          std::to_string(out.config.n_layers) +
                                          " layers; kvlm refuses it rather than ignore it");
    }
    const gguf::internal::Expected& e = it->second;
    const bool flat = t.ne[2] == 1 && t.ne[3] == 1;
    const auto rows = static_cast<std::int64_t>(t.ne[1]), cols = static_cast<std::int64_t>(t.ne[0]);
    if (!flat || rows != e.rows || cols != e.cols) {
      std::string ne;
      for (std::uint32_t d = 0; d < t.n_dims; ++d) ne += (d ? ", " : "") + std::to_string(t.ne[d]);
      throw Error(ErrorCode::kFormat, f.path() + ": tensor " + t.name + " has ne [" + ne +
                                          "], expected [" + std::to_string(e.rows) + ", " +
                                          std::to_string(e.cols) + "] as [rows, cols], i.e. ne [" +
                                          std::to_string(e.cols) + ", " + std::to_string(e.rows) +
                                          "]");
    }
    WeightView w{t.dtype, rows, cols, t.data};
    if (e.norm && t.dtype != DType::kF32) {
      if (t.dtype != DType::kF16 && t.dtype != DType::kBF16) {
        throw Error(ErrorCode::kFormat, f.path() + ": tensor " + t.name + " is " +
                                            to_string(t.dtype) +
                                            "; norm weights must be F32, F16 or BF16");
      }
      storage->converted.push_back(gguf::internal::to_f32(f, t));
      w = WeightView{DType::kF32, rows, cols, storage->converted.back().data()};
    }
    out.weights.emplace(t.name, w);
  }
  for (const auto& [name, e] : expected) {
    if (out.weights.count(name) == 0) {
      throw Error(ErrorCode::kFormat, f.path() + ": missing tensor " + name);
    }
  }
  out.vocab = gguf::find_vocab(f);
  if (out.vocab && out.vocab->tokens.size() != static_cast<std::size_t>(out.config.vocab_size)) {
    throw Error(ErrorCode::kFormat, f.path() + ": tokenizer.ggml.tokens has " +
                                        std::to_string(out.vocab->tokens.size()) +
                                        " tokens but the model's vocabulary has " +
                                        std::to_string(out.config.vocab_size));
  }
  out.storage = std::move(storage);
  out.mapped = f.mapped();
  out.format = "GGUF v" + std::to_string(f.version());
  out.file_bytes = f.size();
  out.source = f.path();
  return out;
}

/// Maps a GGUF file and loads it (see load_gguf(const gguf::GgufFile&)).
/// @throws Error: kIo if the file cannot be mapped; kFormat, kConfig naming the file and problem.
inline ModelFile load_gguf(const std::string& path) {
  return load_gguf(gguf::GgufFile::open(path));
}

/// The tokenizer embedded in a GGUF file, which need not hold a model (vocab-only files).
/// @throws Error: kIo if the file cannot be mapped; kFormat if it has no tokenizer or a bad one.
inline TokenizerVocab load_gguf_vocab(const std::string& path) {
  return gguf::read_vocab(gguf::GgufFile::open(path));
}

}  // namespace kvlm
