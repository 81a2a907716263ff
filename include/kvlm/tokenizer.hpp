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
//
// Tokenizer::from_vocab builds the same kind of tokenizer from the vocabulary a GGUF file embeds
// (TokenizerVocab): it writes a SentencePiece ModelProto in memory (Debian's libsentencepiece-dev
// ships no generated protobuf headers, so detail::ProtoWriter writes the few fields by hand) and
// loads it into SentencePiece itself, so encoding and decoding are SentencePiece's own.
//
// SentencePiece matches user-defined pieces wherever the input spells them, so where a vocabulary
// marks a chat marker user-defined, encode() turns user text "<end_of_turn>" into that marker.
// encode_plain(), which chat templates use for text, encodes with a second SentencePiece model in
// which those pieces are control pieces, which SentencePiece never matches in text.

#include <sentencepiece_processor.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/detail/read_file.hpp"
#include "kvlm/error.hpp"
#include "kvlm/loaders/gguf.hpp"
#include "kvlm/loaders/model_file.hpp"
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

// Protocol Buffers' wire format (protobuf.dev/programming-guides/encoding), only what a
// SentencePiece ModelProto needs: each field is a key varint (field number << 3 | wire type)
// followed by a varint, 4 little-endian bytes (float), or a length varint and that many bytes
// (strings and nested messages).
class ProtoWriter {
 public:
  void add_varint(int field, std::uint64_t value) {
    add_key(field, kVarint);
    add_raw_varint(value);
  }
  // int32 and enum fields: a negative value is sign-extended to 64 bits, so it takes 10 bytes.
  void add_int32(int field, std::int32_t value) {
    add_varint(field, static_cast<std::uint64_t>(static_cast<std::int64_t>(value)));
  }
  void add_bool(int field, bool value) { add_varint(field, value ? 1 : 0); }
  void add_float(int field, float value) {
    static_assert(std::numeric_limits<float>::is_iec559, "protobuf floats are IEEE 754 binary32");
    std::uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof bits);
    add_key(field, kFixed32);
    for (int shift = 0; shift < 32; shift += 8) bytes_ += static_cast<char>((bits >> shift) & 0xFF);
  }
  // A string, bytes or an embedded message (another writer's bytes()).
  void add_bytes(int field, std::string_view value) {
    add_key(field, kLengthDelimited);
    add_raw_varint(value.size());
    bytes_.append(value.data(), value.size());
  }
  // A whole field (key and value) as ProtoReader::field_bytes() saw it, copied unchanged.
  void add_field_bytes(std::string_view field) { bytes_.append(field.data(), field.size()); }

  const std::string& bytes() const { return bytes_; }
  void clear() { bytes_.clear(); }

 private:
  enum WireType : std::uint64_t { kVarint = 0, kLengthDelimited = 2, kFixed32 = 5 };

  void add_key(int field, WireType type) {
    add_raw_varint((static_cast<std::uint64_t>(field) << 3) | type);
  }
  // Seven bits at a time, least significant first; the high bit of a byte says more follow.
  void add_raw_varint(std::uint64_t value) {
    while (value >= 0x80) {
      bytes_ += static_cast<char>((value & 0x7F) | 0x80);
      value >>= 7;
    }
    bytes_ += static_cast<char>(value);
  }

  std::string bytes_;
};

// Field numbers and enum values of SentencePiece's sentencepiece_model.proto (the fields
// from_vocab writes; every other field keeps its default).
namespace spm {
// ModelProto
inline constexpr int kModelPieces = 1;          // repeated SentencePiece
inline constexpr int kModelTrainerSpec = 2;     // TrainerSpec
inline constexpr int kModelNormalizerSpec = 3;  // NormalizerSpec
// ModelProto.SentencePiece
inline constexpr int kPiecePiece = 1;  // string
inline constexpr int kPieceScore = 2;  // float
inline constexpr int kPieceType = 3;   // Type, default NORMAL
// ModelProto.SentencePiece.Type, the values of TokenizerVocab::token_types
inline constexpr std::int32_t kTypeNormal = 1;
inline constexpr std::int32_t kTypeUnknown = 2;
inline constexpr std::int32_t kTypeControl = 3;
inline constexpr std::int32_t kTypeUserDefined = 4;
inline constexpr std::int32_t kTypeUnused = 5;
inline constexpr std::int32_t kTypeByte = 6;
// TrainerSpec
inline constexpr int kTrainerModelType = 3;                // ModelType, default UNIGRAM
inline constexpr int kTrainerVocabSize = 4;                // int32
inline constexpr int kTrainerTreatWhitespaceAsSuffix = 24; // bool, default false
inline constexpr int kTrainerByteFallback = 35;            // bool, default false
inline constexpr int kTrainerUnkId = 40;                   // int32, default 0
inline constexpr int kTrainerBosId = 41;                   // int32, default 1
inline constexpr int kTrainerEosId = 42;                   // int32, default 2
inline constexpr int kTrainerPadId = 43;                   // int32, default -1
inline constexpr int kTrainerUnkPiece = 45;                // string, default "<unk>"
inline constexpr int kTrainerBosPiece = 46;                // string, default "<s>"
inline constexpr int kTrainerEosPiece = 47;                // string, default "</s>"
inline constexpr int kTrainerPadPiece = 48;                // string, default "<pad>"
inline constexpr std::int32_t kModelTypeBpe = 2;           // TrainerSpec.ModelType.BPE
// NormalizerSpec
inline constexpr int kNormalizerName = 1;                    // string
inline constexpr int kNormalizerAddDummyPrefix = 3;          // bool, default true
inline constexpr int kNormalizerRemoveExtraWhitespaces = 4;  // bool, default true
inline constexpr int kNormalizerEscapeWhitespaces = 5;       // bool, default true
}  // namespace spm

// Reads a serialized protobuf message field by field: the counterpart of ProtoWriter, for the
// few fields kvlm reads back from a .model file. Every read is bounded by the message's size.
class ProtoReader {
 public:
  explicit ProtoReader(std::string_view bytes) : bytes_(bytes) {}

  /// Advances to the next field; false at the end or on malformed input. Afterwards field() is
  /// its number and, by wire type, varint() or bytes() its value (fixed-size values are skipped).
  bool next() {
    field_begin_ = at_;
    std::uint64_t key = 0;
    if (!read_varint(key)) return false;
    field_ = static_cast<int>(key >> 3);
    switch (key & 7) {
      case 0: return read_varint(varint_);
      case 1: return skip(8);
      case 5: return skip(4);
      case 2: {
        std::uint64_t length = 0;
        if (!read_varint(length) || length > bytes_.size() - at_) return false;
        value_ = bytes_.substr(at_, static_cast<std::size_t>(length));
        at_ += static_cast<std::size_t>(length);
        return true;
      }
      default: return false;
    }
  }
  int field() const { return field_; }
  std::uint64_t varint() const { return varint_; }
  std::string_view bytes() const { return value_; }
  /// The whole field, key included, as it appears in the message.
  std::string_view field_bytes() const {
    return bytes_.substr(field_begin_, at_ - field_begin_);
  }

 private:
  bool read_varint(std::uint64_t& value) {
    value = 0;
    for (int shift = 0; shift < 64 && at_ < bytes_.size(); shift += 7) {
      const auto byte = static_cast<unsigned char>(bytes_[at_++]);
      value |= static_cast<std::uint64_t>(byte & 0x7F) << shift;
      if (byte < 0x80) return true;
    }
    return false;
  }
  bool skip(std::size_t n) {
    if (n > bytes_.size() - at_) return false;
    at_ += n;
    return true;
  }

  std::string_view bytes_;
  std::size_t at_ = 0;
  std::size_t field_begin_ = 0;  // where the field next() read last starts
  int field_ = 0;
  std::uint64_t varint_ = 0;
  std::string_view value_;
};

// llama.cpp's LLAMA_TOKEN_TYPE_UNDEFINED, which GGUF files may carry and which llama.cpp's SPM
// tokenizer treats as a normal piece; so does from_vocab. SentencePiece has no such type.
inline constexpr std::int32_t kTypeUndefined = 0;

// Checks what SentencePiece would refuse with an opaque status, or what kvlm relies on, and says
// what is wrong in terms of the vocabulary. Ids in messages are token ids.
// @throws Error (kTokenizer) naming `source`.
inline void check_vocab(const TokenizerVocab& vocab, const std::string& source) {
  const std::string where = "tokenizer: '" + source + "': ";
  auto fail = [&](const std::string& what) { throw Error(ErrorCode::kTokenizer, where + what); };
  if (vocab.model != "llama") {
    fail("tokenizer model '" + vocab.model +
         "' is not supported: kvlm reads only SentencePiece vocabularies (tokenizer.ggml.model "
         "'llama')");
  }
  const std::size_t n = vocab.tokens.size();
  if (n == 0) fail("the vocabulary has no tokens");
  if (n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
    fail(std::to_string(n) + " tokens do not fit SentencePiece's int32 ids");
  }
  if (vocab.scores.size() != n || vocab.token_types.size() != n) {
    fail(std::to_string(n) + " tokens but " + std::to_string(vocab.scores.size()) + " scores and " +
         std::to_string(vocab.token_types.size()) + " token types; each token needs one of each");
  }
  auto token_name = [&](std::size_t id) {
    return "token " + std::to_string(id) + " ('" + vocab.tokens[id] + "')";
  };

  // SentencePiece keeps two lookup tables, one for pieces the encoder may produce (normal,
  // user-defined, unused) and one for the rest (unknown, control, byte); a piece may appear once
  // in each. Views into vocab.tokens, which outlives the maps.
  std::unordered_map<std::string_view, std::size_t> normal_ids;
  std::unordered_map<std::string_view, std::size_t> reserved_ids;
  normal_ids.reserve(n);
  std::array<bool, 256> has_byte{};
  std::size_t n_bytes = 0;
  std::size_t unk_id = n;  // n: none yet
  for (std::size_t id = 0; id < n; ++id) {
    const std::string& piece = vocab.tokens[id];
    const std::int32_t type = vocab.token_types[id];
    if (piece.empty()) fail("token " + std::to_string(id) + " is empty");
    if (piece.find('\0') != std::string::npos) {
      fail("token " + std::to_string(id) + " contains a NUL byte");  // what() would stop at it
    }
    if (std::isnan(vocab.scores[id])) fail(token_name(id) + " has a NaN score");
    if (type < kTypeUndefined || type > spm::kTypeByte) {
      fail(token_name(id) + " has type " + std::to_string(type) +
           ", not one of 0 (undefined), 1 (normal) .. 6 (byte)");
    }
    const bool is_normal = type == kTypeUndefined || type == spm::kTypeNormal ||
                           type == spm::kTypeUserDefined || type == spm::kTypeUnused;
    const auto [it, inserted] = (is_normal ? normal_ids : reserved_ids).emplace(piece, id);
    if (!inserted) {
      fail("tokens " + std::to_string(it->second) + " and " + std::to_string(id) +
           " are both '" + piece + "'");
    }
    if (type == spm::kTypeUnknown) {
      if (unk_id < n) {
        fail("tokens " + std::to_string(unk_id) + " and " + std::to_string(id) +
             " both have type 2 (unknown); SentencePiece needs exactly one");
      }
      unk_id = id;
    }
    if (type == spm::kTypeByte) {
      const int byte = parse_byte_piece(piece);
      if (byte < 0) fail(token_name(id) + " has type 6 (byte) but is not spelled <0xNN>");
      has_byte[static_cast<std::size_t>(byte)] = true;  // a repeat is caught as a duplicate above
      ++n_bytes;
    }
  }
  if (unk_id == n) fail("no token has type 2 (unknown); SentencePiece needs exactly one");
  if (n_bytes > 0) {
    for (std::size_t b = 0; b < has_byte.size(); ++b) {
      if (!has_byte[b]) {
        const char* const hex = "0123456789ABCDEF";
        fail("the vocabulary has byte tokens but not <0x" + std::string(1, hex[b / 16]) +
             hex[b % 16] + ">; byte fallback needs all 256");
      }
    }
  }

  auto check_id = [&](std::int32_t id, const char* name) {
    if (id < -1 || (id >= 0 && static_cast<std::size_t>(id) >= n)) {
      fail(std::string(name) + " id " + std::to_string(id) + " is outside [0, " +
           std::to_string(n) + ") and not -1 (none)");
    }
  };
  check_id(vocab.unk, "unknown-token");
  check_id(vocab.bos, "BOS");
  check_id(vocab.eos, "EOS");
  check_id(vocab.pad, "padding");
  if (vocab.unk >= 0 && static_cast<std::size_t>(vocab.unk) != unk_id) {
    const std::size_t id = static_cast<std::size_t>(vocab.unk);
    fail("unknown-token id " + std::to_string(id) + " is '" + vocab.tokens[id] + "' of type " +
         std::to_string(vocab.token_types[id]) + ", not the token of type 2 (unknown), " +
         token_name(unk_id));
  }
  if (vocab.add_bos && vocab.bos < 0) fail("add_bos_token is set but there is no BOS token");
  if (vocab.add_eos && vocab.eos < 0) fail("add_eos_token is set but there is no EOS token");
}

// The serialized SentencePiece ModelProto of a vocabulary that passed check_vocab: the pieces
// with their scores and types (undefined written as normal); a BPE model (SentencePiece's BPE
// merges the adjacent pair whose merged piece scores highest, as llama.cpp's SPM tokenizer does),
// with byte fallback when any piece is a byte; the special ids and their pieces (SentencePiece
// finds bos/eos/unk/pad by piece, not by id); and the identity normalizer with the vocabulary's
// whitespace rules. Unknown tokens decode as SentencePiece's default " \u2047 ": a GGUF file does
// not carry unk_surface. Other TrainerSpec fields (split_digits, allow_whitespace_only_pieces, ...)
// only steer training: SentencePiece's BPE encodes the whole normalized text without them.
inline std::string sentencepiece_model_proto(const TokenizerVocab& vocab) {
  bool byte_fallback = false;
  std::int32_t unk = -1;  // the piece of type unknown, which is SentencePiece's unk whatever the id
  ProtoWriter model;
  ProtoWriter piece;
  for (std::size_t id = 0; id < vocab.tokens.size(); ++id) {
    const std::int32_t type =
        vocab.token_types[id] == kTypeUndefined ? spm::kTypeNormal : vocab.token_types[id];
    piece.clear();
    piece.add_bytes(spm::kPiecePiece, vocab.tokens[id]);
    piece.add_float(spm::kPieceScore, vocab.scores[id]);
    piece.add_int32(spm::kPieceType, type);
    model.add_bytes(spm::kModelPieces, piece.bytes());
    byte_fallback = byte_fallback || type == spm::kTypeByte;
    if (type == spm::kTypeUnknown) unk = static_cast<std::int32_t>(id);
  }

  ProtoWriter trainer;
  trainer.add_int32(spm::kTrainerModelType, spm::kModelTypeBpe);
  trainer.add_int32(spm::kTrainerVocabSize, static_cast<std::int32_t>(vocab.tokens.size()));
  trainer.add_bool(spm::kTrainerTreatWhitespaceAsSuffix, false);
  trainer.add_bool(spm::kTrainerByteFallback, byte_fallback);
  struct Special {
    std::int32_t id;  // -1: none, and the piece field stays unset
    int id_field;
    int piece_field;
  };
  const Special specials[] = {{unk, spm::kTrainerUnkId, spm::kTrainerUnkPiece},
                              {vocab.bos, spm::kTrainerBosId, spm::kTrainerBosPiece},
                              {vocab.eos, spm::kTrainerEosId, spm::kTrainerEosPiece},
                              {vocab.pad, spm::kTrainerPadId, spm::kTrainerPadPiece}};
  for (const Special& special : specials) {
    trainer.add_int32(special.id_field, special.id);
    if (special.id >= 0) {
      trainer.add_bytes(special.piece_field, vocab.tokens[static_cast<std::size_t>(special.id)]);
    }
  }
  model.add_bytes(spm::kModelTrainerSpec, trainer.bytes());

  ProtoWriter normalizer;
  normalizer.add_bytes(spm::kNormalizerName, "identity");
  normalizer.add_bool(spm::kNormalizerAddDummyPrefix, vocab.add_space_prefix);
  normalizer.add_bool(spm::kNormalizerRemoveExtraWhitespaces, vocab.remove_extra_whitespaces);
  normalizer.add_bool(spm::kNormalizerEscapeWhitespaces, true);
  model.add_bytes(spm::kModelNormalizerSpec, normalizer.bytes());
  return model.bytes();
}

// The ModelProto `model_proto` (one SentencePiece has parsed, so well formed) with every
// user-defined piece made a control piece, for Tokenizer::encode_plain; nothing when it has no
// user-defined piece. SentencePiece matches user-defined pieces in the input before anything
// else, but never control ones, and BPE never merges into a control piece: the rewritten model
// reads the text of such a piece as if the piece were not in the vocabulary. No user-defined
// piece shares its text with a control, unknown or byte piece (which SentencePiece would refuse
// here): SentencePiece decodes such a piece as the other one, so the Tokenizer refused the model
// before it asks for this. Every other field is copied unchanged.
inline std::optional<std::string> plain_text_model_proto(std::string_view model_proto) {
  auto piece_type = [](std::string_view piece) {
    std::int32_t type = spm::kTypeNormal;  // proto2's default when the field is absent
    for (ProtoReader r(piece); r.next();) {
      if (r.field() == spm::kPieceType) type = static_cast<std::int32_t>(r.varint());
    }
    return type;
  };
  ProtoWriter out;
  ProtoWriter piece;
  bool any_user_defined = false;
  for (ProtoReader model(model_proto); model.next();) {
    if (model.field() != spm::kModelPieces || piece_type(model.bytes()) != spm::kTypeUserDefined) {
      out.add_field_bytes(model.field_bytes());
      continue;
    }
    any_user_defined = true;
    piece.clear();
    for (ProtoReader r(model.bytes()); r.next();) {
      if (r.field() != spm::kPieceType) piece.add_field_bytes(r.field_bytes());
    }
    piece.add_int32(spm::kPieceType, spm::kTypeControl);
    out.add_bytes(spm::kModelPieces, piece.bytes());
  }
  if (!any_user_defined) return std::nullopt;
  return out.bytes();
}

}  // namespace detail

class StreamingDecoder;

/// A SentencePiece tokenizer. Movable, not copyable; const methods are thread-safe.
class Tokenizer {
 public:
  /// Loads a SentencePiece model file (e.g. tok512.model, Llama 2's tokenizer.model), or the
  /// vocabulary a GGUF file embeds (as from_vocab; told apart by the file's first bytes).
  /// For a .model, add_bos() is true (if it has a BOS) and add_eos() false, as llama.cpp assumes.
  /// @throws Error (kIo) if the file cannot be opened or read; (kTokenizer) if it is not a
  ///         SentencePiece model, or one whose decoding StreamingDecoder cannot reproduce
  ///         (e.g. it has denormalization rules). Messages name the path.
  static Tokenizer load(const std::string& path);

  /// Builds a SentencePiece tokenizer from a vocabulary embedded in a model file (a GGUF file's
  /// tokenizer.ggml.* keys); `source` is that file's path, for messages. The result encodes and
  /// decodes through SentencePiece itself: a BPE model over the pieces, scores and types, byte
  /// fallback when the vocabulary has byte tokens, and the identity normalizer with the
  /// vocabulary's add_space_prefix and remove_extra_whitespaces. It matches the .model file the
  /// vocabulary was converted from, except that unknown tokens decode as " \u2047 " (a GGUF file
  /// does not carry a custom unk_surface). bos(), eos(), add_bos() and add_eos() are the
  /// vocabulary's. Copies what it needs; `vocab` may be destroyed afterwards.
  /// @throws Error (kTokenizer), naming `source` and the problem, if the model is not "llama"
  ///         (SentencePiece), the arrays differ in length, a piece is empty, repeated or has a
  ///         type outside 0..6 (0, llama.cpp's "undefined", reads as normal), a byte piece is
  ///         not spelled <0xNN> or some of the 256 are missing, there is not exactly one unknown
  ///         piece or `vocab.unk` is another, a special id is out of range, add_bos/add_eos is
  ///         set without a BOS/EOS token, or StreamingDecoder cannot reproduce the decoding (as
  ///         for load()).
  static Tokenizer from_vocab(const TokenizerVocab& vocab, const std::string& source);

  /// The ids of `text`, after BOS if `add_bos` and followed by EOS if `add_eos`. Text that spells
  /// a control piece ("<s>") is encoded as text, never as that token; text that spells a
  /// user-defined piece becomes that piece, as in SentencePiece and llama.cpp.
  /// @throws Error (kTokenizer) if SentencePiece fails, or BOS/EOS is asked for and the model
  ///         has none.
  std::vector<Token> encode(std::string_view text, bool add_bos, bool add_eos = false) const;

  /// The ids of `text` read as plain text: no control or user-defined piece comes out, so text
  /// that spells a chat marker ("<end_of_turn>") stays text even where the vocabulary marks the
  /// marker user-defined (as older GGUF conversions and Gemma's tokenizer.model do), which
  /// encode() would match. For text that spells no user-defined piece, the same ids as
  /// encode(text, false), leading dummy-prefix '▁' included when the model adds one.
  /// @throws Error (kTokenizer) if SentencePiece fails.
  std::vector<Token> encode_plain(std::string_view text) const;

  /// The text of `tokens`, exactly as SentencePiece decodes it.
  /// @throws Error (kInvalidArgument) naming the first id outside [0, vocab_size);
  ///         (kTokenizer) if SentencePiece fails.
  std::string decode(Span<const Token> tokens) const;

  int vocab_size() const { return static_cast<int>(texts_.size()); }
  Token bos() const { return bos_; }  // -1 if the model has none
  Token eos() const { return eos_; }  // -1 if the model has none
  /// Whether a prompt should start with bos() (tokenizer.ggml.add_bos_token; true for a .model).
  bool add_bos() const { return add_bos_; }
  /// Whether a prompt should end with eos() (tokenizer.ggml.add_eos_token; false for a .model).
  bool add_eos() const { return add_eos_; }

  /// The piece of token `id` as the vocabulary spells it ("\u2581Once", "<0x0A>", "</s>").
  /// @throws Error (kInvalidArgument) if id is outside [0, vocab_size).
  const std::string& piece(Token id) const;
  /// The token whose piece is exactly `piece`, or -1 if there is none.
  Token id(std::string_view piece) const;
  /// Control tokens (BOS, EOS, chat markers) have no text of their own.
  /// @throws Error (kInvalidArgument) if id is outside [0, vocab_size), as is_byte().
  bool is_control(Token id) const;
  /// Byte-fallback tokens (<0xNN>) stand for one byte of UTF-8.
  bool is_byte(Token id) const;

  /// The Jinja chat template of the GGUF file the vocabulary came from (tokenizer.chat_template);
  /// empty for a .model file or a file without one. See chat_template.hpp.
  const std::string& chat_template() const { return chat_template_; }

  /// The vocabulary as a GGUF file embeds it (what quantize writes beside the weights). For a
  /// .model file the piece types are SentencePiece's (0.1.97 cannot report user-defined pieces:
  /// they read as normal) and the normalizer flags are the model's.
  TokenizerVocab vocab() const;

 private:
  friend class StreamingDecoder;

  Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
            const std::string& path);

  bool in_vocab(Token token) const { return token >= 0 && token < vocab_size(); }
  [[noreturn]] void throw_not_in_vocab(Token token, const std::string& where) const;
  std::string decode_ids(const std::vector<int>& ids) const;
  static std::vector<Token> encode_with(const sentencepiece::SentencePieceProcessor& processor,
                                        std::string_view text);
  // Sets plain_processor_ from the model `processor_` was loaded from.
  void load_plain_processor(std::string_view model_proto, const std::string& path);

  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  // The same model with its user-defined pieces made control ones (detail::plain_text_model_proto),
  // for encode_plain; null when the model has none, and encode_plain uses processor_. For a model
  // with user-defined pieces this costs about as much memory as processor_ again.
  std::unique_ptr<sentencepiece::SentencePieceProcessor> plain_processor_;
  std::vector<detail::TokenText> texts_;  // [vocab_size]
  // SentencePiece's own bos_id()/eos_id() for a .model; the vocabulary's for from_vocab, which
  // may name a token SentencePiece would not (it reports only control pieces).
  Token bos_ = -1;
  Token eos_ = -1;
  bool add_bos_ = true;
  bool add_eos_ = false;
  bool add_space_prefix_ = true;          // the normalizer's add_dummy_prefix
  bool remove_extra_whitespaces_ = true;  // the normalizer's, as written or proto2's default
  std::string chat_template_;             // TokenizerVocab::chat_template; empty for a .model
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

  /// Bytes of an unfinished character held back (0 to 3).
  std::size_t pending_bytes() const { return n_pending_; }

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
  if (detect_format(path) == FileFormat::kGguf) return from_vocab(load_gguf_vocab(path), path);
  const std::string bytes = detail::read_file(path);
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status status = processor->LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    throw Error(ErrorCode::kTokenizer, "tokenizer: '" + path +
                                           "' is not a SentencePiece model: " + status.ToString());
  }
  Tokenizer tokenizer(std::move(processor), path);
  tokenizer.load_plain_processor(bytes, path);
  tokenizer.add_bos_ = tokenizer.bos_ >= 0;  // as llama.cpp assumes, when there is a BOS
  detail::ProtoReader model(bytes);  // SentencePiece has just parsed it: it is well formed
  while (model.next()) {
    if (model.field() != detail::spm::kModelNormalizerSpec) continue;
    detail::ProtoReader normalizer(model.bytes());
    while (normalizer.next()) {
      if (normalizer.field() == detail::spm::kNormalizerAddDummyPrefix) {
        tokenizer.add_space_prefix_ = normalizer.varint() != 0;
      } else if (normalizer.field() == detail::spm::kNormalizerRemoveExtraWhitespaces) {
        tokenizer.remove_extra_whitespaces_ = normalizer.varint() != 0;
      }
    }
  }
  return tokenizer;
}

inline TokenizerVocab Tokenizer::vocab() const {
  TokenizerVocab v;
  v.model = "llama";
  for (int id = 0; id < vocab_size(); ++id) {
    v.tokens.push_back(processor_->IdToPiece(id));
    v.scores.push_back(processor_->GetScore(id));
    std::int32_t type = detail::spm::kTypeNormal;
    if (processor_->IsUnknown(id)) type = detail::spm::kTypeUnknown;
    if (processor_->IsControl(id)) type = detail::spm::kTypeControl;
    if (processor_->IsUnused(id)) type = detail::spm::kTypeUnused;
    if (processor_->IsByte(id)) type = detail::spm::kTypeByte;
    v.token_types.push_back(type);
  }
  v.bos = bos_;
  v.eos = eos_;
  v.unk = processor_->unk_id();
  v.pad = processor_->pad_id();
  v.add_bos = add_bos_;
  v.add_eos = add_eos_;
  v.add_space_prefix = add_space_prefix_;
  v.remove_extra_whitespaces = remove_extra_whitespaces_;
  v.chat_template = chat_template_;
  return v;
}

inline Tokenizer Tokenizer::from_vocab(const TokenizerVocab& vocab, const std::string& source) {
  detail::check_vocab(vocab, source);
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const std::string model_proto = detail::sentencepiece_model_proto(vocab);
  const sentencepiece::util::Status status = processor->LoadFromSerializedProto(model_proto);
  if (!status.ok()) {
    throw Error(ErrorCode::kTokenizer, "tokenizer: '" + source +
                                           "': SentencePiece refuses the vocabulary: " +
                                           status.ToString());
  }
  Tokenizer tokenizer(std::move(processor), source);
  tokenizer.load_plain_processor(model_proto, source);
  tokenizer.bos_ = vocab.bos;
  tokenizer.eos_ = vocab.eos;
  tokenizer.add_bos_ = vocab.add_bos;
  tokenizer.add_eos_ = vocab.add_eos;
  tokenizer.add_space_prefix_ = vocab.add_space_prefix;
  tokenizer.remove_extra_whitespaces_ = vocab.remove_extra_whitespaces;
  tokenizer.chat_template_ = vocab.chat_template;
  return tokenizer;
}

inline void Tokenizer::load_plain_processor(std::string_view model_proto,
                                            const std::string& path) {
  const std::optional<std::string> plain = detail::plain_text_model_proto(model_proto);
  if (!plain) return;
  plain_processor_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status status = plain_processor_->LoadFromSerializedProto(*plain);
  if (!status.ok()) {
    throw Error(ErrorCode::kTokenizer,
                "tokenizer: '" + path +
                    "': SentencePiece refuses the model with its user-defined pieces made "
                    "control pieces: " +
                    status.ToString());
  }
}

inline Tokenizer::Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
                            const std::string& path)
    : processor_(std::move(processor)), bos_(processor_->bos_id()), eos_(processor_->eos_id()) {
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

inline const std::string& Tokenizer::piece(Token id) const {
  if (!in_vocab(id)) throw_not_in_vocab(id, "");
  return processor_->IdToPiece(id);
}

inline Token Tokenizer::id(std::string_view piece) const {
  const int found = processor_->PieceToId(piece);  // the unknown piece's id when absent
  return in_vocab(found) && processor_->IdToPiece(found) == piece ? found : -1;
}

inline bool Tokenizer::is_control(Token id) const {
  if (!in_vocab(id)) throw_not_in_vocab(id, "");
  return processor_->IsControl(id);
}

inline bool Tokenizer::is_byte(Token id) const {
  if (!in_vocab(id)) throw_not_in_vocab(id, "");
  return processor_->IsByte(id);
}

inline std::vector<Token> Tokenizer::encode_with(
    const sentencepiece::SentencePieceProcessor& processor, std::string_view text) {
  std::vector<Token> ids;
  const sentencepiece::util::Status status = processor.Encode(text, &ids);
  if (!status.ok()) {
    throw Error(ErrorCode::kTokenizer, "tokenizer: encode failed: " + status.ToString());
  }
  return ids;
}

inline std::vector<Token> Tokenizer::encode_plain(std::string_view text) const {
  return encode_with(plain_processor_ ? *plain_processor_ : *processor_, text);
}

inline std::vector<Token> Tokenizer::encode(std::string_view text, bool add_bos,
                                            bool add_eos) const {
  std::vector<Token> ids = encode_with(*processor_, text);
  if (add_bos) {
    if (bos() < 0) throw Error(ErrorCode::kTokenizer, "tokenizer: the model has no BOS token");
    ids.insert(ids.begin(), bos());
  }
  if (add_eos) {
    if (eos() < 0) throw Error(ErrorCode::kTokenizer, "tokenizer: the model has no EOS token");
    ids.push_back(eos());
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
