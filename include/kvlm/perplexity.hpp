#pragma once
// Perplexity of a token sequence under a model, the standard measure of how well a model
// predicts text: exp(mean negative log-likelihood of each token given the ones before it).

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "kvlm/config.hpp"
#include "kvlm/error.hpp"
#include "kvlm/model.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/session.hpp"
#include "kvlm/span.hpp"
#include "kvlm/tensor.hpp"

namespace kvlm {

struct PerplexityResult {
  double perplexity = 0.0;       // exp(mean_nll)
  double mean_nll = 0.0;         // nats per scored token
  int scored_tokens = 0;
  int chunks = 0;
};

/// Receives each chunk's index and logits, [chunk tokens, vocab_size] (row i follows token i).
using ChunkLogitsCallback = std::function<void(int chunk, TensorView<const float> logits)>;

/// Scores `tokens` (which should start with BOS) in consecutive chunks of at most `context`
/// tokens: the first chunk is tokens[0, context); each later chunk is BOS followed by the next
/// context - 1 tokens. Every token after the first of each chunk is scored against the logits
/// of the token before it, all within its chunk.
/// @throws Error(kInvalidArgument) if context < 2 or there are fewer than 2 tokens; errors of
///         Session for ids outside the vocabulary or a context above the model's.
inline PerplexityResult perplexity(std::shared_ptr<const Model> model, Span<const Token> tokens,
                                   int context, SessionOptions options,
                                   const ChunkLogitsCallback& on_chunk_logits = {}) {
  if (context < 2) {
    throw Error(ErrorCode::kInvalidArgument,
                "perplexity: context = " + std::to_string(context) + " must be at least 2");
  }
  if (tokens.size() < 2) {
    throw Error(ErrorCode::kInvalidArgument,
                "perplexity: needs at least 2 tokens, got " + std::to_string(tokens.size()));
  }
  const int vocab = model->config().vocab_size;
  const Token bos = tokens[0];
  options.max_seq_len = context;
  Session session(std::move(model), options);
  std::vector<Token> chunk;
  chunk.reserve(static_cast<std::size_t>(context));
  Tensor<float> logits({context, vocab});

  PerplexityResult result;
  double total_nll = 0.0;
  std::size_t next = 0;
  while (next < tokens.size()) {
    chunk.clear();
    if (next > 0) chunk.push_back(bos);
    const std::size_t take =
        std::min(tokens.size() - next, static_cast<std::size_t>(context) - chunk.size());
    chunk.insert(chunk.end(), tokens.begin() + next, tokens.begin() + next + take);
    next += take;

    const auto rows = logits.view().rows_slice(0, static_cast<std::int64_t>(chunk.size()));
    session.reset();
    session.evaluate(chunk, rows);
    if (on_chunk_logits) on_chunk_logits(result.chunks, rows);
    for (std::size_t i = 1; i < chunk.size(); ++i) {
      // -log softmax(row i - 1)[chunk[i]]
      const float* row = rows.row(static_cast<std::int64_t>(i - 1));
      total_nll += log_sum_exp(row, vocab) - row[chunk[i]];
    }
    result.scored_tokens += static_cast<int>(chunk.size()) - 1;
    ++result.chunks;
  }
  result.mean_nll = total_nll / result.scored_tokens;
  result.perplexity = std::exp(result.mean_nll);
  return result;
}

}  // namespace kvlm
