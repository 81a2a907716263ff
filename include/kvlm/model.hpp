#pragma once
// Model: the weights of a Llama-architecture model (token embeddings, decoder blocks, final norm,
// classifier) plus, optionally, its tokenizer. Immutable after loading, so one Model is shared as
// std::shared_ptr<const Model> by any number of sessions on any threads.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/detail/hash.hpp"
#include "kvlm/decoder_block.hpp"
#include "kvlm/error.hpp"
#include "kvlm/detail/mapped_file.hpp"
#include "kvlm/kernels/kernels.hpp"
#include "kvlm/kernels/interleaved.hpp"
#include "kvlm/loaders/gguf.hpp"
#include "kvlm/loaders/llama2c.hpp"
#include "kvlm/loaders/model_file.hpp"
#include "kvlm/tensor.hpp"
#include "kvlm/tokenizer.hpp"

namespace kvlm {

/// How Model::load prepares the weights.
struct LoadOptions {
  /// Copy the Q8_0, Q4_0, Q4_K, Q5_K and Q6_K matrices (all but the token embeddings) into the
  /// interleaved layout (kernels/interleaved.hpp), where this process's kernels have one
  /// (AVX-512 VNNI), and multiply by the copy. It holds as many bytes as the matrices; the
  /// file's pages under them are released after copying, so a process holds about what it holds
  /// without the copy. On tinyllama-1.1b it makes prefill 2x faster for Q8_0 and Q4_0 and
  /// 1.2-1.4x for the K-quant files, and sessions decoding together several times faster, while
  /// one session's decode stays as fast (README, "Weight types"). Off, the matrices are used
  /// from the file as stored.
  bool interleave = true;
};

class Model {
 public:
  /// Loads a model file, GGUF or llama2.c checkpoint (told apart by the file's first bytes, not
  /// its name), with its tokenizer: the one at tokenizer_path if that is not empty (a
  /// SentencePiece .model file, or a GGUF file's embedded vocabulary), else the one a GGUF file
  /// embeds. A llama2.c checkpoint has none of its own.
  /// @throws Error naming the file and the problem (kIo, kFormat, kConfig, kTokenizer).
  static std::shared_ptr<const Model> load(const std::string& model_path,
                                           const std::string& tokenizer_path = {},
                                           const LoadOptions& options = {}) {
    ModelFile file = load_model_file(model_path);
    std::optional<Tokenizer> tokenizer;
    if (!tokenizer_path.empty()) {
      tokenizer.emplace(Tokenizer::load(tokenizer_path));
    } else if (file.vocab) {
      tokenizer.emplace(Tokenizer::from_vocab(*file.vocab, model_path));
    }
    try {
      return from_file(std::move(file), std::move(tokenizer), options);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kTokenizer || tokenizer_path.empty()) throw;
      throw Error(e.code(), tokenizer_path + " does not fit " + model_path + ": " + e.what());
    }
  }

  /// Builds a model from a loader's output, or from weights a host made itself.
  /// @throws Error(kFormat) if a tensor is missing or has the wrong shape or type, and
  ///         Error(kTokenizer) if the tokenizer's vocabulary is not the model's.
  static std::shared_ptr<const Model> from_file(ModelFile file,
                                                std::optional<Tokenizer> tokenizer = {},
                                                const LoadOptions& options = {}) {
    return std::shared_ptr<const Model>(
        new Model(std::move(file), std::move(tokenizer), options));
  }

  const ModelConfig& config() const { return config_; }
  /// The path the weights were loaded from ("" for weights built in memory), for messages.
  const std::string& source() const { return source_; }
  bool has_tokenizer() const { return tokenizer_.has_value(); }
  /// @throws Error(kTokenizer) if the model was loaded without one.
  const Tokenizer& tokenizer() const {
    if (!tokenizer_) throw Error(ErrorCode::kTokenizer, "model was loaded without a tokenizer");
    return *tokenizer_;
  }

  const WeightView& token_embedding() const { return token_embedding_; }  // [vocab_size, dim]
  const BlockWeights& block(int layer) const { return blocks_[layer]; }
  TensorView<const float> final_norm() const { return final_norm_; }     // [dim]
  const WeightView& classifier() const { return classifier_; }            // [vocab_size, dim]
  /// Identifies the weights for session files: a hash of the configuration and, for every
  /// matrix and norm, its type, shape and first and last 64 bytes. Two loads of one file agree;
  /// a conversion need not (llama.cpp's GGUF of stories260K stores the tied classifier again).
  std::uint64_t fingerprint() const { return fingerprint_; }
  /// Bytes of weight data a decode step reads: every matrix but the embedding table.
  std::size_t decode_weight_bytes() const { return decode_weight_bytes_; }
  /// Bytes of the interleaved copies (LoadOptions::interleave); 0 if none were made.
  std::size_t interleaved_bytes() const { return interleaved_bytes_; }
  /// Weights in all the matrices and norms (the classifier once when it is shared).
  std::int64_t parameter_count() const;
  /// For people: format, sizes, parameters, tensor types, file size, vocabulary and context,
  /// one "name: value" per line.
  std::string summary() const;

 private:
  static ModelFile load_model_file(const std::string& path) {
    return detect_format(path) == FileFormat::kGguf ? load_gguf(path) : load_llama2c(path);
  }

  Model(ModelFile file, std::optional<Tokenizer> tokenizer, const LoadOptions& options)
      : config_(file.config),
        storage_(std::move(file.storage)),
        tokenizer_(std::move(tokenizer)),
        format_(file.format),
        file_bytes_(file.file_bytes),
        source_(file.source) {
    config_.validate();
    const std::int64_t dim = config_.dim, hidden = config_.hidden_dim;
    const std::int64_t q_dim = config_.q_dim(), kv_dim = config_.kv_dim();
    token_embedding_ = matrix(file, "token_embd.weight", config_.vocab_size, dim);
    for (int l = 0; l < config_.n_layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      BlockWeights b;
      b.attn_norm = vector(file, p + "attn_norm.weight", dim);
      b.wq = matrix(file, p + "attn_q.weight", q_dim, dim);
      b.wk = matrix(file, p + "attn_k.weight", kv_dim, dim);
      b.wv = matrix(file, p + "attn_v.weight", kv_dim, dim);
      b.wo = matrix(file, p + "attn_output.weight", dim, q_dim);
      b.ffn_norm = vector(file, p + "ffn_norm.weight", dim);
      b.w_gate = matrix(file, p + "ffn_gate.weight", hidden, dim);
      b.w_down = matrix(file, p + "ffn_down.weight", dim, hidden);
      b.w_up = matrix(file, p + "ffn_up.weight", hidden, dim);
      for (const WeightView* w : b.matrices()) {
        decode_weight_bytes_ += w->byte_size();
      }
      blocks_.push_back(b);
    }
    final_norm_ = vector(file, "output_norm.weight", dim);
    classifier_ = config_.shared_classifier
                      ? token_embedding_
                      : matrix(file, "output.weight", config_.vocab_size, dim);
    decode_weight_bytes_ += classifier_.byte_size() + (2 * config_.n_layers + 1) * dim * sizeof(float);
    fingerprint_ = compute_fingerprint();
    if (options.interleave) interleave_matrices(file.mapped);
    if (tokenizer_ && tokenizer_->vocab_size() != config_.vocab_size) {
      throw Error(ErrorCode::kTokenizer,
                  "tokenizer has " + std::to_string(tokenizer_->vocab_size()) +
                      " pieces but the model's vocabulary has " +
                      std::to_string(config_.vocab_size));
    }
  }

  static WeightView matrix(const ModelFile& file, const std::string& name, std::int64_t rows,
                           std::int64_t cols) {
    const auto it = file.weights.find(name);
    if (it == file.weights.end()) throw Error(ErrorCode::kFormat, "missing tensor " + name);
    const WeightView& w = it->second;
    if (w.rows != rows || w.cols != cols || w.data == nullptr) {
      throw Error(ErrorCode::kFormat, "tensor " + name + " is [" + std::to_string(w.rows) + ", " +
                                          std::to_string(w.cols) + "], expected [" +
                                          std::to_string(rows) + ", " + std::to_string(cols) +
                                          "]");
    }
    // A weight built in memory gets the checks a loader makes: a type with kernels, whole blocks.
    if (!dtype_from_ggml(static_cast<std::uint32_t>(w.dtype)) ||
        w.cols % info(w.dtype).block_size != 0) {
      throw Error(ErrorCode::kFormat, "tensor " + name + " has type " +
                                          std::to_string(static_cast<std::uint32_t>(w.dtype)) +
                                          " (" + to_string(w.dtype) + ") with " +
                                          std::to_string(w.cols) +
                                          " columns, which kvlm cannot multiply");
    }
    return w;
  }

  static TensorView<const float> vector(const ModelFile& file, const std::string& name,
                                        std::int64_t size) {
    const WeightView w = matrix(file, name, 1, size);
    if (w.dtype != DType::kF32) {
      throw Error(ErrorCode::kFormat, "tensor " + name + " is " + to_string(w.dtype) +
                                          "; norm weights must be F32");
    }
    return TensorView<const float>(static_cast<const float*>(w.data), {size});
  }

  // Gives every matrix the kernels have an interleaved layout for its interleaved copy. The
  // matrices' own bytes are not read again (the token embeddings, which embed() reads, are not
  // copied), so when they lie in a file mapping their pages are released. The norms between them
  // are copied too: a fault on a norm's page maps back the file pages around it (up to 2 MB on
  // tinyllama-1.1b, 76 MB over a forward pass).
  void interleave_matrices(bool mapped) {
    std::vector<std::pair<WeightView*, bool>> copies;  // the matrix, and whether to release it
    const auto add = [&](WeightView& w, bool release) {
      if (kernels::kernels(w.dtype).gemm_interleaved != nullptr) copies.emplace_back(&w, release);
    };
    for (BlockWeights& b : blocks_) {
      for (WeightView* w : b.matrices()) {
        add(*w, true);
      }
    }
    add(classifier_, !config_.shared_classifier);
    if (copies.empty()) return;
    if (mapped) own_norms();  // before any page is released
    for (const auto& [w, release] : copies) {
      const std::size_t bytes = kernels::interleaved_bytes(w->dtype, w->rows, w->cols);
      interleaved_.push_back(Tensor<std::byte>({static_cast<std::int64_t>(bytes)}));
      kernels::interleave(w->dtype, w->data, w->rows, w->cols, interleaved_.back().data());
      w->interleaved = interleaved_.back().data();
      interleaved_bytes_ += bytes;
      if (release && mapped) detail::release_pages(w->data, w->byte_size());
    }
  }

  // Points the norms at a copy of their own.
  void own_norms() {
    const std::int64_t dim = config_.dim;
    norms_ = Tensor<float>({2 * config_.n_layers + 1, dim});
    std::int64_t row = 0;
    const auto own = [&](TensorView<const float>& norm) {
      std::copy(norm.data(), norm.data() + dim, norms_.view().row(row));
      norm = TensorView<const float>(norms_.view().row(row++), {dim});
    };
    for (BlockWeights& b : blocks_) {
      own(b.attn_norm);
      own(b.ffn_norm);
    }
    own(final_norm_);
  }

  std::uint64_t compute_fingerprint() const {
    detail::Fnv1a h;
    const ModelConfig& c = config_;
    for (int v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
                  c.vocab_size, static_cast<int>(c.shared_classifier)}) {
      h.add_value(v);
    }
    h.add_value(c.rope_theta);
    h.add_value(c.norm_eps);
    const auto add = [&h](DType dtype, std::int64_t rows, std::int64_t cols, const void* data,
                          std::size_t bytes) {
      h.add_value(static_cast<std::uint32_t>(dtype));
      h.add_value(rows);
      h.add_value(cols);
      constexpr std::size_t kEdge = 64;  // bytes hashed at each end of the data
      const auto* p = static_cast<const std::byte*>(data);
      h.add(p, std::min(bytes, kEdge));
      h.add(p + bytes - std::min(bytes, kEdge), std::min(bytes, kEdge));
    };
    const auto add_matrix = [&add](const WeightView& w) {
      add(w.dtype, w.rows, w.cols, w.data, w.byte_size());
    };
    const auto add_vector = [&add](TensorView<const float> v) {
      add(DType::kF32, 1, v.size(), v.data(), static_cast<std::size_t>(v.size()) * sizeof(float));
    };
    add_matrix(token_embedding_);
    for (const BlockWeights& b : blocks_) {
      add_vector(b.attn_norm);
      add_vector(b.ffn_norm);
      for (const WeightView* w : b.matrices()) {
        add_matrix(*w);
      }
    }
    add_vector(final_norm_);
    add_matrix(classifier_);
    return h.value();
  }

  ModelConfig config_;
  std::shared_ptr<const void> storage_;  // keeps every view below valid
  std::optional<Tokenizer> tokenizer_;
  WeightView token_embedding_;
  std::vector<BlockWeights> blocks_;
  TensorView<const float> final_norm_;
  WeightView classifier_;
  std::vector<Tensor<std::byte>> interleaved_;  // the interleaved copies the views point into
  Tensor<float> norms_;  // [2 n_layers + 1, dim] the norms, copied when pages are released
  std::size_t interleaved_bytes_ = 0;
  std::size_t decode_weight_bytes_ = 0;
  std::uint64_t fingerprint_ = 0;
  std::string format_;
  std::uint64_t file_bytes_ = 0;
  std::string source_;
};

inline std::int64_t Model::parameter_count() const {
  const ModelConfig& c = config_;
  auto size = [](const WeightView& w) { return w.rows * w.cols; };
  std::int64_t n = size(token_embedding_) + c.dim;  // + the final norm
  if (!c.shared_classifier) n += size(classifier_);
  for (const BlockWeights& b : blocks_) {
    n += 2 * c.dim;  // the two norms
    for (const WeightView* w : b.matrices()) {
      n += size(*w);
    }
  }
  return n;
}

inline std::string Model::summary() const {
  const ModelConfig& c = config_;
  std::map<std::string, int> types;  // matrices per stored type
  ++types[to_string(token_embedding_.dtype)];
  if (!c.shared_classifier) ++types[to_string(classifier_.dtype)];
  for (const BlockWeights& b : blocks_) {
    for (const WeightView* w : b.matrices()) {
      ++types[to_string(w->dtype)];
    }
  }
  std::string type_counts;
  for (const auto& [name, count] : types) {
    type_counts += (type_counts.empty() ? "" : ", ") + std::to_string(count) + " " + name;
  }
  char params[32];
  std::snprintf(params, sizeof params, "%.2f M", parameter_count() / 1e6);
  char theta[32];
  std::snprintf(theta, sizeof theta, "%g", static_cast<double>(c.rope_theta));
  char file_size[32];
  std::snprintf(file_size, sizeof file_size, "%.2f MiB", file_bytes_ / 1048576.0);
  char interleaved[64] = "";
  if (interleaved_bytes_ > 0) {
    std::snprintf(interleaved, sizeof interleaved, "; %.2f MiB of it interleaved for the kernels",
                  interleaved_bytes_ / 1048576.0);
  }
  return "format: " + (format_.empty() ? std::string("built in memory") : format_) +
         "\narchitecture: llama, " + std::to_string(c.n_layers) + " layers, dim " +
         std::to_string(c.dim) + ", hidden " + std::to_string(c.hidden_dim) + ", " +
         std::to_string(c.n_heads) + " heads / " + std::to_string(c.n_kv_heads) +
         " KV heads of " + std::to_string(c.head_dim) + ", rope theta " + theta +
         "\nparameters: " + params + (c.shared_classifier ? " (classifier shared)" : "") +
         "\nmatrices: " + type_counts + "; norms F32" +
         "\nfile: " + file_size + interleaved +
         "\nvocabulary: " + std::to_string(c.vocab_size) +
         (tokenizer_ ? " tokens" : " tokens (no tokenizer loaded)") +
         "\ntrained context: " + std::to_string(c.max_seq_len) + " tokens\n";
}

}  // namespace kvlm
