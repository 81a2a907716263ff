#pragma once
// Small random-weight models built in memory, for property tests that need no file.

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvlm/model.hpp"

namespace kvlm::test {

// Weights ~ N(0, std) (norm weights 1 + N(0, std)) held in one buffer the ModelFile owns.
// Names and shapes are those of loaders/model_file.hpp.
inline ModelFile random_model_file(const ModelConfig& config, std::uint32_t seed,
                                   float std_dev = 0.05f) {
  config.validate();
  std::vector<std::pair<std::string, std::pair<std::int64_t, std::int64_t>>> shapes;
  const std::int64_t dim = config.dim, hidden = config.hidden_dim;
  shapes.push_back({"token_embd.weight", {config.vocab_size, dim}});
  for (int l = 0; l < config.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    shapes.push_back({p + "attn_norm.weight", {1, dim}});
    shapes.push_back({p + "attn_q.weight", {config.q_dim(), dim}});
    shapes.push_back({p + "attn_k.weight", {config.kv_dim(), dim}});
    shapes.push_back({p + "attn_v.weight", {config.kv_dim(), dim}});
    shapes.push_back({p + "attn_output.weight", {dim, config.q_dim()}});
    shapes.push_back({p + "ffn_norm.weight", {1, dim}});
    shapes.push_back({p + "ffn_gate.weight", {hidden, dim}});
    shapes.push_back({p + "ffn_down.weight", {dim, hidden}});
    shapes.push_back({p + "ffn_up.weight", {hidden, dim}});
  }
  shapes.push_back({"output_norm.weight", {1, dim}});
  if (!config.shared_classifier) shapes.push_back({"output.weight", {config.vocab_size, dim}});

  std::int64_t total = 0;
  for (const auto& s : shapes) total += s.second.first * s.second.second;
  auto buffer = std::make_shared<std::vector<float>>(static_cast<std::size_t>(total));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, std_dev);

  ModelFile file;
  file.config = config;
  std::int64_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    float* data = buffer->data() + offset;
    const std::int64_t n = shape.first * shape.second;
    const bool is_norm = name.find("norm") != std::string::npos;
    for (std::int64_t i = 0; i < n; ++i) data[i] = (is_norm ? 1.0f : 0.0f) + normal(rng);
    file.weights[name] = WeightView{DType::kF32, shape.first, shape.second, data};
    offset += n;
  }
  file.storage = buffer;
  return file;
}

inline std::shared_ptr<const Model> random_model(const ModelConfig& config, std::uint32_t seed) {
  return Model::from_file(random_model_file(config, seed));
}

// A GQA config small enough for exhaustive checks: 8 query heads share 2 KV heads.
inline ModelConfig small_gqa_config() {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 100;
  c.max_seq_len = 96;
  c.shared_classifier = false;
  return c;
}

}  // namespace kvlm::test
