// Tokenizer against llama.cpp's tokenizer vectors and SentencePiece's own decode; StreamingDecoder
// against Tokenizer::decode on random and real token sequences.

#include "kvlm/tokenizer.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kvlm/error.hpp"
#include "models.hpp"
#include "tokenizer_cases.hpp"

namespace kvlm {
namespace {

// Ids shared by tok512 and Llama 2's tokenizer: 0 <unk>, 1 <s>, 2 </s>, then <0x00>..<0xFF>.
constexpr Token kUnk = 0;
constexpr Token kBos = 1;
constexpr Token kEos = 2;
constexpr Token kByte0 = 3;
constexpr Token byte_token(unsigned char b) { return kByte0 + b; }

const char* const kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The kvlm::Error that `f` throws, or nothing if it returns.
template <typename F>
std::optional<Error> error_from(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

bool contains(const char* text, const std::string& part) {
  return std::string(text).find(part) != std::string::npos;
}

// Well-formed UTF-8, checked from the definition (a scalar value in its shortest form) rather
// than from the byte-range table the decoder uses.
bool is_valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    std::uint32_t min = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if ((lead >> 5) == 0x6) {
      n = 2;
      cp = lead & 0x1Fu;
      min = 0x80;
    } else if ((lead >> 4) == 0xE) {
      n = 3;
      cp = lead & 0x0Fu;
      min = 0x800;
    } else if ((lead >> 3) == 0x1E) {
      n = 4;
      cp = lead & 0x07u;
      min = 0x10000;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c >> 6) != 0x2) return false;
      cp = (cp << 6) | (c & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// Tokenizer::decode of a braced list, held in a vector: a Span over an initializer_list would not
// outlive the braces.
std::string decoded(const Tokenizer& tokenizer, const std::vector<Token>& tokens) {
  return tokenizer.decode(tokens);
}

using test::ids_to_string;

// What a StreamingDecoder emits for `tokens`: one string per push, then the flush.
std::vector<std::string> stream_pieces(const Tokenizer& tokenizer,
                                       const std::vector<Token>& tokens) {
  StreamingDecoder decoder(tokenizer);
  std::vector<std::string> pieces(tokens.size() + 1);
  for (std::size_t i = 0; i < tokens.size(); ++i) decoder.push(tokens[i], pieces[i]);
  decoder.flush(pieces.back());
  return pieces;
}

// Streaming `tokens` gives decode's text, in pieces that are each valid UTF-8.
void expect_streams_as_decode(const Tokenizer& tokenizer, const std::vector<Token>& tokens) {
  const std::vector<std::string> pieces = stream_pieces(tokenizer, tokens);
  std::string text;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_TRUE(is_valid_utf8(pieces[i])) << "piece " << i << " of " << ids_to_string(tokens);
    text += pieces[i];
  }
  EXPECT_EQ(text, tokenizer.decode(tokens)) << "tokens: " << ids_to_string(tokens);
}

// The UTF-8 bytes of code point `cp`, as byte-fallback tokens.
std::vector<Token> utf8_byte_tokens(std::uint32_t cp) {
  std::vector<unsigned char> bytes;
  if (cp < 0x80) {
    bytes = {static_cast<unsigned char>(cp)};
  } else if (cp < 0x800) {
    bytes = {static_cast<unsigned char>(0xC0 | (cp >> 6)),
             static_cast<unsigned char>(0x80 | (cp & 0x3F))};
  } else if (cp < 0x10000) {
    bytes = {static_cast<unsigned char>(0xE0 | (cp >> 12)),
             static_cast<unsigned char>(0x80 | ((cp >> 6) & 0x3F)),
             static_cast<unsigned char>(0x80 | (cp & 0x3F))};
  } else {
    bytes = {static_cast<unsigned char>(0xF0 | (cp >> 18)),
             static_cast<unsigned char>(0x80 | ((cp >> 12) & 0x3F)),
             static_cast<unsigned char>(0x80 | ((cp >> 6) & 0x3F)),
             static_cast<unsigned char>(0x80 | (cp & 0x3F))};
  }
  std::vector<Token> tokens;
  for (unsigned char b : bytes) tokens.push_back(byte_token(b));
  return tokens;
}

// Random sequences mixing every kind of token: uniform ids over the whole vocabulary, random
// bytes, byte-fallback characters (whole, cut short, or surrogates), control and unknown tokens,
// and the whitespace pieces whose leading '▁' decode may drop.
void expect_random_sequences_stream_as_decode(const Tokenizer& tokenizer) {
  std::vector<Token> specials = {kUnk, kBos, kEos};
  for (const char* text : {" ", "  ", "\n", " \n", "3", "   Hello  world"}) {
    for (Token t : tokenizer.encode(text, false)) specials.push_back(t);
  }
  std::mt19937 rng(20240611);
  std::uniform_int_distribution<Token> any_id(0, tokenizer.vocab_size() - 1);
  std::uniform_int_distribution<int> any_byte(0, 255);
  std::uniform_int_distribution<std::size_t> any_special(0, specials.size() - 1);
  std::uniform_int_distribution<int> kind(0, 9);
  std::uniform_int_distribution<std::size_t> length(0, 24);
  const std::uint32_t code_point_ranges[][2] = {
      {0x20, 0x7E}, {0x80, 0x7FF}, {0x800, 0xFFFF}, {0x10000, 0x10FFFF}};
  for (int sequence = 0; sequence < 3000; ++sequence) {
    std::vector<Token> tokens;
    const std::size_t n = length(rng);
    while (tokens.size() < n) {
      const int k = kind(rng);
      if (sequence % 4 == 0 || k < 3) {
        tokens.push_back(any_id(rng));
      } else if (k < 5) {
        tokens.push_back(byte_token(static_cast<unsigned char>(any_byte(rng))));
      } else if (k < 7) {
        tokens.push_back(specials[any_special(rng)]);
      } else {
        const auto& range = code_point_ranges[k - 7 + (any_byte(rng) & 1)];
        std::uniform_int_distribution<std::uint32_t> in_range(range[0], range[1]);
        std::vector<Token> bytes = utf8_byte_tokens(in_range(rng));
        if (any_byte(rng) < 64) bytes.pop_back();  // a character cut short
        tokens.insert(tokens.end(), bytes.begin(), bytes.end());
      }
    }
    expect_streams_as_decode(tokenizer, tokens);
    if (testing::Test::HasFailure()) return;  // one failing sequence says enough
  }
}

const char* const kTexts[] = {
    "Once upon a time, there was a little girl named Lily.",
    "naïve café — 日本語 🙂",
    "“Curly quotes”, an em—dash, and 🙂🙃 emoji; ünïcödé € 𝄞.",
    "  two leading spaces, and  two   inner ones  ",
    "line one\nline two\n\n\ttabbed",
    "",
    " ",
};

// llama.cpp's test vectors for Llama 2's tokenizer (read_vocab_test_cases).
TEST(TokenizerTest, MatchesLlamaCppVocabVectors) {
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  KVLM_REQUIRE_MODEL(inp, "llama-spm-vocab/ggml-vocab-llama-spm.gguf.inp");
  KVLM_REQUIRE_MODEL(out, "llama-spm-vocab/ggml-vocab-llama-spm.gguf.out");
  const Tokenizer tokenizer = Tokenizer::load(model);
  test::expect_encodes_vocab_test_cases(tokenizer, inp, out);
}

TEST(TokenizerTest, Tok512EncodeAddsBosOnlyWhenAsked) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  EXPECT_EQ(tokenizer.vocab_size(), 512);
  EXPECT_EQ(tokenizer.bos(), kBos);
  EXPECT_EQ(tokenizer.eos(), kEos);

  EXPECT_EQ(tokenizer.encode("Once upon", true), (std::vector<Token>{kBos, 403, 407}));
  EXPECT_EQ(tokenizer.encode("Once upon", false), (std::vector<Token>{403, 407}));
  EXPECT_EQ(tokenizer.encode("", true), std::vector<Token>{kBos});
  EXPECT_TRUE(tokenizer.encode("", false).empty());
  for (const char* text : kTexts) {
    std::vector<Token> with_bos = tokenizer.encode(text, true);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos.front(), kBos);
    with_bos.erase(with_bos.begin());
    EXPECT_EQ(with_bos, tokenizer.encode(text, false)) << text;
  }
}

TEST(TokenizerTest, Tok512DecodeRoundTrips) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  // tok512 removes extra whitespace when encoding, so only texts without it come back intact.
  for (const char* text : {"Once upon a time, there was a little girl named Lily.",
                           "naïve café — 日本語 🙂", "line one\nline two\n\n\ttabbed",
                           "“Curly quotes”, an em—dash, and 🙂🙃 emoji; ünïcödé € 𝄞.", ""}) {
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text, true)), text);
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text, false)), text);
  }
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("  a  b  ", false)), "a b");
}

TEST(TokenizerTest, DecodeFollowsSentencePieceConventions) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  constexpr Token kOnce = 403;   // "▁Once"
  constexpr Token kUpon = 407;   // "▁upon"
  EXPECT_EQ(decoded(tokenizer, {kBos, kOnce, kUpon}), "Once upon");
  EXPECT_EQ(decoded(tokenizer, {kOnce, kEos, kUpon, kEos}), "Once upon");
  EXPECT_EQ(decoded(tokenizer, {byte_token(0x41), kOnce}), "A Once");
  EXPECT_EQ(decoded(tokenizer, {byte_token(0xE2), byte_token(0x80), byte_token(0x99)}), "’");
  // Each byte of a run that is not part of a well-formed character becomes one U+FFFD.
  const std::string two = std::string(kReplacement) + kReplacement;
  const std::string three = two + kReplacement;
  EXPECT_EQ(decoded(tokenizer, {byte_token(0xE2), byte_token(0x80)}), two);
  EXPECT_EQ(decoded(tokenizer, {byte_token(0xE2), byte_token(0x80), kOnce}), two + " Once");
  EXPECT_EQ(decoded(tokenizer, {byte_token(0xE2), byte_token(0x80), byte_token(0x41)}), two + "A");
  EXPECT_EQ(decoded(tokenizer, {byte_token(0xE2), kEos, byte_token(0x80), byte_token(0x99)}), three);
  EXPECT_EQ(decoded(tokenizer, {byte_token(0xED), byte_token(0xA0), byte_token(0x80)}), three);
  EXPECT_EQ(decoded(tokenizer, {byte_token(0xC0), byte_token(0x80)}), two);
}

// SentencePiece drops the leading '▁' at the start of a sequence. With remove_extra_whitespaces
// (tok512) it keeps dropping them until some text appears; with add_dummy_prefix alone (Llama 2)
// it drops only the first.
TEST(TokenizerTest, LeadingSpaceRuleFollowsTheModel) {
  KVLM_REQUIRE_MODEL(tok512_model, "stories260K/tok512.model");
  KVLM_REQUIRE_MODEL(llama2_model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer tok512 = Tokenizer::load(tok512_model);
  const Tokenizer llama2 = Tokenizer::load(llama2_model);
  EXPECT_EQ(decoded(tok512, {410, 403}), "Once");           // "▁", "▁Once"
  EXPECT_EQ(decoded(tok512, {kBos, 410, 410, 403}), "Once");
  EXPECT_EQ(decoded(llama2, {29871, 9038}), " Once");       // "▁", "▁Once"
  EXPECT_EQ(decoded(llama2, {kBos, 29871, 29871, 9038}), "  Once");
  EXPECT_EQ(decoded(llama2, {kBos, 9038, 2501}), "Once upon");
  expect_streams_as_decode(tok512, {410, 403});
  expect_streams_as_decode(tok512, {kBos, 410, 410, 403});
  expect_streams_as_decode(llama2, {29871, 9038});
  expect_streams_as_decode(llama2, {kBos, 29871, 29871, 9038});
}

// The unknown token reads as the model's unk_surface. llama2.c trained tok512 passing the Python
// raw string r" \342\201\207 ", so its surface is those 14 characters, backslashes and all,
// not " ⁇ " as in Llama 2's model.
TEST(TokenizerTest, UnknownTokenReadsAsTheModelsSurface) {
  KVLM_REQUIRE_MODEL(tok512_model, "stories260K/tok512.model");
  KVLM_REQUIRE_MODEL(llama2_model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer tok512 = Tokenizer::load(tok512_model);
  const Tokenizer llama2 = Tokenizer::load(llama2_model);
  EXPECT_EQ(decoded(tok512, {kUnk, 403}), " \\342\\201\\207  Once");
  EXPECT_EQ(decoded(llama2, {kUnk, 9038}), " \xE2\x81\x87  Once");
  expect_streams_as_decode(tok512, {kUnk, 403, kUnk});
  expect_streams_as_decode(llama2, {kUnk, 9038, kUnk});
}

TEST(TokenizerTest, MissingFileThrowsIo) {
  const std::string path = testing::TempDir() + "kvlm-no-such-tokenizer.model";
  const std::optional<Error> error = error_from([&] { Tokenizer::load(path); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kIo);
  EXPECT_TRUE(contains(error->what(), path)) << error->what();
}

TEST(TokenizerTest, DirectoryThrowsIo) {
  const std::string path = testing::TempDir();
  const std::optional<Error> error = error_from([&] { Tokenizer::load(path); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kIo);
  EXPECT_TRUE(contains(error->what(), path)) << error->what();
}

// A FIFO is refused at once, not waited on for a writer that never comes.
TEST(TokenizerTest, FifoThrowsIoWithoutWaiting) {
  const std::string path =
      testing::TempDir() + "kvlm-tokenizer-" + std::to_string(::getpid()) + ".fifo";
  ::unlink(path.c_str());
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  const std::optional<Error> error = error_from([&] { Tokenizer::load(path); });
  ::unlink(path.c_str());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kIo);
  EXPECT_TRUE(contains(error->what(), path + ": not a regular file")) << error->what();
}

TEST(TokenizerTest, NotAModelThrowsTokenizer) {
  std::string garbage;
  std::mt19937 rng(7);
  for (int i = 0; i < 4096; ++i) garbage += static_cast<char>(rng() & 0xFF);
  for (const std::string& contents : {garbage, std::string("not a model\n"), std::string()}) {
    const std::string path = testing::TempDir() + "kvlm-tokenizer-test-" +
                             std::to_string(std::random_device{}()) + ".model";
    std::ofstream(path, std::ios::binary) << contents;
    const std::optional<Error> error = error_from([&] { Tokenizer::load(path); });
    std::remove(path.c_str());
    ASSERT_TRUE(error.has_value()) << contents.size() << " bytes";
    EXPECT_EQ(error->code(), ErrorCode::kTokenizer);
    EXPECT_TRUE(contains(error->what(), path)) << error->what();
  }
}

TEST(TokenizerTest, DecodeRejectsIdsOutsideVocab) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  for (Token bad : {-1, 512}) {
    const std::optional<Error> error = error_from([&] { decoded(tokenizer, {kBos, 403, bad}); });
    ASSERT_TRUE(error.has_value()) << bad;
    EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(contains(error->what(), "token id " + std::to_string(bad) + " at index 2"))
        << error->what();
  }
}

TEST(TokenizerTest, MovesKeepWorking) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  Tokenizer first = Tokenizer::load(model);
  Tokenizer second = std::move(first);
  EXPECT_EQ(second.decode(second.encode("Once upon", true)), "Once upon");
}

TEST(StreamingDecoderTest, MatchesDecodeOnRandomSequencesTok512) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  expect_random_sequences_stream_as_decode(Tokenizer::load(model));
}

TEST(StreamingDecoderTest, MatchesDecodeOnRandomSequencesLlama2) {
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  expect_random_sequences_stream_as_decode(Tokenizer::load(model));
}

TEST(StreamingDecoderTest, MatchesDecodeOnEncodedText) {
  KVLM_REQUIRE_MODEL(tok512_model, "stories260K/tok512.model");
  KVLM_REQUIRE_MODEL(llama2_model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer tok512 = Tokenizer::load(tok512_model);
  const Tokenizer llama2 = Tokenizer::load(llama2_model);
  for (const Tokenizer* tokenizer : {&tok512, &llama2}) {
    for (const char* text : kTexts) {
      expect_streams_as_decode(*tokenizer, tokenizer->encode(text, true));
      expect_streams_as_decode(*tokenizer, tokenizer->encode(text, false));
    }
  }
  // The test means something only if tok512 spells some of those characters in bytes.
  std::size_t n_bytes = 0;
  for (Token t : tok512.encode("naïve café — 日本語 🙂", false)) {
    n_bytes += (t >= kByte0 && t < kByte0 + 256) ? 1 : 0;
  }
  EXPECT_GE(n_bytes, 9u);
}

TEST(StreamingDecoderTest, HoldsBackSplitCharacters) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  // "’" is E2 80 99, "🙂" is F0 9F 99 82: nothing comes out until the last byte.
  EXPECT_EQ(stream_pieces(tokenizer, {byte_token(0xE2), byte_token(0x80), byte_token(0x99)}),
            (std::vector<std::string>{"", "", "’", ""}));
  EXPECT_EQ(stream_pieces(tokenizer, {403, byte_token(0xF0), byte_token(0x9F), byte_token(0x99),
                                      byte_token(0x82), 407}),
            (std::vector<std::string>{"Once", "", "", "", "🙂", " upon", ""}));
}

TEST(StreamingDecoderTest, EmitsReplacementsOnceBytesCannotFormACharacter) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  const std::string r = kReplacement;
  // E0 80 can never be well formed (overlong), so both bytes are replaced as soon as 80 arrives.
  EXPECT_EQ(stream_pieces(tokenizer, {byte_token(0xE0), byte_token(0x80), byte_token(0x41)}),
            (std::vector<std::string>{"", r + r, "A", ""}));
  // A character cut short by another token, or by the end of the sequence: one U+FFFD per byte.
  EXPECT_EQ(stream_pieces(tokenizer, {byte_token(0xE2), byte_token(0x80), 403}),
            (std::vector<std::string>{"", "", r + r + " Once", ""}));
  EXPECT_EQ(stream_pieces(tokenizer, {byte_token(0xE2), byte_token(0x80)}),
            (std::vector<std::string>{"", "", r + r}));
}

TEST(StreamingDecoderTest, ResetStartsANewSequence) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  StreamingDecoder decoder(tokenizer);
  std::string out;
  decoder.push(403, out);
  decoder.push(byte_token(0xE2), out);
  decoder.flush(out);
  decoder.push(403, out);  // flush ends the text of a byte run, not the sequence
  EXPECT_EQ(out, "Once" + std::string(kReplacement) + " Once");
  out.clear();
  decoder.push(byte_token(0xE2), out);
  decoder.reset();  // drops the held byte
  decoder.push(403, out);
  decoder.flush(out);
  EXPECT_EQ(out, "Once");
}

TEST(StreamingDecoderTest, PushRejectsIdsOutsideVocab) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer tokenizer = Tokenizer::load(model);
  StreamingDecoder decoder(tokenizer);
  std::string out;
  decoder.push(byte_token(0xE2), out);
  for (Token bad : {-1, 512}) {
    const std::optional<Error> error = error_from([&] { decoder.push(bad, out); });
    ASSERT_TRUE(error.has_value()) << bad;
    EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(contains(error->what(), "token id " + std::to_string(bad))) << error->what();
  }
  decoder.push(byte_token(0x80), out);  // the held byte survived the throws
  decoder.push(byte_token(0x99), out);
  EXPECT_EQ(out, "’");
}

}  // namespace
}  // namespace kvlm
