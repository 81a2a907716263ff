#pragma once
// Tokenizer: text <-> token ids through a SentencePiece model, and StreamingDecoder, which turns
// generated tokens into text one token at a time. This is the only kvlm header that includes
// sentencepiece, so hosts that use only the kernels do not depend on it.
//
// Tokenizer::encode and Tokenizer::decode call SentencePiece itself. StreamingDecoder cannot
// (decoding the whole history every step is quadratic), so it replays SentencePiece's decoding
// rules one token at a time from per-token tables built at load:
//   - '▁' (U+2581) reads as a space;
//   - control tokens (<s>, </s>) read as nothing; the unknown token as the model's unk_surface
//     (" ⁇ " unless the model sets another);
//   - at the start of a sequence a piece's leading '▁' is dropped (models with add_dummy_prefix or
//     remove_extra_whitespaces). Llama 2's model drops only one: [▁, ▁Once] reads " Once";
//     tok512 (remove_extra_whitespaces) drops them until some text appears: "Once". Load asks
//     SentencePiece which rule the model follows, and checks every piece's start-of-sequence text
//     against SentencePiece's own decode of that piece alone;
//   - a run of byte-fallback tokens <0xNN> becomes the bytes of each well-formed UTF-8 character
//     in it; every other byte of the run, including each byte of a character cut short by the
//     end of the run, becomes one U+FFFD: [<0xE2>, <0x80>, </s>] reads "\uFFFD\uFFFD".

#include <sentencepiece_processor.h>

#include <array>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/detail/read_file.hpp"
#include "kvlm/error.hpp"
#include "kvlm/span.hpp"

namespace kvlm {

static_assert(std::is_same_v<Token, int>, "sentencepiece takes token ids as int");

namespace detail {

// How one token reads inside a sequence; built once per token at load.
struct TokenText {
  std::string text;          // the piece with '▁' -> ' ', the unknown surface, or "" (control, byte)
  int byte = -1;             // the raw byte 0..255 of a byte-fallback token <0xNN>, else -1
  bool drops_space = false;  // at the start of a sequence SentencePiece drops text[0] (a '▁')
};


// The byte of a byte-fallback piece "<0xNN>", or -1 if `piece` is not spelled that way.
inline int parse_byte_piece(const std::string& piece) {
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  const int hi = hex(piece[3]);
  const int lo = hex(piece[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

// Classifies the bytes s[0, n), n >= 1, the way SentencePiece's decoder reads a byte run
// (string_util::DecodeUTF8, which accepts exactly the well-formed sequences of Unicode Table 3-7:
// no overlong forms, no surrogates, nothing above U+10FFFF). Returns the length of the complete
// character at s[0]; 0 if s is a proper prefix of a well-formed character, so more bytes may
// complete it; -1 if no bytes that follow can make s[0] start one.
inline int utf8_char_length(const unsigned char* s, std::size_t n) {
  const unsigned char lead = s[0];
  std::size_t length = 0;
  unsigned char lo = 0x80;  // range of the second byte; every later byte is in [0x80, 0xBF]
  unsigned char hi = 0xBF;
  if (lead < 0x80) {
    return 1;
  } else if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) lo = 0xA0;  // below: overlong
    if (lead == 0xED) hi = 0x9F;  // above: surrogates U+D800..U+DFFF
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) lo = 0x90;  // below: overlong
    if (lead == 0xF4) hi = 0x8F;  // above: beyond U+10FFFF
  } else {
    return -1;  // a continuation byte, an overlong lead (C0, C1) or beyond U+10FFFF (F5..FF)
  }
  for (std::size_t i = 1; i < length && i < n; ++i) {
    if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) return -1;
  }
  return n >= length ? static_cast<int>(length) : 0;
}

}  // namespace detail

class StreamingDecoder;

/// A SentencePiece tokenizer. Movable, not copyable; const methods are thread-safe.
class Tokenizer {
 public:
  /// Loads a SentencePiece model file (e.g. tok512.model, Llama 2's tokenizer.model).
  /// @throws Error (kIo) if the file cannot be opened or read; (kTokenizer) if it is not a
  ///         SentencePiece model, or one whose decoding StreamingDecoder cannot reproduce
  ///         (e.g. it has denormalization rules). Messages name the path.
  static Tokenizer load(const std::string& path);

  /// The ids of `text`, after BOS if `add_bos`. No EOS is added.
  /// @throws Error (kTokenizer) if SentencePiece fails, or `add_bos` and the model has no BOS.
  std::vector<Token> encode(std::string_view text, bool add_bos) const;

  /// The text of `tokens`, exactly as SentencePiece decodes it.
  /// @throws Error (kInvalidArgument) naming the first id outside [0, vocab_size);
  ///         (kTokenizer) if SentencePiece fails.
  std::string decode(Span<const Token> tokens) const;

  int vocab_size() const { return static_cast<int>(texts_.size()); }
  Token bos() const { return processor_->bos_id(); }  // -1 if the model has none
  Token eos() const { return processor_->eos_id(); }  // -1 if the model has none

 private:
  friend class StreamingDecoder;

  Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
            const std::string& path);

  bool in_vocab(Token token) const { return token >= 0 && token < vocab_size(); }
  [[noreturn]] void throw_not_in_vocab(Token token, const std::string& where) const;
  std::string decode_ids(const std::vector<int>& ids) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::vector<detail::TokenText> texts_;  // [vocab_size]
  // True if SentencePiece keeps dropping leading '▁'s until a piece produces text (models with
  // remove_extra_whitespaces): [▁, ▁Once] reads "Once". False if it drops only the first: " Once".
  bool drops_spaces_until_text_ = false;
};

/// Turns tokens into text one token at a time for streaming output. The concatenation of all the
/// pieces it emits (including flush()) equals Tokenizer::decode of the same token sequence, and it
/// never emits a broken UTF-8 sequence: bytes of a character split over several byte-fallback
/// tokens (<0xE2><0x80><0x99>) are held back until the character is complete. Per-token work is
/// a table lookup; push() allocates nothing beyond growing `out`. One decoder per stream; it keeps
/// a pointer to the tokenizer, which must outlive it and not be moved from.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

  /// Starts a new sequence: the next piece's leading space is dropped as at the start of decode.
  void reset() {
    n_pending_ = 0;
    at_start_ = true;
  }

  /// Appends to `out` the text that `token` completes, which may be nothing.
  /// @throws Error (kInvalidArgument) if `token` is outside [0, vocab_size); the state is unchanged.
  void push(Token token, std::string& out);

  /// Ends the sequence's text: appends the held-back bytes of an unfinished character, one U+FFFD
  /// each, as SentencePiece's decode does at the end of a byte run. Does not start a new sequence;
  /// call reset() for that.
  void flush(std::string& out) { emit_pending(true, out); }

 private:
  // Appends the complete characters of the pending bytes, and U+FFFD for each byte that cannot
  // start one (at the end of a run, an unfinished character cannot be finished).
  void emit_pending(bool end_of_run, std::string& out);

  const Tokenizer* tokenizer_;
  std::array<unsigned char, 4> pending_{};  // bytes of an unfinished character; at most 3 between pushes
  std::size_t n_pending_ = 0;
  bool at_start_ = true;  // no text yet, so SentencePiece would drop a leading '▁' here
};

inline Tokenizer Tokenizer::load(const std::string& path) {
  const std::string bytes = detail::read_file(path);
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status status = processor->LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    throw Error(ErrorCode::kTokenizer, "tokenizer: '" + path +
                                           "' is not a SentencePiece model: " + status.ToString());
  }
  return Tokenizer(std::move(processor), path);
}

inline Tokenizer::Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
                            const std::string& path)
    : processor_(std::move(processor)) {
  const int n = processor_->GetPieceSize();
  texts_.resize(static_cast<std::size_t>(n));
  int lone_space = -1;  // a piece that reads " " mid-sequence and "" at the start, e.g. "▁"
  for (int id = 0; id < n; ++id) {
    const std::string& piece = processor_->IdToPiece(id);
    detail::TokenText& t = texts_[static_cast<std::size_t>(id)];
    if (processor_->IsByte(id)) {
      t.byte = detail::parse_byte_piece(piece);
      if (t.byte < 0) {
        throw Error(ErrorCode::kTokenizer, "tokenizer: '" + path + "': byte piece " +
                                               std::to_string(id) + " is '" + piece +
                                               "', not <0xNN>");
      }
      continue;
    }
    // A piece alone is a sequence that starts with it, so SentencePiece's decode of it is the
    // text at the start of a sequence.
    const std::string first = decode_ids({id});
    if (processor_->IsControl(id) || processor_->IsUnknown(id)) {
      t.text = first;
      continue;
    }
    for (std::size_t at = 0; at < piece.size();) {
      if (piece.compare(at, 3, "\xE2\x96\x81") == 0) {  // U+2581 '▁'
        t.text += ' ';
        at += 3;
      } else {
        t.text += piece[at++];
      }
    }
    t.drops_space = first != t.text;
    if (t.drops_space && (t.text[0] != ' ' || t.text.compare(1, std::string::npos, first) != 0)) {
      throw Error(ErrorCode::kTokenizer,
                  "tokenizer: '" + path + "': SentencePiece decodes piece " + std::to_string(id) +
                      " ('" + piece + "') as '" + first + "', which kvlm cannot stream");
    }
    if (t.drops_space && t.text.size() == 1 && lone_space < 0) lone_space = id;
  }
  // Only a piece that drops to nothing can tell the two rules apart, and only it is affected.
  if (lone_space >= 0) drops_spaces_until_text_ = decode_ids({lone_space, lone_space}).empty();
}

inline std::vector<Token> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<Token> ids;
  const sentencepiece::util::Status status = processor_->Encode(text, &ids);
  if (!status.ok()) {
    throw Error(ErrorCode::kTokenizer, "tokenizer: encode failed: " + status.ToString());
  }
  if (add_bos) {
    if (bos() < 0) throw Error(ErrorCode::kTokenizer, "tokenizer: the model has no BOS token");
    ids.insert(ids.begin(), bos());
  }
  return ids;
}

inline std::string Tokenizer::decode(Span<const Token> tokens) const {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (!in_vocab(tokens[i])) throw_not_in_vocab(tokens[i], " at index " + std::to_string(i));
  }
  return decode_ids(std::vector<int>(tokens.begin(), tokens.end()));
}

inline void Tokenizer::throw_not_in_vocab(Token token, const std::string& where) const {
  throw Error(ErrorCode::kInvalidArgument, "tokenizer: token id " + std::to_string(token) + where +
                                               " is outside [0, " + std::to_string(vocab_size()) +
                                               ")");
}

inline std::string Tokenizer::decode_ids(const std::vector<int>& ids) const {
  std::string text;
  const sentencepiece::util::Status status = processor_->Decode(ids, &text);
  if (!status.ok()) {
    throw Error(ErrorCode::kTokenizer, "tokenizer: decode failed: " + status.ToString());
  }
  return text;
}

inline void StreamingDecoder::push(Token token, std::string& out) {
  if (!tokenizer_->in_vocab(token)) tokenizer_->throw_not_in_vocab(token, "");
  const detail::TokenText& t = tokenizer_->texts_[static_cast<std::size_t>(token)];
  if (t.byte >= 0) {
    pending_[n_pending_++] = static_cast<unsigned char>(t.byte);
    at_start_ = false;  // every byte becomes text: a character or U+FFFD
    emit_pending(false, out);
    return;
  }
  emit_pending(true, out);  // any other token ends a byte run
  if (at_start_ && t.drops_space) {
    out.append(t.text, 1);
    at_start_ = tokenizer_->drops_spaces_until_text_ && t.text.size() == 1;
  } else {
    out += t.text;
    at_start_ = at_start_ && t.text.empty();
  }
}

inline void StreamingDecoder::emit_pending(bool end_of_run, std::string& out) {
  std::size_t begin = 0;
  while (begin < n_pending_) {
    const int length = detail::utf8_char_length(pending_.data() + begin, n_pending_ - begin);
    if (length > 0) {
      out.append(reinterpret_cast<const char*>(pending_.data() + begin),
                 static_cast<std::size_t>(length));
      begin += static_cast<std::size_t>(length);
    } else if (length < 0 || end_of_run) {
      out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER, one per byte, as SentencePiece
      ++begin;
    } else {
      break;  // an unfinished character: wait for its next byte
    }
  }
  for (std::size_t i = begin; i < n_pending_; ++i) pending_[i - begin] = pending_[i];
  n_pending_ -= begin;
}

}  // namespace kvlm
