// Tokenizer::from_vocab: a tokenizer built from the vocabulary a GGUF file embeds. The vocabulary
// here is read back from a .model file through SentencePiece's API, so each test compares the
// ModelProto kvlm writes against the real SentencePiece model it came from: same ids, same text.

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kvlm/error.hpp"
#include "kvlm/loaders/model_file.hpp"
#include "kvlm/tokenizer.hpp"
#include "models.hpp"
#include "tokenizer_cases.hpp"

namespace kvlm {
namespace {

using test::generated_texts;
using test::vocab_from_model;

constexpr std::size_t kPropertyTexts = 10000;
constexpr std::uint32_t kPropertySeed = 20240923;

const char* const kSource = "/models/test.gguf";  // stands for the file a vocabulary came from

std::optional<Error> error_from(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

// The .model's own tokenizer and the one built from its vocabulary agree on every generated text.
void expect_agree(const Tokenizer& built, const Tokenizer& reference, bool round_trips) {
  test::expect_tokenizers_agree(built, reference, generated_texts(kPropertySeed, kPropertyTexts),
                                round_trips);
}

// ---------------------------------------------------------------------------------------------
// The protobuf writer, against encodings from protobuf's documentation.

TEST(TokenizerVocabTest, ProtoWriterWritesTheWireFormat) {
  detail::ProtoWriter w;
  w.add_varint(1, 150);
  EXPECT_EQ(w.bytes(), std::string("\x08\x96\x01", 3));
  w.clear();
  w.add_int32(43, -1);  // key 43 << 3 = 344 = D8 02; -1 sign-extended: nine FF then 01
  EXPECT_EQ(w.bytes(), std::string("\xD8\x02\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\x01", 12));
  w.clear();
  w.add_bool(35, true);
  EXPECT_EQ(w.bytes(), std::string("\x98\x02\x01", 3));
  w.clear();
  w.add_float(2, 1.0f);
  EXPECT_EQ(w.bytes(), std::string("\x15\x00\x00\x80\x3F", 5));
  w.clear();
  w.add_bytes(2, "testing");
  EXPECT_EQ(w.bytes(), std::string("\x12\x07testing", 9));
}

// ---------------------------------------------------------------------------------------------
// Llama 2's tokenizer.model: 32000 pieces, byte fallback, add_dummy_prefix, no whitespace removal.

TEST(TokenizerVocabTest, Llama2ProtoKeepsEveryPieceScoreTypeAndSpecialId) {
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  const TokenizerVocab vocab = vocab_from_model(model, false);
  ASSERT_EQ(vocab.tokens.size(), 32000u);
  sentencepiece::SentencePieceProcessor original;
  sentencepiece::SentencePieceProcessor built;
  ASSERT_TRUE(original.Load(model).ok());
  const auto status = built.LoadFromSerializedProto(detail::sentencepiece_model_proto(vocab));
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_EQ(built.GetPieceSize(), original.GetPieceSize());
  int n_mismatches = 0;
  for (int id = 0; id < original.GetPieceSize() && n_mismatches < 5; ++id) {
    const float a = original.GetScore(id);
    const float b = built.GetScore(id);
    const bool same = original.IdToPiece(id) == built.IdToPiece(id) &&
                      std::memcmp(&a, &b, sizeof a) == 0 &&
                      original.IsUnknown(id) == built.IsUnknown(id) &&
                      original.IsControl(id) == built.IsControl(id) &&
                      original.IsUnused(id) == built.IsUnused(id) &&
                      original.IsByte(id) == built.IsByte(id);
    n_mismatches += same ? 0 : 1;
    EXPECT_TRUE(same) << "id " << id << " '" << original.IdToPiece(id) << "'";
  }
  EXPECT_EQ(built.unk_id(), 0);
  EXPECT_EQ(built.bos_id(), 1);
  EXPECT_EQ(built.eos_id(), 2);
  EXPECT_EQ(built.pad_id(), -1);
}

TEST(TokenizerVocabTest, Llama2VocabMatchesModelOnGeneratedText) {
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer reference = Tokenizer::load(model);
  const Tokenizer built = Tokenizer::from_vocab(vocab_from_model(model, false), kSource);
  EXPECT_EQ(built.vocab_size(), 32000);
  expect_agree(built, reference, /*round_trips=*/true);
}

TEST(TokenizerVocabTest, Llama2VocabMatchesLlamaCppVocabVectors) {
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  KVLM_REQUIRE_MODEL(inp, "llama-spm-vocab/ggml-vocab-llama-spm.gguf.inp");
  KVLM_REQUIRE_MODEL(out, "llama-spm-vocab/ggml-vocab-llama-spm.gguf.out");
  const Tokenizer built = Tokenizer::from_vocab(vocab_from_model(model, false), kSource);
  test::expect_encodes_vocab_test_cases(built, inp, out);
}

TEST(TokenizerVocabTest, SpecialIdsAndFlagsComeFromTheVocab) {
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer loaded = Tokenizer::load(model);
  EXPECT_TRUE(loaded.add_bos());
  EXPECT_FALSE(loaded.add_eos());

  TokenizerVocab vocab = vocab_from_model(model, false);
  const Tokenizer built = Tokenizer::from_vocab(vocab, kSource);
  EXPECT_EQ(built.bos(), 1);
  EXPECT_EQ(built.eos(), 2);
  EXPECT_TRUE(built.add_bos());
  EXPECT_FALSE(built.add_eos());
  EXPECT_EQ(built.encode("Hello", true), (std::vector<Token>{1, 15043}));

  vocab.add_bos = false;
  vocab.add_eos = true;
  const Tokenizer flipped = Tokenizer::from_vocab(vocab, kSource);
  EXPECT_FALSE(flipped.add_bos());
  EXPECT_TRUE(flipped.add_eos());

  vocab.add_eos = false;
  vocab.bos = -1;
  const Tokenizer no_bos = Tokenizer::from_vocab(vocab, kSource);
  EXPECT_EQ(no_bos.bos(), -1);
  EXPECT_EQ(no_bos.eos(), 2);
  const std::optional<Error> error = error_from([&] { no_bos.encode("Hello", true); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kTokenizer);
}

// add_space_prefix = false: no '▁' is added before the text, as in llama.cpp.
TEST(TokenizerVocabTest, AddSpacePrefixFollowsTheVocab) {
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  TokenizerVocab vocab = vocab_from_model(model, false);
  vocab.add_space_prefix = false;
  const Tokenizer built = Tokenizer::from_vocab(vocab, kSource);
  EXPECT_EQ(built.encode("Hello", false), (std::vector<Token>{10994}));    // "Hello"
  EXPECT_EQ(built.encode(" Hello", false), (std::vector<Token>{15043}));   // "▁Hello"
  EXPECT_EQ(built.decode(built.encode(" Hello world", false)), " Hello world");
}

// ---------------------------------------------------------------------------------------------
// tok512.model: vocab 512, byte fallback, remove_extra_whitespaces = true, and an unk_surface that
// reads ` \342\201\207 ` literally. A GGUF file carries neither of the last two unless told.

TEST(TokenizerVocabTest, Tok512VocabWithWhitespaceRemovalMatchesModel) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer reference = Tokenizer::load(model);
  const Tokenizer built = Tokenizer::from_vocab(vocab_from_model(model, true), kSource);
  EXPECT_EQ(built.vocab_size(), 512);
  expect_agree(built, reference, /*round_trips=*/false);
  // Both keep dropping leading spaces at the start of decoding until some text appears.
  EXPECT_EQ(built.decode(std::vector<Token>{410, 410, 403}), "Once");  // "▁", "▁", "▁Once"
}

// Without remove_extra_whitespaces (what llama.cpp's converter writes for stories260K, and the
// GGUF default), texts that whitespace removal leaves alone get the .model's ids; every other text
// gets other ids, those the .model gives once its extra spaces are removed, and decodes back to
// itself (see expect_differ_only_on_extra_spaces).
TEST(TokenizerVocabTest, Tok512VocabWithoutWhitespaceRemovalDiffersOnlyOnExtraSpaces) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer reference = Tokenizer::load(model);
  const Tokenizer built = Tokenizer::from_vocab(vocab_from_model(model, false), kSource);
  test::expect_differ_only_on_extra_spaces(built, reference,
                                           generated_texts(kPropertySeed, kPropertyTexts));
  EXPECT_EQ(built.encode("a  b", false), (std::vector<Token>{261, 410, 268}));  // ▁a ▁ ▁b
  EXPECT_EQ(reference.encode("a  b", false), (std::vector<Token>{261, 268}));   // ▁a ▁b
  EXPECT_EQ(built.encode(" a", false), (std::vector<Token>{410, 261}));         // ▁ ▁a
  EXPECT_EQ(reference.encode(" a", false), (std::vector<Token>{261}));
}

// The unknown token reads as SentencePiece's default " \u2047 ", since a GGUF file has no
// unk_surface; tok512.model itself reads it as the ten characters ` \342\201\207 `.
TEST(TokenizerVocabTest, UnknownTokenReadsAsTheDefaultSurface) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer reference = Tokenizer::load(model);
  const Tokenizer built = Tokenizer::from_vocab(vocab_from_model(model, true), kSource);
  const std::vector<Token> unk = {0};
  EXPECT_EQ(built.decode(unk), " \xE2\x81\x87 ");
  EXPECT_EQ(reference.decode(unk), " \\342\\201\\207 ");
  std::string streamed;
  StreamingDecoder decoder(built);
  decoder.push(0, streamed);
  decoder.flush(streamed);
  EXPECT_EQ(streamed, built.decode(unk));
}

// ---------------------------------------------------------------------------------------------
// A hand-made vocabulary: no byte pieces (so no byte fallback), a user-defined piece, and scores
// that decide which pair merges first.

TokenizerVocab tiny_vocab() {
  TokenizerVocab v;
  v.model = "llama";
  using namespace detail::spm;
  const std::pair<const char*, std::int32_t> pieces[] = {
      {"<unk>", kTypeUnknown}, {"<s>", kTypeControl}, {"</s>", kTypeControl},
      {"\xE2\x96\x81", kTypeNormal},      // 3 "▁"
      {"a", kTypeNormal},                 // 4
      {"b", kTypeNormal},                 // 5
      {"\xE2\x96\x81" "a", kTypeNormal},  // 6 "▁a"
      {"ab", kTypeNormal},                // 7
      {"<tag>", kTypeUserDefined},        // 8
      {"bb", kTypeUnused},                // 9
  };
  for (const auto& [piece, type] : pieces) {
    v.tokens.push_back(piece);
    v.token_types.push_back(type);
    v.scores.push_back(0.0f);
  }
  v.scores[6] = -2.0f;  // "▁a"
  v.scores[7] = -1.0f;  // "ab" merges before "▁a"
  v.scores[8] = -100.0f;
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  return v;
}

TEST(TokenizerVocabTest, ScoresDecideTheMerges) {
  TokenizerVocab vocab = tiny_vocab();
  EXPECT_EQ(Tokenizer::from_vocab(vocab, kSource).encode("ab", false),
            (std::vector<Token>{3, 7}));  // "▁", "ab"
  vocab.scores[6] = 0.5f;  // now "▁a" merges first
  EXPECT_EQ(Tokenizer::from_vocab(vocab, kSource).encode("ab", false),
            (std::vector<Token>{6, 5}));  // "▁a", "b"
}

TEST(TokenizerVocabTest, WithoutBytePiecesUnknownCharactersBecomeUnk) {
  const Tokenizer tokenizer = Tokenizer::from_vocab(tiny_vocab(), kSource);
  EXPECT_EQ(tokenizer.encode("a c", false), (std::vector<Token>{6, 3, 0}));  // "▁a", "▁", <unk>
  EXPECT_EQ(tokenizer.encode("cd", false), (std::vector<Token>{3, 0}));  // unknowns run together
  EXPECT_EQ(tokenizer.decode(std::vector<Token>{6, 3, 0}), "a  \xE2\x81\x87 ");
}

TEST(TokenizerVocabTest, UserDefinedPiecesStayWholeAndUnusedOnesAreNotProduced) {
  const Tokenizer tokenizer = Tokenizer::from_vocab(tiny_vocab(), kSource);
  EXPECT_EQ(tokenizer.encode("a<tag>b", false), (std::vector<Token>{6, 8, 5}));
  EXPECT_EQ(tokenizer.encode("bb", false), (std::vector<Token>{3, 5, 5}));  // never "bb"
  EXPECT_EQ(tokenizer.decode(std::vector<Token>{6, 8, 9}), "a<tag>bb");
}

// llama.cpp's "undefined" token type (0) reads as normal, as llama.cpp's SPM tokenizer takes it.
TEST(TokenizerVocabTest, UndefinedTypeReadsAsNormal) {
  TokenizerVocab vocab = tiny_vocab();
  vocab.token_types[7] = 0;  // "ab"
  const Tokenizer tokenizer = Tokenizer::from_vocab(vocab, kSource);
  EXPECT_EQ(tokenizer.encode("ab", false), (std::vector<Token>{3, 7}));
  EXPECT_EQ(tokenizer.decode(std::vector<Token>{3, 7}), "ab");
}

// ---------------------------------------------------------------------------------------------
// Refusals: each a kvlm::Error(kTokenizer) that names the source and the problem.

void expect_refused(const TokenizerVocab& vocab, const std::string& problem) {
  const std::optional<Error> error = error_from([&] { Tokenizer::from_vocab(vocab, kSource); });
  ASSERT_TRUE(error.has_value()) << "accepted; expected: " << problem;
  EXPECT_EQ(error->code(), ErrorCode::kTokenizer) << error->what();
  EXPECT_NE(std::string(error->what()).find(kSource), std::string::npos) << error->what();
  EXPECT_NE(std::string(error->what()).find(problem), std::string::npos)
      << "message: " << error->what() << "\nexpected to contain: " << problem;
}

TEST(TokenizerVocabTest, RefusesOtherTokenizerModels) {
  for (const char* model : {"gpt2", "bert", "t5", "rwkv", ""}) {
    TokenizerVocab vocab = tiny_vocab();
    vocab.model = model;
    expect_refused(vocab, "tokenizer model '" + std::string(model) + "' is not supported");
  }
}

TEST(TokenizerVocabTest, RefusesMismatchedArrays) {
  TokenizerVocab vocab = tiny_vocab();
  vocab.scores.pop_back();
  expect_refused(vocab, "10 tokens but 9 scores and 10 token types");
  vocab = tiny_vocab();
  vocab.token_types.push_back(1);
  expect_refused(vocab, "10 tokens but 10 scores and 11 token types");
  expect_refused(TokenizerVocab{"llama", {}, {}, {}}, "the vocabulary has no tokens");
}

TEST(TokenizerVocabTest, RefusesBadPieces) {
  TokenizerVocab vocab = tiny_vocab();
  vocab.tokens[5] = "";
  expect_refused(vocab, "token 5 is empty");
  vocab = tiny_vocab();
  vocab.tokens[5] = std::string("b\0c", 3);
  expect_refused(vocab, "token 5 contains a NUL byte");
  vocab = tiny_vocab();
  vocab.tokens[7] = "a";
  expect_refused(vocab, "tokens 4 and 7 are both 'a'");
  vocab = tiny_vocab();
  vocab.token_types[5] = 7;
  expect_refused(vocab, "token 5 ('b') has type 7, not one of 0 (undefined), 1 (normal) .. 6");
  vocab.token_types[5] = -1;
  expect_refused(vocab, "token 5 ('b') has type -1");
  vocab = tiny_vocab();
  vocab.scores[5] = std::numeric_limits<float>::quiet_NaN();
  expect_refused(vocab, "token 5 ('b') has a NaN score");
}

TEST(TokenizerVocabTest, RefusesAnUnknownIdThatIsNotTheUnknownPiece) {
  TokenizerVocab vocab = tiny_vocab();
  vocab.unk = 4;
  expect_refused(vocab, "unknown-token id 4 is 'a' of type 1, not the token of type 2 (unknown), "
                        "token 0 ('<unk>')");
  vocab = tiny_vocab();
  vocab.token_types[0] = detail::spm::kTypeControl;
  expect_refused(vocab, "no token has type 2 (unknown)");
  vocab = tiny_vocab();
  vocab.token_types[4] = detail::spm::kTypeUnknown;
  expect_refused(vocab, "tokens 0 and 4 both have type 2 (unknown)");
  vocab = tiny_vocab();
  vocab.unk = 10;
  expect_refused(vocab, "unknown-token id 10 is outside [0, 10)");
}

TEST(TokenizerVocabTest, RefusesSpecialIdsOutsideTheVocab) {
  TokenizerVocab vocab = tiny_vocab();
  vocab.bos = 10;
  expect_refused(vocab, "BOS id 10 is outside [0, 10)");
  vocab = tiny_vocab();
  vocab.eos = -2;
  expect_refused(vocab, "EOS id -2 is outside [0, 10)");
  vocab = tiny_vocab();
  vocab.pad = 42;
  expect_refused(vocab, "padding id 42 is outside [0, 10)");
  vocab = tiny_vocab();
  vocab.bos = -1;
  expect_refused(vocab, "add_bos_token is set but there is no BOS token");
  vocab = tiny_vocab();
  vocab.add_eos = true;
  vocab.eos = -1;
  expect_refused(vocab, "add_eos_token is set but there is no EOS token");
}

TEST(TokenizerVocabTest, RefusesBytePiecesNotSpelledOrNotAll256) {
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const TokenizerVocab good = vocab_from_model(model, true);
  ASSERT_EQ(good.tokens[3 + 0x41], "<0x41>");
  for (const char* spelling : {"<0x4a>", "<0x4G>", "0x41", "<0x041>", "<41>"}) {
    TokenizerVocab vocab = good;
    vocab.tokens[3 + 0x4A] = spelling;
    expect_refused(vocab, "token 77 ('" + std::string(spelling) +
                              "') has type 6 (byte) but is not spelled <0xNN>");
  }
  TokenizerVocab vocab = good;
  vocab.token_types[3 + 0x41] = detail::spm::kTypeNormal;
  expect_refused(vocab, "the vocabulary has byte tokens but not <0x41>");
  vocab = good;
  vocab.tokens[3 + 0x41] = "<0x42>";
  expect_refused(vocab, "tokens 68 and 69 are both '<0x42>'");
}

TEST(TokenizerVocabTest, RefusalLeavesNothingBehindAndAGoodVocabStillLoads) {
  TokenizerVocab vocab = tiny_vocab();
  vocab.model = "gpt2";
  EXPECT_THROW(Tokenizer::from_vocab(vocab, kSource), Error);
  vocab.model = "llama";
  const Tokenizer tokenizer = Tokenizer::from_vocab(vocab, kSource);
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("ab a", true)), "ab a");
}

}  // namespace
}  // namespace kvlm
