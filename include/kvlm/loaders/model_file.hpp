#pragma once
// ModelFile: what every loader produces and nothing more: a validated ModelConfig and the weight
// matrices by name, as typed views into storage the ModelFile keeps alive. Names follow GGUF's
// Llama tensor names, so the Model does not know which format its weights came from:
//   token_embd.weight                      [vocab_size, dim]
//   blk.N.attn_norm.weight                 [1, dim]
//   blk.N.attn_q.weight                    [n_heads * head_dim, dim]
//   blk.N.attn_k.weight, blk.N.attn_v.weight  [n_kv_heads * head_dim, dim]
//   blk.N.attn_output.weight               [dim, n_heads * head_dim]
//   blk.N.ffn_norm.weight                  [1, dim]
//   blk.N.ffn_gate.weight, blk.N.ffn_up.weight  [hidden_dim, dim]
//   blk.N.ffn_down.weight                  [dim, hidden_dim]
//   output_norm.weight                     [1, dim]
//   output.weight                          [vocab_size, dim], absent when the classifier is shared

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/detail/regular_file.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

/// A tokenizer as a GGUF file embeds it (the tokenizer.ggml.* keys), validated by the loader:
/// the three arrays have one entry per token and every special id is in [0, tokens.size()) or -1.
struct TokenizerVocab {
  std::string model;                     // tokenizer.ggml.model: "llama" is SentencePiece
  std::vector<std::string> tokens;       // [n_vocab] the pieces, '▁' for a space
  std::vector<float> scores;             // [n_vocab] merge priority (higher merges first)
  std::vector<std::int32_t> token_types; // [n_vocab] SentencePiece's piece types: 1 normal,
                                         // 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::int32_t bos = -1, eos = -1, unk = -1, pad = -1;  // -1: none
  bool add_bos = true;                   // tokenizer.ggml.add_bos_token
  bool add_eos = false;                  // tokenizer.ggml.add_eos_token
  bool add_space_prefix = true;          // tokenizer.ggml.add_space_prefix
  bool remove_extra_whitespaces = false; // tokenizer.ggml.remove_extra_whitespaces
  std::string chat_template{};           // tokenizer.chat_template (Jinja); empty when absent
                                         // ({}: initializers that stop earlier do not warn)
};

struct ModelFile {
  ModelConfig config;                        // validated by the loader
  std::map<std::string, WeightView> weights;  // by GGUF tensor name
  std::shared_ptr<const void> storage;        // owns the memory the views point into
  bool mapped = false;                        // the views point into a read-only file mapping,
                                              // whose pages can be released and read again
  std::optional<TokenizerVocab> vocab;        // the tokenizer the file embeds, if any
  std::string format;                         // e.g. "GGUF v3", "llama2.c (legacy)"
  std::uint64_t file_bytes = 0;               // size of the file it came from
  std::string source;                         // its path; empty for weights built in memory
};

/// The formats a model file can be in. Only GGUF has a magic number; a llama2.c legacy
/// checkpoint starts straight with its header, so anything else is left to that loader to judge.
enum class FileFormat { kGguf, kLlama2c };

/// The format of the file at `path`, from its first bytes (never its name); a file too short for
/// a magic number counts as kLlama2c, whose loader then says what is wrong with it.
/// @throws Error(kIo) naming the path when it is missing or not a regular file (a directory,
/// with or without a trailing slash, a FIFO, a device), before anything is read.
inline FileFormat detect_format(const std::string& path) {
  const detail::RegularFile file(path);
  char magic[4] = {};
  const bool read_all = ::read(file.fd(), magic, sizeof magic) == sizeof magic;
  return read_all && std::memcmp(magic, "GGUF", 4) == 0 ? FileFormat::kGguf : FileFormat::kLlama2c;
}

}  // namespace kvlm
