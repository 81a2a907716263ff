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

#include <map>
#include <memory>
#include <string>

#include "kvlm/config.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

struct ModelFile {
  ModelConfig config;                        // validated by the loader
  std::map<std::string, WeightView> weights;  // by GGUF tensor name
  std::shared_ptr<const void> storage;        // owns the memory the views point into
};

}  // namespace kvlm
