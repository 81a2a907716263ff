#pragma once
// Shared by the tokenizer tests: llama.cpp's tokenizer test vectors, a seeded generator of text
// that stresses SentencePiece's rules, a TokenizerVocab read back from a .model file through
// SentencePiece's own API, and the comparison of two tokenizers over many texts.

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvlm/loaders/model_file.hpp"
#include "kvlm/tokenizer.hpp"

namespace kvlm::test {

inline std::string read_binary_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

inline std::string ids_to_string(const std::vector<Token>& tokens) {
  std::string s;
  for (Token t : tokens) s += std::to_string(t) + " ";
  return s;
}

// llama.cpp's tokenizer test vectors (ggml-vocab-*.gguf.inp / .out): `texts[i]` encodes, without
// BOS, to `ids[i]`.
struct VocabTestCases {
  std::vector<std::string> texts;
  std::vector<std::vector<Token>> ids;
};

// The .inp file holds each string followed by "\n__ggml_vocab_test__\n" (so a string may itself
// end in newlines, and nothing follows the last separator); the .out file one line of
// space-separated ids per string.
inline VocabTestCases read_vocab_test_cases(const std::string& inp_path,
                                            const std::string& out_path) {
  VocabTestCases cases;
  const std::string separator = "\n__ggml_vocab_test__\n";
  const std::string all = read_binary_file(inp_path);
  std::size_t begin = 0;
  std::size_t end = all.find(separator);
  while (end != std::string::npos) {
    cases.texts.push_back(all.substr(begin, end - begin));
    begin = end + separator.size();
    end = all.find(separator, begin);
  }
  EXPECT_EQ(begin, all.size()) << "text after the last separator of " << inp_path;

  std::istringstream lines(read_binary_file(out_path));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    cases.ids.emplace_back(std::istream_iterator<Token>(ids), std::istream_iterator<Token>());
  }
  return cases;
}

// llama.cpp's 46 test strings encode (without BOS) to its expected ids.
inline void expect_encodes_vocab_test_cases(const Tokenizer& tokenizer, const std::string& inp_path,
                                            const std::string& out_path) {
  const VocabTestCases cases = read_vocab_test_cases(inp_path, out_path);
  ASSERT_EQ(cases.texts.size(), 46u);
  ASSERT_EQ(cases.ids.size(), cases.texts.size());
  for (std::size_t i = 0; i < cases.texts.size(); ++i) {
    EXPECT_EQ(tokenizer.encode(cases.texts[i], false), cases.ids[i])
        << "string " << i << ": \"" << cases.texts[i] << "\"";
  }
}

inline void append_utf8(std::string& s, std::uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// `n` texts of well-formed UTF-8 from `seed`. The first is empty; every tenth starts with spaces
// and every tenth (offset by one) ends with them. Each text joins 0..12 fragments of one kind:
// English words (some with a leading space, some 20..80 letters long), digits, punctuation, runs
// of spaces, newlines/tabs/CR/VT/FF, Hangul, CJK and kana, emoji (with ZWJ and variation
// selectors), accented Latin, Cyrillic/Greek/Arabic/Hebrew/Devanagari/Thai, combining marks and
// Unicode spaces, C0 and C1 control characters (NUL included), and code points no vocabulary has
// (private use, planes 2..16), which only byte fallback can spell.
inline std::vector<std::string> generated_texts(std::uint32_t seed, std::size_t n) {
  std::mt19937 rng(seed);
  auto uniform = [&rng](std::uint32_t lo, std::uint32_t hi) {
    return std::uniform_int_distribution<std::uint32_t>(lo, hi)(rng);
  };
  auto code_points = [&](std::string& s, std::uint32_t lo, std::uint32_t hi, std::uint32_t count) {
    for (std::uint32_t i = 0; i < count; ++i) append_utf8(s, uniform(lo, hi));
  };
  const char* const words[] = {"the", "Once", "upon", "a", "time", "Hello", "world", "don't",
                               "I'm", "naïve", "café", "Straße", "über", "Lily", "said"};
  const char* const breaks[] = {"\n", "\t", "\r\n", "\r", "\v", "\f", "\n\n", "\t\t"};
  const char* const punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  const std::uint32_t scripts[][2] = {{0x0400, 0x04FF}, {0x0370, 0x03FF}, {0x0600, 0x06FF},
                                      {0x05D0, 0x05EA}, {0x0900, 0x097F}, {0x0E01, 0x0E5B}};
  const std::uint32_t unicode_spaces[] = {0x00A0, 0x2009, 0x200B, 0x3000, 0x2581, 0xFEFF};

  std::vector<std::string> texts(n);
  for (std::size_t t = 1; t < n; ++t) {
    std::string& s = texts[t];
    if (t % 10 == 0) s.append(uniform(1, 3), ' ');
    const std::uint32_t n_fragments = uniform(0, 12);
    for (std::uint32_t f = 0; f < n_fragments; ++f) {
      switch (uniform(0, 15)) {
        case 0:
          s += words[uniform(0, std::size(words) - 1)];
          break;
        case 1:
          s += ' ';
          s += words[uniform(0, std::size(words) - 1)];
          break;
        case 2:
          for (std::uint32_t i = uniform(20, 80); i > 0; --i) {
            s += static_cast<char>(uniform(0, 3) == 0 ? uniform('A', 'Z') : uniform('a', 'z'));
          }
          break;
        case 3:
          for (std::uint32_t i = uniform(1, 12); i > 0; --i) {
            s += static_cast<char>(uniform('0', '9'));
          }
          break;
        case 4:
          for (std::uint32_t i = uniform(1, 3); i > 0; --i) s += punctuation[uniform(0, 31)];
          break;
        case 5:
          s.append(uniform(1, 6), ' ');
          break;
        case 6:
          for (std::uint32_t i = uniform(1, 4); i > 0; --i) s += breaks[uniform(0, 7)];
          break;
        case 7:
          code_points(s, 0xAC00, 0xD7A3, uniform(1, 6));  // Hangul syllables
          break;
        case 8:
          code_points(s, 0x4E00, 0x9FFF, uniform(1, 4));  // CJK ideographs
          code_points(s, 0x3041, 0x30FF, uniform(0, 3));  // hiragana, katakana
          break;
        case 9:
          code_points(s, 0x1F300, 0x1FAFF, 1);
          if (uniform(0, 2) == 0) append_utf8(s, 0xFE0F);
          if (uniform(0, 2) == 0) {
            append_utf8(s, 0x200D);  // zero-width joiner
            code_points(s, 0x1F466, 0x1F469, 1);
          }
          break;
        case 10:
          for (std::uint32_t i = uniform(1, 6); i > 0; --i) {
            if (uniform(0, 1) == 0) {
              append_utf8(s, uniform(0xC0, 0x24F));
            } else {
              s += static_cast<char>(uniform('a', 'z'));
            }
          }
          break;
        case 11: {
          const auto& range = scripts[uniform(0, std::size(scripts) - 1)];
          code_points(s, range[0], range[1], uniform(1, 5));
          break;
        }
        case 12:
          s += static_cast<char>(uniform('a', 'z'));
          code_points(s, 0x0300, 0x036F, uniform(1, 2));  // combining marks
          append_utf8(s, unicode_spaces[uniform(0, std::size(unicode_spaces) - 1)]);
          break;
        case 13:
          for (std::uint32_t i = uniform(1, 3); i > 0; --i) {
            const std::uint32_t c = uniform(0, 0x40);  // 0x00..0x1F, 0x7F, 0x80..0x9F
            append_utf8(s, c < 0x20 ? c : (c == 0x20 ? 0x7F : 0x80 + (c - 0x21)));
          }
          break;
        case 14:
          if (uniform(0, 1) == 0) {
            code_points(s, 0xE000, 0xF8FF, 1);  // private use
          } else {
            code_points(s, 0x20000, 0x10FFFF, uniform(1, 2));  // planes 2..16
          }
          break;
        default:
          s += ' ';
          break;
      }
    }
    if (t % 10 == 1) s.append(uniform(1, 3), ' ');
  }
  return texts;
}

// SentencePiece's space symbol U+2581 '▁', which escapes ' ' in pieces.
inline const std::string kSpaceSymbol = "\xE2\x96\x81";

// `text` as SentencePiece decodes its encoding (without whitespace removal): a '▁' in the input is
// taken for an escaped space, so it comes back as ' '.
inline std::string with_space_symbols_as_spaces(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    if (text.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      out += ' ';
      i += kSpaceSymbol.size();
    } else {
      out += text[i++];
    }
  }
  return out;
}

// `text` as SentencePiece's remove_extra_whitespaces leaves it: leading ' ' dropped, a ' ' after
// a ' ' dropped, then trailing ' ' and '▁' dropped (it trims the escaped text, where an input '▁'
// looks like an escaped ' '). Tabs, newlines and other spaces stay.
inline std::string without_extra_spaces(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += c;
  }
  for (bool trimmed = true; trimmed;) {
    trimmed = false;
    if (!out.empty() && out.back() == ' ') {
      out.pop_back();
      trimmed = true;
    } else if (out.size() >= kSpaceSymbol.size() &&
               out.compare(out.size() - kSpaceSymbol.size(), kSpaceSymbol.size(),
                           kSpaceSymbol) == 0) {
      out.resize(out.size() - kSpaceSymbol.size());
      trimmed = true;
    }
  }
  return out;
}

// What a GGUF file converted from the .model at `path` says, read through SentencePiece's own
// API rather than the proto. SentencePiece 0.1.97 cannot tell a user-defined piece from a normal
// one, so both read as normal; neither tokenizer.model nor tok512.model has one. Both models add a
// dummy prefix; `remove_extra_whitespaces` is the normalizer flag to claim (a GGUF file carries
// it only when the converter writes it, else false).
inline TokenizerVocab vocab_from_model(const std::string& path, bool remove_extra_whitespaces) {
  sentencepiece::SentencePieceProcessor processor;
  const auto status = processor.Load(path);
  EXPECT_TRUE(status.ok()) << path << ": " << status.ToString();
  TokenizerVocab vocab;
  vocab.model = "llama";
  for (int id = 0; id < processor.GetPieceSize(); ++id) {
    vocab.tokens.push_back(processor.IdToPiece(id));
    vocab.scores.push_back(processor.GetScore(id));
    std::int32_t type = detail::spm::kTypeNormal;
    if (processor.IsUnknown(id)) type = detail::spm::kTypeUnknown;
    if (processor.IsControl(id)) type = detail::spm::kTypeControl;
    if (processor.IsUnused(id)) type = detail::spm::kTypeUnused;
    if (processor.IsByte(id)) type = detail::spm::kTypeByte;
    vocab.token_types.push_back(type);
  }
  vocab.unk = processor.unk_id();
  vocab.bos = processor.bos_id();
  vocab.eos = processor.eos_id();
  vocab.pad = processor.pad_id();
  vocab.add_space_prefix = true;
  vocab.remove_extra_whitespaces = remove_extra_whitespaces;
  return vocab;
}

// What `check` says about one text, checked on every text of a property test.
struct TextComparison {
  std::size_t n_texts = 0;
  std::size_t n_failures = 0;
  std::string first_failures;        // the first few, for the message
  std::vector<std::size_t> id_uses;  // [vocab_size] how often each id came out of encode

  void fail(std::size_t index, const std::string& text, const std::string& what) {
    if (++n_failures <= 5) {
      first_failures += "text " + std::to_string(index) + " \"" + text + "\": " + what + "\n";
    }
  }
};

// For each text: `built` encodes it to the ids `reference` does, and decodes those ids to the
// same text; with `round_trips`, that text is the input itself (with_space_symbols_as_spaces).
// Every tenth text also streams
// through a StreamingDecoder on `built` to decode's text.
inline TextComparison compare_tokenizers(const Tokenizer& built, const Tokenizer& reference,
                                         const std::vector<std::string>& texts, bool round_trips) {
  TextComparison result;
  result.id_uses.assign(static_cast<std::size_t>(built.vocab_size()), 0);
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::string& text = texts[i];
    ++result.n_texts;
    const std::vector<Token> ids = built.encode(text, false);
    const std::vector<Token> expected = reference.encode(text, false);
    for (Token t : ids) ++result.id_uses[static_cast<std::size_t>(t)];
    if (ids != expected) {
      result.fail(i, text, "ids " + ids_to_string(ids) + "!= " + ids_to_string(expected));
      continue;
    }
    const std::string decoded = built.decode(ids);
    if (decoded != reference.decode(ids)) {
      result.fail(i, text, "decodes as \"" + decoded + "\", SentencePiece's model as \"" +
                               reference.decode(ids) + "\"");
    } else if (round_trips && decoded != with_space_symbols_as_spaces(text)) {
      result.fail(i, text, "decodes back as \"" + decoded + "\"");
    }
    if (i % 10 == 0) {
      StreamingDecoder decoder(built);
      std::string streamed;
      for (Token t : ids) decoder.push(t, streamed);
      decoder.flush(streamed);
      if (streamed != decoded) result.fail(i, text, "streams as \"" + streamed + "\"");
    }
  }
  return result;
}

// `built` and `reference` agree on every text (compare_tokenizers), and the texts reach many
// pieces, byte fallback for most byte values that are not printable ASCII, and never <unk>.
// `byte0`: the id of <0x00>, followed by the other 255 (3 in tok512 and Llama 2).
inline void expect_tokenizers_agree(const Tokenizer& built, const Tokenizer& reference,
                                    const std::vector<std::string>& texts, bool round_trips,
                                    std::size_t byte0 = 3) {
  const TextComparison result = compare_tokenizers(built, reference, texts, round_trips);
  EXPECT_EQ(result.n_texts, texts.size());
  EXPECT_EQ(result.n_failures, 0u) << result.first_failures;
  std::size_t n_ids = 0;
  std::size_t n_byte_values = 0;
  for (std::size_t id = 0; id < result.id_uses.size(); ++id) {
    n_ids += result.id_uses[id] > 0 ? 1 : 0;
    n_byte_values += (id >= byte0 && id < byte0 + 256 && result.id_uses[id] > 0) ? 1 : 0;
  }
  if (built.vocab_size() > 0 && texts.size() >= 1000) {
    EXPECT_EQ(result.id_uses[0], 0u) << "<unk> from a byte-fallback model";
    EXPECT_GE(n_byte_values, 120u);  // of 33 C0/DEL + 64 continuation + 51 lead bytes
    EXPECT_GE(n_ids, std::min<std::size_t>(result.id_uses.size() / 2, 5000));
  }
}

// `without_removal` is `with_removal`'s vocabulary with remove_extra_whitespaces off (as llama.cpp
// reads a GGUF file that does not set it). On texts that whitespace removal leaves alone they
// agree (compare_tokenizers, round trips). Every other text (a leading, trailing or doubled ' ',
// or a trailing '▁') gets different ids from them: exactly those `with_removal` gives, once the
// extra spaces are removed from the text; and it decodes back to itself. Both kinds must be
// common in `texts`.
inline void expect_differ_only_on_extra_spaces(const Tokenizer& without_removal,
                                               const Tokenizer& with_removal,
                                               const std::vector<std::string>& texts) {
  std::vector<std::string> plain;
  std::size_t n_extra = 0;
  std::size_t n_failures = 0;
  for (const std::string& text : texts) {
    const std::string shortened = without_extra_spaces(text);
    if (shortened == text) {
      plain.push_back(text);
      continue;
    }
    ++n_extra;
    const std::vector<Token> ids = without_removal.encode(text, false);
    const std::vector<Token> removed_ids = with_removal.encode(text, false);
    const bool ok = ids != removed_ids && without_removal.encode(shortened, false) == removed_ids &&
                    without_removal.decode(ids) == with_space_symbols_as_spaces(text);
    if (!ok && ++n_failures <= 5) {
      ADD_FAILURE() << "\"" << text << "\": without removal " << ids_to_string(ids)
                    << "with removal " << ids_to_string(removed_ids);
    }
  }
  EXPECT_EQ(n_failures, 0u);
  EXPECT_GT(n_extra, texts.size() / 4);
  EXPECT_GT(plain.size(), texts.size() / 4);
  const TextComparison result =
      compare_tokenizers(without_removal, with_removal, plain, /*round_trips=*/true);
  EXPECT_EQ(result.n_failures, 0u) << result.first_failures;
}

}  // namespace kvlm::test
