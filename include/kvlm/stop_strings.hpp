#pragma once
// StopStrings: cuts a stream of text at the first occurrence of any stop string. Text that might
// still turn out to be the start of a stop string is held back until it is decided, so no part
// of a stop string is ever emitted. Session::generate() uses it; hosts that write their own
// loop over step() can use it the same way.

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "kvlm/error.hpp"

namespace kvlm {

class StopStrings {
 public:
  /// @throws Error (kInvalidArgument) if a stop string is empty.
  explicit StopStrings(std::vector<std::string> stops) : stops_(std::move(stops)) {
    for (const std::string& s : stops_) {
      if (s.empty()) throw Error(ErrorCode::kInvalidArgument, "a stop string is empty");
    }
  }

  /// Appends text; moves to `out` all pending text that cannot start a stop string. Returns true
  /// when a stop string is complete: `out` then ends just before it, and the rest is dropped.
  bool feed(std::string_view text, std::string& out) {
    pending_.append(text);
    std::size_t first = std::string::npos;
    for (const std::string& stop : stops_) first = std::min(first, pending_.find(stop));
    if (first != std::string::npos) {
      out.append(pending_, 0, first);
      pending_.clear();
      return true;
    }
    const std::size_t keep = longest_suffix_starting_a_stop();
    out.append(pending_, 0, pending_.size() - keep);
    pending_.erase(0, pending_.size() - keep);
    return false;
  }

  /// End of the text: whatever was held back was not a stop string after all.
  void flush(std::string& out) {
    out += pending_;
    pending_.clear();
  }

  /// Bytes held back: the longest tail of the text that is the start of a stop string.
  std::size_t held_back() const { return pending_.size(); }

 private:
  std::size_t longest_suffix_starting_a_stop() const {
    std::size_t best = 0;
    for (const std::string& stop : stops_) {
      for (std::size_t k = std::min(pending_.size(), stop.size() - 1); k > best; --k) {
        if (std::string_view(pending_).substr(pending_.size() - k) ==
            std::string_view(stop).substr(0, k)) {
          best = k;
          break;
        }
      }
    }
    return best;
  }

  std::vector<std::string> stops_;  // non-empty strings
  std::string pending_;
};

}  // namespace kvlm
