// The llama2.c loader: the configs of the shared model files, the "version 1" (ak42) layout
// against the legacy one, a separate classifier, and bad input of every kind, each a kvlm::Error
// with the right code and a message naming the problem. Files the tests write live in a fresh
// temporary directory that is removed afterwards.

#include "kvlm/loaders/llama2c.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>  // mkdtemp

#include <climits>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "kvlm/error.hpp"
#include "kvlm/model.hpp"
#include "kvlm/session.hpp"
#include "kvlm/tensor.hpp"
#include "expect_error.hpp"
#include "models.hpp"

namespace kvlm {
namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
void append_pod(std::string& out, T value) {
  char raw[sizeof(T)];
  std::memcpy(raw, &value, sizeof(T));
  out.append(raw, sizeof(T));
}

void append_weight(std::string& out, const WeightView& w) {
  out.append(static_cast<const char*>(w.data), w.byte_size());
}

// The 7 int32 of a llama2.c header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
// (negative: separate classifier), max_seq_len.
struct Header {
  std::int32_t dim = 64, hidden_dim = 172, n_layers = 5, n_heads = 8, n_kv_heads = 4;
  std::int32_t vocab = 512, max_seq_len = 512;

  std::string bytes() const {
    std::string out;
    for (std::int32_t v : {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, max_seq_len}) {
      append_pod(out, v);
    }
    return out;
  }
};

using test::throws_error;

class Llama2c : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir();
    if (pattern.empty() || pattern.back() != '/') pattern += '/';
    pattern += "kvlm_llama2c_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "cannot create a directory from " << pattern;
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  // Writes `bytes` to a new file in the test's directory and returns its path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string path = dir_ + "/" + name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << "cannot write " << path;
    return path;
  }

  std::string dir_;
};

void expect_config(const ModelConfig& c, int dim, int hidden_dim, int n_layers, int n_heads,
                   int n_kv_heads, int head_dim, int vocab_size, int max_seq_len, bool shared) {
  EXPECT_EQ(c.dim, dim);
  EXPECT_EQ(c.hidden_dim, hidden_dim);
  EXPECT_EQ(c.n_layers, n_layers);
  EXPECT_EQ(c.n_heads, n_heads);
  EXPECT_EQ(c.n_kv_heads, n_kv_heads);
  EXPECT_EQ(c.head_dim, head_dim);
  EXPECT_EQ(c.vocab_size, vocab_size);
  EXPECT_EQ(c.max_seq_len, max_seq_len);
  EXPECT_EQ(c.shared_classifier, shared);
}

// --- the shared model files -------------------------------------------------------------------

TEST_F(Llama2c, Stories260KConfigIsTheReadmes) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const ModelFile file = load_llama2c(bin);
  expect_config(file.config, 64, 172, 5, 8, 4, 8, 512, 512, true);
  EXPECT_EQ(file.config.group(), 2);
  EXPECT_EQ(file.weights.size(), 1u + 9u * 5u + 1u);  // embedding, 9 per layer, final norm
  EXPECT_EQ(file.weights.count("output.weight"), 0u);
  const WeightView& wk = file.weights.at("blk.4.attn_k.weight");
  EXPECT_EQ(wk.rows, 4 * 8);
  EXPECT_EQ(wk.cols, 64);
  const WeightView& down = file.weights.at("blk.0.ffn_down.weight");
  EXPECT_EQ(down.rows, 64);
  EXPECT_EQ(down.cols, 172);
  // Legacy order: the embedding table, then the attention norms right after it.
  EXPECT_EQ(static_cast<const std::byte*>(file.weights.at("blk.0.attn_norm.weight").data) -
                static_cast<const std::byte*>(file.weights.at("token_embd.weight").data),
            512 * 64 * 4);
}

TEST_F(Llama2c, TinyGqaConfigIsTheReadmes) {
  KVLM_REQUIRE_MODEL(bin, "tinygqa/tinygqa.bin");
  const ModelFile file = load_llama2c(bin);
  expect_config(file.config, 256, 768, 4, 8, 2, 32, 512, 512, true);
  EXPECT_EQ(file.config.group(), 4);
  EXPECT_EQ(file.weights.at("blk.3.attn_v.weight").rows, 2 * 32);
}

// --- version 1 (ak42) -----------------------------------------------------------------------

// A version-1 file holding the tensors of `legacy`: magic, version 1, the 7 int32, the shared
// flag, zero padding to 256 bytes, then norms, embedding, the stacks, and the classifier if any.
std::string write_v1(const ModelFile& legacy, const WeightView* classifier) {
  const ModelConfig& c = legacy.config;
  std::string out;
  append_pod(out, std::uint32_t{0x616b3432});
  append_pod(out, std::int32_t{1});
  for (std::int32_t v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
                         c.max_seq_len}) {
    append_pod(out, v);
  }
  append_pod(out, static_cast<std::uint8_t>(classifier == nullptr ? 1 : 0));
  out.resize(256, '\0');
  auto stack = [&](const char* suffix) {
    for (int l = 0; l < c.n_layers; ++l) {
      append_weight(out, legacy.weights.at("blk." + std::to_string(l) + "." + suffix));
    }
  };
  stack("attn_norm.weight");
  stack("ffn_norm.weight");
  append_weight(out, legacy.weights.at("output_norm.weight"));
  append_weight(out, legacy.weights.at("token_embd.weight"));
  stack("attn_q.weight");
  stack("attn_k.weight");
  stack("attn_v.weight");
  stack("attn_output.weight");
  stack("ffn_gate.weight");  // w1
  stack("ffn_down.weight");  // w2
  stack("ffn_up.weight");    // w3
  if (classifier != nullptr) append_weight(out, *classifier);
  return out;
}

void expect_same_tensors(const ModelFile& a, const ModelFile& b) {
  ASSERT_EQ(a.weights.size(), b.weights.size());
  for (const auto& [name, wa] : a.weights) {
    const auto it = b.weights.find(name);
    ASSERT_NE(it, b.weights.end()) << name;
    const WeightView& wb = it->second;
    EXPECT_EQ(wa.dtype, wb.dtype) << name;
    ASSERT_EQ(wa.rows, wb.rows) << name;
    ASSERT_EQ(wa.cols, wb.cols) << name;
    EXPECT_NE(wa.data, wb.data) << name;  // really read from the other file
    EXPECT_EQ(std::memcmp(wa.data, wb.data, wa.byte_size()), 0) << name << " differs";
  }
}

TEST_F(Llama2c, Version1IsByteIdenticalToLegacyAndGivesTheSameLogits) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const ModelFile legacy = load_llama2c(bin);
  const std::string v1_path = write("stories260K-v1.bin", write_v1(legacy, nullptr));
  const ModelFile v1 = load_llama2c(v1_path);
  expect_config(v1.config, 64, 172, 5, 8, 4, 8, 512, 512, true);
  expect_same_tensors(legacy, v1);

  const std::vector<Token> tokens = {1, 403, 407, 261, 378, 300, 271, 274, 291, 402,
                                     280, 410, 266, 285, 322, 265, 309, 270, 344, 2};
  const std::int64_t n = static_cast<std::int64_t>(tokens.size());
  Session a(Model::load(bin), SessionOptions{});
  Session b(Model::load(v1_path), SessionOptions{});
  Tensor<float> la({n, 512});
  Tensor<float> lb({n, 512});
  a.evaluate(tokens, la.view());
  b.evaluate(tokens, lb.view());
  // The same floats through the same code: equal, not merely close.
  EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.byte_size()), 0);
  const Span<const float> sa = a.step(17);  // a decode step (matrix-vector products) too
  const Span<const float> sb = b.step(17);
  EXPECT_EQ(std::vector<float>(sa.begin(), sa.end()), std::vector<float>(sb.begin(), sb.end()));
}

TEST_F(Llama2c, Version1WithSeparateClassifier) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const ModelFile legacy = load_llama2c(bin);
  const WeightView classifier = legacy.weights.at("token_embd.weight");
  const std::string bytes = write_v1(legacy, &classifier);
  const ModelFile v1 = load_llama2c(write("separate-v1.bin", bytes));
  EXPECT_FALSE(v1.config.shared_classifier);
  const WeightView& out = v1.weights.at("output.weight");
  EXPECT_EQ(out.rows, 512);
  EXPECT_EQ(out.cols, 64);
  // It is the last tensor of the file.
  const std::size_t tail = static_cast<std::size_t>(512 * 64) * sizeof(float);
  EXPECT_EQ(std::memcmp(out.data, bytes.data() + bytes.size() - tail, tail), 0);
}

TEST_F(Llama2c, Version2IsRejected) {
  std::string bytes;
  append_pod(bytes, std::uint32_t{0x616b3432});
  append_pod(bytes, std::int32_t{2});
  bytes += Header{}.bytes();
  bytes.resize(4096, '\0');
  const std::string path = write("v2.bin", bytes);
  EXPECT_TRUE(throws_error([&] { load_llama2c(path); }, ErrorCode::kFormat,
                           {path, "version 2"}));
}

TEST_F(Llama2c, Version1ShorterThanItsHeader) {
  std::string bytes;
  append_pod(bytes, std::uint32_t{0x616b3432});
  append_pod(bytes, std::int32_t{1});
  bytes += Header{}.bytes();  // 36 bytes: a legacy header would fit, a v1 header does not
  const std::string path = write("short-v1.bin", bytes);
  EXPECT_TRUE(throws_error([&] { load_llama2c(path); }, ErrorCode::kFormat,
                           {path, "36 bytes", "256"}));
}

// --- legacy with a separate classifier ----------------------------------------------------------

TEST_F(Llama2c, LegacyWithNegativeVocabHasSeparateClassifier) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const std::string original = read_bytes(bin);
  const ModelFile legacy = load_llama2c(bin);
  Header h;
  h.vocab = -512;
  // The same header but for the sign, the same tensors and RoPE tables, then a classifier: the
  // embedding table's rows in reverse order, so it differs from the embedding.
  std::string bytes = h.bytes() + original.substr(28);
  const WeightView& embd = legacy.weights.at("token_embd.weight");
  for (std::int64_t r = embd.rows - 1; r >= 0; --r) {
    bytes.append(static_cast<const char*>(embd.data) + r * embd.cols * 4,
                 static_cast<std::size_t>(embd.cols) * 4);
  }
  const std::string path = write("separate.bin", bytes);
  const ModelFile file = load_llama2c(path);
  expect_config(file.config, 64, 172, 5, 8, 4, 8, 512, 512, false);
  ASSERT_EQ(file.weights.count("output.weight"), 1u);
  const WeightView& out = file.weights.at("output.weight");
  EXPECT_EQ(out.rows, 512);
  EXPECT_EQ(out.cols, 64);
  EXPECT_EQ(std::memcmp(out.data, bytes.data() + original.size(), out.byte_size()), 0);

  // The Model's classifier is that tensor (its own mapping of the file), not the embedding.
  const auto model = Model::load(path);
  EXPECT_FALSE(model->config().shared_classifier);
  EXPECT_NE(model->classifier().data, model->token_embedding().data);
  EXPECT_EQ(std::memcmp(model->classifier().data, out.data, out.byte_size()), 0);

  // Without its classifier the file is one tensor short.
  const std::string cut = write("separate-cut.bin", bytes.substr(0, original.size()));
  EXPECT_TRUE(throws_error([&] { load_llama2c(cut); }, ErrorCode::kFormat,
                           {cut, "output.weight"}));
}

TEST_F(Llama2c, SharedLegacyFileMayEndBeforeTheRopeTables) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const std::string original = read_bytes(bin);
  const std::size_t rope_bytes = 2u * 512 * (8 / 2) * sizeof(float);
  const std::string path = write("no-rope.bin", original.substr(0, original.size() - rope_bytes));
  const ModelFile file = load_llama2c(path);
  expect_config(file.config, 64, 172, 5, 8, 4, 8, 512, 512, true);
  expect_same_tensors(load_llama2c(bin), file);
}

// --- bad input ----------------------------------------------------------------------------------

TEST_F(Llama2c, MissingFileIsAnIoError) {
  const std::string path = dir_ + "/does-not-exist.bin";
  EXPECT_TRUE(throws_error([&] { load_llama2c(path); }, ErrorCode::kIo, {path}));
  EXPECT_TRUE(throws_error([&] { Model::load(path); }, ErrorCode::kIo, {path}));
}

TEST_F(Llama2c, DirectoryIsAnIoError) {
  EXPECT_TRUE(throws_error([&] { load_llama2c(dir_); }, ErrorCode::kIo,
                           {dir_, "not a regular file"}));
  EXPECT_TRUE(throws_error([&] { Model::load(dir_); }, ErrorCode::kIo, {dir_}));
  // The same with a trailing slash, and for the format check.
  for (const std::string& path : {dir_, dir_ + "/"}) {
    EXPECT_TRUE(throws_error([&] { Model::load(path); }, ErrorCode::kIo, {path, "not a regular file"}));
    EXPECT_TRUE(throws_error([&] { detect_format(path); }, ErrorCode::kIo, {path, "not a regular file"}));
  }
}

// A FIFO is refused at once, not waited on for a writer that never comes.
TEST_F(Llama2c, FifoIsRefusedWithoutWaiting) {
  const std::string fifo = dir_ + "/model.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_TRUE(throws_error([&] { detect_format(fifo); }, ErrorCode::kIo, {fifo, "not a regular file"}));
  EXPECT_TRUE(throws_error([&] { Model::load(fifo); }, ErrorCode::kIo, {fifo, "not a regular file"}));
  ::unlink(fifo.c_str());
}

TEST_F(Llama2c, EmptyFile) {
  const std::string path = write("empty.bin", "");
  EXPECT_TRUE(throws_error([&] { load_llama2c(path); }, ErrorCode::kFormat, {path, "0 bytes"}));
  EXPECT_TRUE(throws_error([&] { Model::load(path); }, ErrorCode::kFormat, {path, "0 bytes"}));
}

TEST_F(Llama2c, FileShorterThanTheHeader) {
  const std::string path = write("short.bin", Header{}.bytes().substr(0, 27));
  EXPECT_TRUE(throws_error([&] { load_llama2c(path); }, ErrorCode::kFormat,
                           {path, "27 bytes", "28"}));
  const std::string three = write("three.bin", "GGU");  // not even a whole magic
  EXPECT_TRUE(throws_error([&] { Model::load(three); }, ErrorCode::kFormat, {three, "3 bytes"}));
}

TEST_F(Llama2c, TruncatedWeights) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const std::string original = read_bytes(bin);
  struct Cut {
    std::size_t size;
    const char* inside;
  };
  const std::size_t rope_start = original.size() - 2u * 512 * 4 * sizeof(float);
  for (const Cut& cut : {Cut{28, "token_embd.weight"}, Cut{32, "token_embd.weight"},
                         Cut{original.size() / 2, "blk."}, Cut{rope_start - 4, "output_norm"},
                         Cut{original.size() - 4, "RoPE"}, Cut{rope_start + 1, "RoPE"}}) {
    const std::string path =
        write("cut-" + std::to_string(cut.size) + ".bin", original.substr(0, cut.size));
    EXPECT_TRUE(throws_error([&] { load_llama2c(path); }, ErrorCode::kFormat,
                             {path, "file ends inside", cut.inside}))
        << "cut at " << cut.size << " of " << original.size() << " bytes";
  }
}

TEST_F(Llama2c, ExtraTrailingBytes) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const std::string original = read_bytes(bin);
  for (std::size_t extra : {std::size_t{1}, std::size_t{4}, std::size_t{4096}}) {
    const std::string path = write("extra-" + std::to_string(extra) + ".bin",
                                   original + std::string(extra, '\x7f'));
    EXPECT_TRUE(throws_error([&] { load_llama2c(path); }, ErrorCode::kFormat,
                             {path, std::to_string(extra) + " bytes follow the last tensor"}));
  }
}

// A header with the real file's tensors after it: only the header is wrong.
class Llama2cHeader : public Llama2c {
 protected:
  // Both the loader and Model::load throw `code` naming the file and `needles`.
  ::testing::AssertionResult rejects(const Header& h, ErrorCode code,
                                     std::vector<std::string> needles) {
    const std::string path = write("header-" + std::to_string(n_++) + ".bin", h.bytes() + body_);
    needles.push_back(path);
    ::testing::AssertionResult loader = throws_error([&] { load_llama2c(path); }, code, needles);
    if (!loader) return loader;
    return throws_error([&] { Model::load(path); }, code, needles);
  }

  std::string body_ = std::string(4096, '\0');  // tensors that a wrong header cannot reach
  int n_ = 0;
};

TEST_F(Llama2cHeader, NHeadsNotDividingDim) {
  Header h;
  h.n_heads = 7;
  h.n_kv_heads = 7;
  EXPECT_TRUE(rejects(h, ErrorCode::kConfig, {"dim = 64", "n_heads = 7"}));
}

TEST_F(Llama2cHeader, NKvHeadsNotDividingNHeads) {
  Header h;
  h.n_kv_heads = 3;
  EXPECT_TRUE(rejects(h, ErrorCode::kConfig, {"n_kv_heads = 3", "n_heads = 8"}));
}

TEST_F(Llama2cHeader, OddHeadDim) {
  Header h;
  h.dim = 24;  // 8 heads of 3
  EXPECT_TRUE(rejects(h, ErrorCode::kConfig, {"head_dim = 3"}));
}

TEST_F(Llama2cHeader, ZeroAndNegativeDims) {
  struct Case {
    std::int32_t Header::*field;
    std::int32_t value;
    const char* needle;
  };
  const Case cases[] = {
      {&Header::dim, 0, "dim = 0"},
      {&Header::dim, -64, "dim = -64"},
      {&Header::hidden_dim, 0, "hidden_dim = 0"},
      {&Header::hidden_dim, -172, "hidden_dim = -172"},
      {&Header::n_layers, 0, "n_layers = 0"},
      {&Header::n_layers, -5, "n_layers = -5"},
      {&Header::n_heads, 0, "n_heads = 0"},
      {&Header::n_heads, -8, "n_heads = -8"},
      {&Header::n_kv_heads, 0, "n_kv_heads = 0"},
      {&Header::n_kv_heads, -4, "n_kv_heads = -4"},
      {&Header::vocab, 0, "vocab_size = 0"},
      {&Header::max_seq_len, 0, "max_seq_len = 0"},
      {&Header::max_seq_len, -512, "max_seq_len = -512"},
  };
  for (const Case& c : cases) {
    Header h;
    h.*(c.field) = c.value;
    EXPECT_TRUE(rejects(h, ErrorCode::kConfig, {c.needle})) << c.needle;
  }
}

TEST_F(Llama2cHeader, HugeDimsDoNotOverflow) {
  struct Case {
    std::int32_t Header::*field;
    std::int32_t value;
    const char* needle;
  };
  const Case cases[] = {
      {&Header::dim, 1 << 30, "dim = 1073741824"},
      {&Header::hidden_dim, INT32_MAX, "hidden_dim = 2147483647"},
      {&Header::n_layers, INT32_MAX, "n_layers = 2147483647"},
      {&Header::max_seq_len, INT32_MAX, "max_seq_len = 2147483647"},
      {&Header::vocab, INT32_MIN, "vocab_size"},  // |INT32_MIN| does not fit in an int32
      {&Header::vocab, INT32_MAX, "vocab_size = 2147483647"},
      {&Header::vocab, -INT32_MAX, "vocab_size = 2147483647"},
      {&Header::n_heads, INT32_MIN, "n_heads"},
      {&Header::dim, INT32_MIN, "dim"},
  };
  for (const Case& c : cases) {
    Header h;
    h.*(c.field) = c.value;
    EXPECT_TRUE(rejects(h, ErrorCode::kConfig, {c.needle})) << c.needle;
  }
}

// Every field at the largest size validate() accepts: the products (vocab * dim floats, 2^50
// bytes) must be compared with the file's size without overflowing, and refused as kFormat.
TEST_F(Llama2cHeader, LargestValidDimsDoNotFitTheFile) {
  Header h;
  h.dim = 1 << 24;
  h.n_heads = 1 << 18;  // head_dim 64
  h.n_kv_heads = 1 << 18;
  h.hidden_dim = 1 << 24;
  h.n_layers = 1 << 24;
  h.vocab = 1 << 24;
  h.max_seq_len = 1 << 24;
  EXPECT_TRUE(rejects(h, ErrorCode::kFormat, {"file ends inside token_embd.weight"}));
}

// --- other formats and the tokenizer -------------------------------------------------------------

// The magic, not the name, sends a file to the GGUF loader: here an empty GGUF file (no keys, no
// tensors) named like a checkpoint, which that loader refuses for its missing architecture.
TEST_F(Llama2c, GgufMagicGoesToTheGgufLoaderWhateverTheName) {
  std::string bytes = "GGUF";
  append_pod(bytes, std::uint32_t{3});
  bytes.resize(1024, '\0');
  const std::string path = write("model.bin", bytes);
  EXPECT_TRUE(throws_error([&] { Model::load(path); }, ErrorCode::kFormat,
                           {path, "general.architecture"}));
}

TEST_F(Llama2c, TokenizerThatIsNotSentencePiece) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const std::string garbage = write("tokenizer.model", std::string(300, '\xff'));
  EXPECT_TRUE(throws_error([&] { Model::load(bin, garbage); }, ErrorCode::kTokenizer,
                           {garbage, "SentencePiece"}));
  // A model file where the tokenizer should be.
  EXPECT_TRUE(throws_error([&] { Model::load(bin, bin); }, ErrorCode::kTokenizer, {bin}));
}

TEST_F(Llama2c, TokenizerOfAnotherVocabulary) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(llama2, "llama2-tokenizer/tokenizer.model");  // 32000 pieces, not 512
  EXPECT_TRUE(throws_error([&] { Model::load(bin, llama2); }, ErrorCode::kTokenizer,
                           {llama2, bin, "32000", "512"}));
}

TEST_F(Llama2c, Llama2cTokenizerBinIsNotSentencePiece) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  KVLM_REQUIRE_MODEL(tok_bin, "stories260K/tok512.bin");  // llama2.c's own tokenizer layout
  EXPECT_TRUE(throws_error([&] { Model::load(bin, tok_bin); }, ErrorCode::kTokenizer, {tok_bin}));
}

}  // namespace
}  // namespace kvlm
