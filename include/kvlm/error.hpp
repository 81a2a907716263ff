#pragma once
// kvlm::Error: the one exception type the library throws for anything a host, a user or a file
// can cause. Internal invariants use KVLM_ASSERT instead (see detail/assert.hpp).

#include <stdexcept>
#include <string>

namespace kvlm {

enum class ErrorCode {
  kIo,            // a file is missing, unreadable or cannot be mapped
  kFormat,        // a file's bytes are not what its format says (magic, version, sizes)
  kConfig,        // hyperparameters that do not make sense together
  kInvalidArgument,  // an argument a caller passed is out of its allowed range
  kContextFull,   // the tokens do not fit in the room left in the session's context
  kTokenizer,     // the tokenizer could not be loaded or failed on its input
  kOutOfMemory,   // a session's buffers exceed the host's budget or cannot be allocated
  kCancelled,     // the host's cancel callback asked a call to stop
  kNumerical,     // a model computed NaN or infinite logits (corrupt weights, most likely)
};

inline const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kIo: return "io";
    case ErrorCode::kFormat: return "format";
    case ErrorCode::kConfig: return "config";
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kContextFull: return "context full";
    case ErrorCode::kTokenizer: return "tokenizer";
    case ErrorCode::kOutOfMemory: return "out of memory";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kNumerical: return "numerical";
  }
  return "unknown";
}

/// The exception every kvlm call throws on bad input. what() names the problem with its context
/// (path, field, value, limit); code() classifies it for hosts that branch on it.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace kvlm
