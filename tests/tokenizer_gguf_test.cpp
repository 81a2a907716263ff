// Tokenizer::from_vocab on the vocabularies real GGUF files embed (read by kvlm's GGUF reader),
// against llama.cpp's test vectors and against the SentencePiece .model files they were converted
// from.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kvlm/gguf/reader.hpp"
#include "kvlm/loaders/gguf.hpp"
#include "kvlm/loaders/model_file.hpp"
#include "kvlm/tokenizer.hpp"
#include "models.hpp"
#include "tokenizer_cases.hpp"

namespace kvlm {
namespace {

constexpr std::size_t kPropertyTexts = 10000;
constexpr std::uint32_t kPropertySeed = 20240923;

TokenizerVocab gguf_vocab(const std::string& path) {
  return gguf::read_vocab(gguf::GgufFile::open(path));
}

// The GGUF vocabulary holds the .model's pieces, scores (bit for bit), types and special ids.
void expect_same_vocab(const TokenizerVocab& gguf, const TokenizerVocab& model) {
  EXPECT_EQ(gguf.model, "llama");
  ASSERT_EQ(gguf.tokens.size(), model.tokens.size());
  ASSERT_EQ(gguf.scores.size(), model.scores.size());
  ASSERT_EQ(gguf.token_types.size(), model.token_types.size());
  int n_mismatches = 0;
  for (std::size_t id = 0; id < gguf.tokens.size() && n_mismatches < 5; ++id) {
    const bool same = gguf.tokens[id] == model.tokens[id] &&
                      std::memcmp(&gguf.scores[id], &model.scores[id], sizeof(float)) == 0 &&
                      gguf.token_types[id] == model.token_types[id];
    n_mismatches += same ? 0 : 1;
    EXPECT_TRUE(same) << "id " << id << ": '" << gguf.tokens[id] << "' " << gguf.scores[id]
                      << " type " << gguf.token_types[id] << " vs '" << model.tokens[id] << "' "
                      << model.scores[id] << " type " << model.token_types[id];
  }
  EXPECT_EQ(gguf.unk, model.unk);
  EXPECT_EQ(gguf.bos, model.bos);
  EXPECT_EQ(gguf.eos, model.eos);
  EXPECT_EQ(gguf.pad, model.pad);
  EXPECT_EQ(gguf.add_space_prefix, model.add_space_prefix);
}

// ggml-vocab-llama-spm.gguf: llama.cpp's vocab-only GGUF of Llama 2's tokenizer.

TEST(TokenizerGgufTest, LlamaSpmVocabMatchesLlamaCppVocabVectors) {
  KVLM_REQUIRE_MODEL(path, "llama-spm-vocab/ggml-vocab-llama-spm.gguf");
  KVLM_REQUIRE_MODEL(inp, "llama-spm-vocab/ggml-vocab-llama-spm.gguf.inp");
  KVLM_REQUIRE_MODEL(out, "llama-spm-vocab/ggml-vocab-llama-spm.gguf.out");
  const Tokenizer tokenizer = Tokenizer::from_vocab(gguf_vocab(path), path);
  EXPECT_EQ(tokenizer.vocab_size(), 32000);
  EXPECT_EQ(tokenizer.bos(), 1);
  EXPECT_EQ(tokenizer.eos(), 2);
  EXPECT_TRUE(tokenizer.add_bos());
  EXPECT_FALSE(tokenizer.add_eos());
  test::expect_encodes_vocab_test_cases(tokenizer, inp, out);
}

TEST(TokenizerGgufTest, LlamaSpmVocabIsTokenizerModelsVocab) {
  KVLM_REQUIRE_MODEL(path, "llama-spm-vocab/ggml-vocab-llama-spm.gguf");
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  const TokenizerVocab vocab = gguf_vocab(path);
  expect_same_vocab(vocab, test::vocab_from_model(model, false));
  EXPECT_FALSE(vocab.remove_extra_whitespaces);  // as tokenizer.model's normalizer
}

TEST(TokenizerGgufTest, LlamaSpmVocabMatchesTokenizerModelOnGeneratedText) {
  KVLM_REQUIRE_MODEL(path, "llama-spm-vocab/ggml-vocab-llama-spm.gguf");
  KVLM_REQUIRE_MODEL(model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer built = Tokenizer::from_vocab(gguf_vocab(path), path);
  const Tokenizer reference = Tokenizer::load(model);
  test::expect_tokenizers_agree(built, reference,
                                test::generated_texts(kPropertySeed, kPropertyTexts),
                                /*round_trips=*/true);
}

// stories260K-F32.gguf: llama.cpp's converter wrote tok512's pieces, scores and types but no
// tokenizer.ggml.remove_extra_whitespaces, so the file says false where tok512.model says true.
// That flag is the only difference: with it the two tokenize alike on every text; without it
// they differ exactly on the texts whitespace removal changes.

TEST(TokenizerGgufTest, Stories260KVocabIsTok512sVocabWithoutWhitespaceRemoval) {
  KVLM_REQUIRE_MODEL(path, "stories260K/stories260K-F32.gguf");
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const TokenizerVocab vocab = gguf_vocab(path);
  expect_same_vocab(vocab, test::vocab_from_model(model, true));
  EXPECT_FALSE(vocab.remove_extra_whitespaces);
  EXPECT_TRUE(vocab.add_bos);
  EXPECT_FALSE(vocab.add_eos);
  EXPECT_EQ(vocab.pad, -1);  // the file says 0xFFFFFFFF
}

TEST(TokenizerGgufTest, Stories260KVocabDiffersFromTok512OnlyOnExtraSpaces) {
  KVLM_REQUIRE_MODEL(path, "stories260K/stories260K-F32.gguf");
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  const Tokenizer built = Tokenizer::from_vocab(gguf_vocab(path), path);
  const Tokenizer reference = Tokenizer::load(model);
  test::expect_differ_only_on_extra_spaces(built, reference,
                                           test::generated_texts(kPropertySeed, kPropertyTexts));
  EXPECT_EQ(built.encode("Once upon a time", true), (std::vector<Token>{1, 403, 407, 261, 378}));
}

TEST(TokenizerGgufTest, Stories260KVocabWithWhitespaceRemovalMatchesTok512) {
  KVLM_REQUIRE_MODEL(path, "stories260K/stories260K-F32.gguf");
  KVLM_REQUIRE_MODEL(model, "stories260K/tok512.model");
  TokenizerVocab vocab = gguf_vocab(path);
  vocab.remove_extra_whitespaces = true;
  const Tokenizer built = Tokenizer::from_vocab(vocab, path);
  const Tokenizer reference = Tokenizer::load(model);
  test::expect_tokenizers_agree(built, reference,
                                test::generated_texts(kPropertySeed, kPropertyTexts),
                                /*round_trips=*/false);
}

}  // namespace
}  // namespace kvlm
