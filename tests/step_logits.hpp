#pragma once
// Logits after every one of `tokens`, fed to a session one step() at a time (the decode path):
// [tokens.size() * vocab_size], row after row.

#include <vector>

#include "kvlm/session.hpp"

namespace kvlm::test {

inline std::vector<float> step_logits(Session& session, const std::vector<Token>& tokens) {
  std::vector<float> out;
  for (Token t : tokens) {
    const Span<const float> l = session.step(t);
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

}  // namespace kvlm::test
