// GGUF: the reader (gguf/reader.hpp), the writer (gguf/writer.hpp) and the Llama loader
// (loaders/gguf.hpp). The shared model files parse with the configs their README gives, and
// tinygqa-F32.gguf holds tinygqa.bin's weights byte for byte; the writer round-trips every value
// type and DType; and every class of malformed file that has given other engines' parsers heap
// overflows (lying lengths and counts, bad shapes, offsets and alignments, unknown types) is a
// kvlm::Error(kFormat) naming the file, the key or tensor and the value, as is every truncation of
// the real files. Files the tests write live in a fresh temporary directory removed afterwards.

#include "kvlm/loaders/gguf.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>  // mkdtemp

#include <cstdint>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kvlm/detail/checked.hpp"
#include "kvlm/error.hpp"
#include "kvlm/gguf/reader.hpp"
#include "kvlm/gguf/writer.hpp"
#include "kvlm/loaders/llama2c.hpp"
#include "kvlm/model.hpp"
#include "expect_error.hpp"
#include "models.hpp"

namespace kvlm {
namespace {

using gguf::GgufFile;
using gguf::GgufWriter;
using gguf::ValueType;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

using test::throws_error;

// Little-endian GGUF bytes, piece by piece, for files no writer would produce.
class Bytes {
 public:
  template <typename T>
  Bytes& num(T value) {
    unsigned char raw[sizeof(T)];
    std::memcpy(raw, &value, sizeof(T));  // the tests run on little-endian hosts
    s.append(reinterpret_cast<const char*>(raw), sizeof(T));
    return *this;
  }
  Bytes& u8(std::uint8_t v) { return num(v); }
  Bytes& u32(std::uint32_t v) { return num(v); }
  Bytes& u64(std::uint64_t v) { return num(v); }
  Bytes& raw(const std::string& bytes) {
    s += bytes;
    return *this;
  }
  Bytes& str(const std::string& v) { return u64(v.size()).raw(v); }
  Bytes& header(std::uint64_t n_tensors, std::uint64_t n_kv, std::uint32_t version = 3) {
    return raw("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  }
  // A key and its value type; the caller appends the value.
  Bytes& key(const std::string& k, ValueType type) {
    return str(k).u32(static_cast<std::uint32_t>(type));
  }
  Bytes& kv_u32(const std::string& k, std::uint32_t v) { return key(k, ValueType::kUint32).u32(v); }
  Bytes& kv_str(const std::string& k, const std::string& v) {
    return key(k, ValueType::kString).str(v);
  }
  Bytes& tensor(const std::string& name, const std::vector<std::uint64_t>& ne, std::uint32_t type,
                std::uint64_t offset) {
    str(name).u32(static_cast<std::uint32_t>(ne.size()));
    for (std::uint64_t n : ne) u64(n);
    return u32(type).u64(offset);
  }
  Bytes& pad(std::size_t alignment = 32) {
    s.resize((s.size() + alignment - 1) / alignment * alignment, '\0');
    return *this;
  }
  Bytes& zeros(std::size_t n) {
    s.append(n, '\0');
    return *this;
  }

  std::string s;
};

// The tiny Llama model the loader tests write: dim 32, hidden 64, 1 layer, 4 heads of 8, 2 KV
// heads, vocabulary 16, context 64; F32 weights with seeded values, F32 norms unless told.
struct TinyOptions {
  DType norm_dtype = DType::kF32;
  bool output = true;       // a separate classifier
  bool vocab = true;        // tokenizer.ggml.*
  std::string skip_tensor;  // leave this one out
};

struct TinyModel {
  static constexpr int kDim = 32, kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 8;
  static constexpr int kVocab = 16, kContext = 64;

  explicit TinyModel(const TinyOptions& o = {}) {
    w.set("general.architecture", "llama");
    w.set("general.name", "tiny");
    w.set("llama.context_length", std::uint32_t{kContext});
    w.set("llama.embedding_length", std::uint32_t{kDim});
    w.set("llama.feed_forward_length", std::uint32_t{kHidden});
    w.set("llama.block_count", std::uint32_t{1});
    w.set("llama.attention.head_count", std::uint32_t{kHeads});
    w.set("llama.attention.head_count_kv", std::uint32_t{kKvHeads});
    w.set("llama.rope.dimension_count", std::uint32_t{kHeadDim});
    w.set("llama.rope.freq_base", 500000.0f);
    w.set("llama.attention.layer_norm_rms_epsilon", 1e-6f);
    if (o.vocab) {
      std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
      std::vector<float> scores = {0, 0, 0};
      std::vector<std::int32_t> types = {2, 3, 3};
      for (int i = 3; i < kVocab; ++i) {
        tokens.push_back("\xe2\x96\x81t" + std::to_string(i));
        scores.push_back(-static_cast<float>(i));
        types.push_back(1);
      }
      w.set("tokenizer.ggml.model", "llama");
      w.set_array("tokenizer.ggml.tokens", tokens);
      w.set_array("tokenizer.ggml.scores", scores);
      w.set_array("tokenizer.ggml.token_type", types);
      w.set("tokenizer.ggml.bos_token_id", std::uint32_t{1});
      w.set("tokenizer.ggml.eos_token_id", std::uint32_t{2});
      w.set("tokenizer.ggml.unknown_token_id", std::uint32_t{0});
      w.set("tokenizer.ggml.padding_token_id", std::uint32_t{0xFFFFFFFF});
    }
    const std::uint64_t dim = kDim, hidden = kHidden, vocab = kVocab;
    const std::uint64_t q = kHeads * kHeadDim, kv = kKvHeads * kHeadDim;
    add(o, "token_embd.weight", DType::kF32, {dim, vocab});
    add(o, "output_norm.weight", o.norm_dtype, {dim});
    if (o.output) add(o, "output.weight", DType::kF32, {dim, vocab});
    add(o, "blk.0.attn_norm.weight", o.norm_dtype, {dim});
    add(o, "blk.0.attn_q.weight", DType::kF32, {dim, q});
    add(o, "blk.0.attn_k.weight", DType::kF32, {dim, kv});
    add(o, "blk.0.attn_v.weight", DType::kF32, {dim, kv});
    add(o, "blk.0.attn_output.weight", DType::kF32, {q, dim});
    add(o, "blk.0.ffn_norm.weight", o.norm_dtype, {dim});
    add(o, "blk.0.ffn_gate.weight", DType::kF32, {dim, hidden});
    add(o, "blk.0.ffn_down.weight", DType::kF32, {hidden, dim});
    add(o, "blk.0.ffn_up.weight", DType::kF32, {dim, hidden});
  }

  // Adds a tensor whose elements are seeded values (norms: 0.5 + i / 8, exact in every type).
  void add(const TinyOptions& o, const std::string& name, DType dtype,
           std::vector<std::uint64_t> ne) {
    if (name == o.skip_tensor) return;
    std::uint64_t rows = 1;
    for (std::size_t d = 1; d < ne.size(); ++d) rows *= ne[d];
    const std::size_t bytes = row_bytes(dtype, static_cast<std::int64_t>(ne[0])) * rows;
    std::vector<std::uint8_t>& buf = data.emplace_back(bytes);
    std::mt19937 rng(static_cast<unsigned>(data.size()));
    if (dtype == DType::kF32 && ne.size() > 1) {
      std::normal_distribution<float> normal(0.0f, 0.02f);
      for (std::size_t i = 0; i < bytes / 4; ++i) {
        const float x = normal(rng);
        std::memcpy(buf.data() + 4 * i, &x, 4);
      }
    } else if (dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16) {
      for (std::uint64_t i = 0; i < ne[0] * rows; ++i) {
        const float x = norm_value(i);
        if (dtype == DType::kF32) {
          std::memcpy(buf.data() + 4 * i, &x, 4);
        } else {
          const std::uint16_t h = dtype == DType::kF16 ? fp32_to_fp16(x) : fp32_to_bf16(x);
          std::memcpy(buf.data() + 2 * i, &h, 2);
        }
      }
    } else {
      for (std::uint8_t& b : buf) b = static_cast<std::uint8_t>(rng());
    }
    w.add_tensor(name, dtype, std::move(ne), buf.data());
  }

  static float norm_value(std::uint64_t i) { return 0.5f + static_cast<float>(i % 16) / 8.0f; }

  GgufWriter w;
  std::deque<std::vector<std::uint8_t>> data;  // the tensors' bytes; a deque keeps them in place
};

class Gguf : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir();
    if (pattern.empty() || pattern.back() != '/') pattern += '/';
    pattern += "kvlm_gguf_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "cannot create a directory from " << pattern;
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` to a new file in the test's directory and returns its path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = path(name);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << "cannot write " << p;
    return p;
  }
  std::string write(const std::string& name, const GgufWriter& w) const {
    const std::string p = path(name);
    w.write(p);
    return p;
  }

  // GgufFile::open on `bytes` written to a file throws Error(kFormat) naming the file and each
  // needle.
  ::testing::AssertionResult refuses(const Bytes& bytes, std::vector<std::string> needles) const {
    const std::string p = write("bad.gguf", bytes.s);
    needles.insert(needles.begin(), p + ": ");
    return throws_error([&] { GgufFile::open(p); }, ErrorCode::kFormat, needles);
  }

  // load_gguf on the tiny model throws Error(code) naming the file and each needle.
  ::testing::AssertionResult load_refuses(const TinyModel& m, ErrorCode code,
                                          std::vector<std::string> needles) const {
    const std::string p = write("tiny.gguf", m.w);
    needles.insert(needles.begin(), p + ": ");
    return throws_error([&] { load_gguf(p); }, code, needles);
  }

  std::string dir_;
};

using GgufRealFiles = Gguf;
using GgufReader = Gguf;
using GgufMalformed = Gguf;
using GgufWriterTest = Gguf;
using GgufLoader = Gguf;
using GgufVocab = Gguf;

void expect_config(const ModelConfig& c, int dim, int hidden_dim, int n_layers, int n_heads,
                   int n_kv_heads, int vocab_size, int max_seq_len) {
  EXPECT_EQ(c.dim, dim);
  EXPECT_EQ(c.hidden_dim, hidden_dim);
  EXPECT_EQ(c.n_layers, n_layers);
  EXPECT_EQ(c.n_heads, n_heads);
  EXPECT_EQ(c.n_kv_heads, n_kv_heads);
  EXPECT_EQ(c.head_dim, dim / n_heads);
  EXPECT_EQ(c.vocab_size, vocab_size);
  EXPECT_EQ(c.max_seq_len, max_seq_len);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 10000.0f);
}

// --- the shared model files ---------------------------------------------------------------------

TEST_F(GgufRealFiles, Stories260KConfigAndVocab) {
  for (const char* name :
       {"stories260K/stories260K-F32.gguf", "stories260K/stories260K-F16.gguf"}) {
    SCOPED_TRACE(name);
    KVLM_REQUIRE_MODEL(path, name);
    const GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), 32u);
    EXPECT_EQ(f.tensors().size(), 48u);  // 9 per layer, embedding, final norm, classifier
    EXPECT_EQ(f.get_string("general.architecture"), "llama");
    EXPECT_EQ(f.keys().front(), "tokenizer.ggml.tokens");  // file order
    EXPECT_EQ(f.describe("general.architecture"), "\"llama\"");
    EXPECT_EQ(f.describe("llama.context_length"), "128");
    EXPECT_EQ(f.describe("tokenizer.ggml.tokens"), "[string x 512]");
    EXPECT_EQ(f.describe("llama.attention.layer_norm_rms_epsilon"), "1e-05");
    for (const gguf::TensorInfo& t : f.tensors()) {
      EXPECT_EQ(t.offset % 32, 0u) << t.name;
      EXPECT_LE(t.offset + t.bytes, f.size()) << t.name;
    }

    const ModelFile m = load_gguf(f);
    expect_config(m.config, 64, 172, 5, 8, 4, 512, 128);
    EXPECT_FALSE(m.config.shared_classifier);  // llama.cpp's converter wrote output.weight
    EXPECT_EQ(m.weights.size(), 48u);
    const bool f16 = std::string(name).find("F16") != std::string::npos;
    EXPECT_EQ(m.weights.at("blk.0.attn_q.weight").dtype, f16 ? DType::kF16 : DType::kF32);
    EXPECT_EQ(m.weights.at("blk.0.attn_norm.weight").dtype, DType::kF32);
    const WeightView& wk = m.weights.at("blk.4.attn_k.weight");
    EXPECT_EQ(wk.rows, 32);
    EXPECT_EQ(wk.cols, 64);
    EXPECT_EQ(wk.data, f.find_tensor("blk.4.attn_k.weight")->data);  // zero-copy
    const WeightView& down = m.weights.at("blk.0.ffn_down.weight");
    EXPECT_EQ(down.rows, 64);
    EXPECT_EQ(down.cols, 172);
    EXPECT_EQ(m.weights.at("output_norm.weight").rows, 1);
    EXPECT_EQ(m.weights.at("output_norm.weight").cols, 64);

    ASSERT_TRUE(m.vocab.has_value());
    const TokenizerVocab& v = *m.vocab;
    EXPECT_EQ(v.model, "llama");
    ASSERT_EQ(v.tokens.size(), 512u);
    EXPECT_EQ(v.tokens[1], "<s>");
    EXPECT_EQ(v.scores.size(), 512u);
    EXPECT_EQ(v.token_types.size(), 512u);
    EXPECT_EQ(v.token_types[0], 2);
    EXPECT_EQ(v.bos, 1);
    EXPECT_EQ(v.eos, 2);
    EXPECT_EQ(v.unk, 0);
    EXPECT_EQ(v.pad, -1);  // 0xFFFFFFFF

    // What the Model needs is there, in the shapes and types it checks.
    EXPECT_NO_THROW(Model::from_file(load_gguf(path)));
  }
}

TEST_F(GgufRealFiles, TinyGqaConfigInEveryType) {
  const std::vector<std::pair<const char*, DType>> files = {
      {"tinygqa/tinygqa-F32.gguf", DType::kF32},
      {"tinygqa/tinygqa-F16.gguf", DType::kF16},
      {"tinygqa/tinygqa-BF16.gguf", DType::kBF16},
      {"tinygqa/tinygqa-Q8_0.gguf", DType::kQ8_0},
      {"tinygqa/tinygqa-Q4_0.gguf", DType::kQ4_0}};
  for (const auto& [name, dtype] : files) {
    SCOPED_TRACE(name);
    KVLM_REQUIRE_MODEL(path, name);
    const ModelFile m = load_gguf(path);
    expect_config(m.config, 256, 768, 4, 8, 2, 512, 128);
    EXPECT_EQ(m.config.group(), 4);
    EXPECT_EQ(m.weights.at("blk.3.attn_v.weight").dtype, dtype);
    EXPECT_EQ(m.weights.at("blk.3.attn_v.weight").rows, 64);
    EXPECT_EQ(m.weights.at("blk.3.ffn_norm.weight").dtype, DType::kF32);
    EXPECT_NO_THROW(Model::from_file(load_gguf(path)));
  }
}

TEST_F(GgufRealFiles, TinyGqaF32HoldsTheLlama2cWeightsByteForByte) {
  KVLM_REQUIRE_MODEL(bin, "tinygqa/tinygqa.bin");
  KVLM_REQUIRE_MODEL(gguf_path, "tinygqa/tinygqa-F32.gguf");
  const ModelFile a = load_llama2c(bin);
  const ModelFile b = load_gguf(gguf_path);
  for (const auto& [name, wb] : b.weights) {
    // The converter always writes output.weight; a shared llama2.c classifier is the embedding.
    const std::string source =
        (name == "output.weight" && a.config.shared_classifier) ? "token_embd.weight" : name;
    const auto it = a.weights.find(source);
    ASSERT_NE(it, a.weights.end()) << name;
    const WeightView& wa = it->second;
    EXPECT_EQ(wb.dtype, DType::kF32) << name;
    ASSERT_EQ(wa.rows, wb.rows) << name;
    ASSERT_EQ(wa.cols, wb.cols) << name;
    EXPECT_EQ(std::memcmp(wa.data, wb.data, wa.byte_size()), 0) << name << " differs";
  }
  EXPECT_EQ(b.weights.size(), a.weights.size() + (a.config.shared_classifier ? 1u : 0u));
}

// llama.cpp's usual mixes load with each tensor's own type: Q4_K_M = 25 Q4_K + 5 Q6_K.
TEST_F(GgufRealFiles, KQuantMixesLoadWithTheirTypes) {
  KVLM_REQUIRE_MODEL(path, "tinygqa/tinygqa-Q4_K_M.gguf");
  const ModelFile m = load_gguf(path);
  EXPECT_EQ(m.weights.at("token_embd.weight").dtype, DType::kQ4_K);
  EXPECT_EQ(m.weights.at("output.weight").dtype, DType::kQ6_K);
  EXPECT_EQ(m.weights.at("blk.0.attn_v.weight").dtype, DType::kQ4_K);
  EXPECT_EQ(m.weights.at("blk.3.attn_v.weight").dtype, DType::kQ6_K);
  int q4_k = 0, q6_k = 0;
  for (const auto& [name, w] : m.weights) {
    q4_k += w.dtype == DType::kQ4_K;
    q6_k += w.dtype == DType::kQ6_K;
  }
  EXPECT_EQ(q4_k, 25);
  EXPECT_EQ(q6_k, 5);
}

TEST_F(GgufRealFiles, VocabOnlyFileReadsWithoutAModel) {
  KVLM_REQUIRE_MODEL(path, "llama-spm-vocab/ggml-vocab-llama-spm.gguf");
  const GgufFile f = GgufFile::open(path);
  EXPECT_TRUE(f.tensors().empty());
  const TokenizerVocab v = gguf::read_vocab(f);
  EXPECT_EQ(v.model, "llama");
  ASSERT_EQ(v.tokens.size(), 32000u);
  EXPECT_EQ(v.tokens[0], "<unk>");
  EXPECT_EQ(v.tokens[2], "</s>");
  EXPECT_EQ(v.scores.size(), 32000u);
  EXPECT_EQ(v.token_types[1], 3);  // control
  EXPECT_EQ(v.bos, 1);
  EXPECT_EQ(v.eos, 2);
  EXPECT_EQ(v.unk, 0);
  EXPECT_EQ(v.pad, -1);
  EXPECT_TRUE(v.add_bos);
  EXPECT_FALSE(v.add_eos);
  EXPECT_EQ(load_gguf_vocab(path).tokens, v.tokens);
  // Its llama.* keys describe a 7B model whose tensors are not there.
  EXPECT_TRUE(throws_error([&] { load_gguf(path); }, ErrorCode::kFormat, {path, "missing tensor"}));
}

// Every prefix of a real file that cuts into its metadata, tensor table or tensor data is an
// error: at each of the first 64 bytes and at every 1/64 of the file.
TEST_F(GgufRealFiles, EveryTruncationIsAnError) {
  for (const char* name : {"stories260K/stories260K-F32.gguf", "stories260K/stories260K-F16.gguf",
                           "tinygqa/tinygqa-Q4_0.gguf", "tinygqa/tinygqa-Q8_0.gguf",
                           "llama-spm-vocab/ggml-vocab-llama-spm.gguf"}) {
    SCOPED_TRACE(name);
    KVLM_REQUIRE_MODEL(path, name);
    const std::string bytes = read_bytes(path);
    const bool model = GgufFile::open(path).tensors().size() > 0;
    std::vector<std::size_t> cuts;
    for (std::size_t i = 0; i < 64; ++i) cuts.push_back(i);
    for (std::size_t k = 1; k < 64; ++k) cuts.push_back(bytes.size() * k / 64);
    cuts.push_back(bytes.size() - 1);
    for (std::size_t cut : cuts) {
      const std::string source = std::string(name) + "[:" + std::to_string(cut) + "]";
      EXPECT_TRUE(throws_error(
          [&] {
            const GgufFile f = GgufFile::from_bytes(bytes.data(), cut, source);
            if (model) {
              load_gguf(f);
            } else {
              gguf::read_vocab(f);
            }
          },
          ErrorCode::kFormat, {source}))
          << "cut at " << cut;
    }
  }
}

// Random corruption of a real file's metadata and tensor table: every outcome is a loaded model
// or a kvlm::Error, never a crash, a sanitizer report or another exception (std::bad_alloc
// would mean a count reached an allocation unchecked).
TEST_F(GgufRealFiles, RandomCorruptionIsAnErrorOrAModel) {
  KVLM_REQUIRE_MODEL(path, "stories260K/stories260K-F16.gguf");
  const std::string original = read_bytes(path);
  const std::size_t header = static_cast<std::size_t>(GgufFile::open(path).data_offset());
  std::mt19937 rng(2024);
  int errors = 0;
  for (int i = 0; i < 400; ++i) {
    std::string bytes = original;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const std::size_t at = rng() % header;
      // Half the time a whole byte at random, else a high byte (lengths and counts blow up).
      bytes[at] = static_cast<char>(rng() % 2 ? rng() : (0x80 | rng()));
    }
    try {
      const GgufFile f = GgufFile::from_bytes(bytes.data(), bytes.size(), "corrupt");
      load_gguf(f);
    } catch (const Error&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << i << ": non-kvlm exception " << e.what();
    }
  }
  EXPECT_GT(errors, 100);  // most corruptions are caught
}

// --- the writer -----------------------------------------------------------------------------

TEST_F(GgufWriterTest, RoundTripsEveryValueTypeAndDType) {
  GgufWriter w;
  w.set("u8", std::uint8_t{200});
  w.set("i8", std::int8_t{-100});
  w.set("u16", std::uint16_t{60000});
  w.set("i16", std::int16_t{-30000});
  w.set("u32", std::uint32_t{4000000000u});
  w.set("i32", std::int32_t{-2000000000});
  w.set("f32", 1.5f);
  w.set("bool", true);
  w.set("string", std::string("caf\xc3\xa9 \xff\xfe with a\0nul", 19));  // not UTF-8: just bytes
  w.set("cstring", "replaced below");
  w.set("u64", std::uint64_t{1} << 60);
  w.set("i64", -(std::int64_t{1} << 60));
  w.set("f64", 0.1);
  w.set("cstring", "llama");  // replaces, keeps its place
  w.set_array("a.string", std::vector<std::string>{"<unk>", "", "\xe2\x96\x81the"});
  w.set_array("a.f32", std::vector<float>{0.5f, -2.0f});
  w.set_array("a.i32", std::vector<std::int32_t>{-1, 7});
  w.set_array("a.u8", std::vector<std::uint8_t>{1, 255});
  w.set_array("a.i8", std::vector<std::int8_t>{-128});
  w.set_array("a.u16", std::vector<std::uint16_t>{65535});
  w.set_array("a.i16", std::vector<std::int16_t>{-32768});
  w.set_array("a.u32", std::vector<std::uint32_t>{3, 2147483647u});
  w.set_array("a.u64", std::vector<std::uint64_t>{~std::uint64_t{0}});
  w.set_array("a.i64", std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min()});
  w.set_array("a.f64", std::vector<double>{1e300});
  w.set_array("a.bool", std::vector<bool>{true, false, true});
  w.set_array("a.empty", std::vector<float>{});

  std::vector<std::vector<std::uint8_t>> data;
  struct Spec {
    const char* name;
    DType dtype;
    std::vector<std::uint64_t> ne;
  };
  const std::vector<Spec> specs = {
      {"f32", DType::kF32, {8, 3}},       {"f16", DType::kF16, {4, 2}},
      {"bf16", DType::kBF16, {5}},        {"q8_0", DType::kQ8_0, {64, 2}},
      {"q4_0", DType::kQ4_0, {32, 3, 2}}, {"f32.4d", DType::kF32, {1, 2, 3, 4}}};
  std::mt19937 rng(7);
  data.reserve(specs.size());
  for (const Spec& s : specs) {
    std::uint64_t rows = 1;
    for (std::size_t d = 1; d < s.ne.size(); ++d) rows *= s.ne[d];
    auto& buf = data.emplace_back(row_bytes(s.dtype, static_cast<std::int64_t>(s.ne[0])) * rows);
    for (std::uint8_t& b : buf) b = static_cast<std::uint8_t>(rng());
    w.add_tensor(s.name, s.dtype, s.ne, buf.data());
  }

  const std::string p = write("all.gguf", w);
  EXPECT_FALSE(std::filesystem::exists(p + ".tmp"));
  const GgufFile f = GgufFile::open(p);
  EXPECT_EQ(read_bytes(p), w.to_bytes());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  const std::vector<std::string> keys = {
      "u8",      "i8",    "u16",   "i16",   "u32",      "i32",   "f32",    "bool",   "string",
      "cstring", "u64",   "i64",   "f64",   "a.string", "a.f32", "a.i32",  "a.u8",   "a.i8",
      "a.u16",   "a.i16", "a.u32", "a.u64", "a.i64",    "a.f64", "a.bool", "a.empty"};
  EXPECT_EQ(f.keys(), keys);
  EXPECT_EQ(f.type("u8"), ValueType::kUint8);
  EXPECT_EQ(f.type("i8"), ValueType::kInt8);
  EXPECT_EQ(f.type("u16"), ValueType::kUint16);
  EXPECT_EQ(f.type("i16"), ValueType::kInt16);
  EXPECT_EQ(f.type("u32"), ValueType::kUint32);
  EXPECT_EQ(f.type("i32"), ValueType::kInt32);
  EXPECT_EQ(f.type("f32"), ValueType::kFloat32);
  EXPECT_EQ(f.type("bool"), ValueType::kBool);
  EXPECT_EQ(f.type("string"), ValueType::kString);
  EXPECT_EQ(f.type("u64"), ValueType::kUint64);
  EXPECT_EQ(f.type("i64"), ValueType::kInt64);
  EXPECT_EQ(f.type("f64"), ValueType::kFloat64);
  EXPECT_EQ(f.type("a.f32"), ValueType::kArray);
  EXPECT_EQ(f.get_uint32("u8"), 200u);
  EXPECT_EQ(f.get_int64("i8"), -100);
  EXPECT_EQ(f.get_uint32("u16"), 60000u);
  EXPECT_EQ(f.get_int64("i16"), -30000);
  EXPECT_EQ(f.get_uint32("u32"), 4000000000u);
  EXPECT_EQ(f.get_int64("i32"), -2000000000);
  EXPECT_EQ(f.get_float("f32"), 1.5f);
  EXPECT_TRUE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("string"), std::string("caf\xc3\xa9 \xff\xfe with a\0nul", 19));
  EXPECT_EQ(f.get_string("cstring"), "llama");
  EXPECT_EQ(f.get_int64("u64"), std::int64_t{1} << 60);
  EXPECT_EQ(f.get_int64("i64"), -(std::int64_t{1} << 60));
  EXPECT_EQ(f.get_float("f64"), 0.1f);
  EXPECT_EQ(f.get_string_array("a.string"),
            (std::vector<std::string>{"<unk>", "", "\xe2\x96\x81the"}));
  EXPECT_EQ(f.get_float_array("a.f32"), (std::vector<float>{0.5f, -2.0f}));
  EXPECT_EQ(f.get_int32_array("a.i32"), (std::vector<std::int32_t>{-1, 7}));
  EXPECT_EQ(f.get_int32_array("a.u32"), (std::vector<std::int32_t>{3, 2147483647}));
  EXPECT_TRUE(f.get_float_array("a.empty").empty());
  const std::vector<std::pair<const char*, ValueType>> arrays = {
      {"a.u8", ValueType::kUint8},    {"a.i8", ValueType::kInt8},    {"a.u16", ValueType::kUint16},
      {"a.i16", ValueType::kInt16},   {"a.u64", ValueType::kUint64}, {"a.i64", ValueType::kInt64},
      {"a.f64", ValueType::kFloat64}, {"a.bool", ValueType::kBool}};
  for (const auto& [key, element] : arrays) EXPECT_EQ(f.array_type(key), element) << key;
  EXPECT_EQ(f.array_size("a.bool"), 3u);
  EXPECT_EQ(f.describe("a.bool"), "[bool x 3]");
  EXPECT_EQ(f.describe("string"), "\"caf\xc3\xa9 \xff\xfe with a\\x00nul\"");
  EXPECT_EQ(f.describe("i8"), "-100");
  EXPECT_EQ(f.describe("bool"), "true");

  ASSERT_EQ(f.tensors().size(), specs.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const gguf::TensorInfo& t = f.tensors()[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, specs[i].name);
    EXPECT_EQ(t.dtype, specs[i].dtype);
    ASSERT_EQ(t.n_dims, specs[i].ne.size());
    for (std::size_t d = 0; d < 4; ++d) {
      EXPECT_EQ(t.ne[d], d < specs[i].ne.size() ? specs[i].ne[d] : 1u);
    }
    EXPECT_EQ(t.offset % 32, 0u);
    ASSERT_EQ(t.bytes, data[i].size());
    EXPECT_EQ(std::memcmp(t.data, data[i].data(), data[i].size()), 0);
    EXPECT_EQ(f.find_tensor(specs[i].name), &t);
  }
  EXPECT_EQ(f.find_tensor("absent"), nullptr);
}

TEST_F(GgufWriterTest, HonoursAnAlignmentAndRefusesBadOnes) {
  GgufWriter w;
  w.set("general.alignment", std::uint32_t{64});
  const float x[3] = {1, 2, 3};
  w.add_tensor("a", DType::kF32, {3}, x);
  w.add_tensor("b", DType::kF32, {1}, x);
  const GgufFile f = GgufFile::open(write("a64.gguf", w));
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  for (const gguf::TensorInfo& t : f.tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;
  EXPECT_EQ(f.tensors()[1].offset - f.tensors()[0].offset, 64u);

  for (std::uint32_t bad : {0u, 4u, 48u}) {
    EXPECT_TRUE(throws_error([&] { w.set("general.alignment", bad); }, ErrorCode::kInvalidArgument,
                             {"general.alignment", std::to_string(bad)}));
  }
  EXPECT_TRUE(throws_error([&] { w.set("general.alignment", std::uint64_t{64}); },
                           ErrorCode::kInvalidArgument, {"general.alignment", "uint32"}));
  EXPECT_EQ(w.alignment(), 64u);
  EXPECT_TRUE(w.remove("general.alignment"));
  EXPECT_FALSE(w.remove("general.alignment"));
  EXPECT_EQ(w.alignment(), 32u);
}

TEST_F(GgufWriterTest, RefusesBadTensors) {
  GgufWriter w;
  const std::vector<std::uint8_t> buf(1024);
  w.add_tensor("t", DType::kF32, {4}, buf.data());
  auto refuses = [&](const std::string& name, DType dtype, std::vector<std::uint64_t> ne,
                     const void* data, const std::string& needle) {
    return throws_error([&] { w.add_tensor(name, dtype, ne, data); }, ErrorCode::kInvalidArgument,
                        {"tensor " + name, needle});
  };
  EXPECT_TRUE(refuses("t", DType::kF32, {4}, buf.data(), "added twice"));
  EXPECT_TRUE(refuses("q", DType::kQ8_0, {33}, buf.data(), "block size 32"));
  EXPECT_TRUE(refuses("z", DType::kF32, {4, 0}, buf.data(), "dimension 0"));
  EXPECT_TRUE(refuses("five", DType::kF32, {1, 1, 1, 1, 1}, buf.data(), "5 dimensions"));
  EXPECT_TRUE(refuses("none", DType::kF32, {}, buf.data(), "0 dimensions"));
  EXPECT_TRUE(refuses("null", DType::kF32, {4}, nullptr, "no data"));
  EXPECT_TRUE(refuses(std::string(64, 'n'), DType::kF32, {4}, buf.data(), "longer than 63"));
}

TEST_F(GgufWriterTest, RefusesOverlongKeys) {
  GgufWriter w;
  EXPECT_TRUE(throws_error([&] { w.set(std::string(65536, 'k'), std::uint32_t{1}); },
                           ErrorCode::kInvalidArgument, {"65536 bytes", "65535"}));
  w.set(std::string(65535, 'k'), std::uint32_t{1});
  EXPECT_EQ(GgufFile::open(write("longkey.gguf", w)).keys().front().size(), 65535u);
}

TEST_F(GgufWriterTest, ReportsAnUnwritablePath) {
  GgufWriter w;
  w.set("general.architecture", "llama");
  const std::string p = path("no/such/dir/x.gguf");
  EXPECT_TRUE(throws_error([&] { w.write(p); }, ErrorCode::kIo, {p, "cannot create"}));
}

// --- typed getters --------------------------------------------------------------------------

TEST_F(GgufReader, GettersCheckTypesAndRanges) {
  GgufWriter w;
  w.set("s", "text");
  w.set("u8", std::uint8_t{7});
  w.set("i32.pos", std::int32_t{12});
  w.set("i32.neg", std::int32_t{-1});
  w.set("u64.small", std::uint64_t{5});
  w.set("u64.big", std::uint64_t{1} << 33);
  w.set("u64.huge", ~std::uint64_t{0});
  w.set("f64", 2.5);
  w.set_array("scores.u8", std::vector<std::uint8_t>{1, 2});
  w.set_array("ids.u32", std::vector<std::uint32_t>{1, 0x80000000u});
  w.set_array("f.f64", std::vector<double>{1.0});
  const std::string p = write("getters.gguf", w);
  const GgufFile f = GgufFile::open(p);

  EXPECT_EQ(f.get_uint32("u8"), 7u);
  EXPECT_EQ(f.get_uint32("i32.pos"), 12u);
  EXPECT_EQ(f.get_uint32("u64.small"), 5u);
  EXPECT_EQ(f.get_float("f64"), 2.5f);
  EXPECT_EQ(f.get_int64("i32.neg"), -1);
  EXPECT_FALSE(f.find_uint32("absent").has_value());
  EXPECT_FALSE(f.find_string("absent").has_value());
  EXPECT_FALSE(f.find_float("absent").has_value());
  EXPECT_FALSE(f.find_bool("absent").has_value());
  EXPECT_EQ(f.find_uint32("u8"), 7u);
  EXPECT_FALSE(f.has("absent"));

  const ErrorCode k = ErrorCode::kFormat;
  EXPECT_TRUE(
      throws_error([&] { f.get_uint32("absent"); }, k, {p, "key absent is missing", "uint32"}));
  EXPECT_TRUE(throws_error([&] { f.type("absent"); }, k, {p, "key absent is missing"}));
  EXPECT_TRUE(throws_error([&] { f.get_uint32("s"); }, k, {p, "key s is string, expected uint32"}));
  EXPECT_TRUE(throws_error([&] { f.find_uint32("s"); }, k, {"key s is string"}));
  EXPECT_TRUE(throws_error([&] { f.get_string("u8"); }, k, {"key u8 is uint8, expected string"}));
  EXPECT_TRUE(throws_error([&] { f.get_bool("u8"); }, k, {"key u8 is uint8, expected bool"}));
  EXPECT_TRUE(throws_error([&] { f.get_float("u8"); }, k, {"key u8 is uint8, expected float32"}));
  EXPECT_TRUE(throws_error([&] { f.get_uint32("i32.neg"); }, k,
                           {"key i32.neg = -1 (int32) does not fit uint32"}));
  EXPECT_TRUE(throws_error([&] { f.get_uint32("u64.big"); }, k,
                           {"key u64.big = 8589934592 (uint64) does not fit uint32"}));
  EXPECT_TRUE(
      throws_error([&] { f.get_int64("u64.huge"); }, k, {"u64.huge", "does not fit int64"}));
  // Token scores stored as uint8 are not float32 scores.
  EXPECT_TRUE(throws_error([&] { f.get_float_array("scores.u8"); }, k,
                           {p, "key scores.u8 is array of uint8, expected array of float32"}));
  EXPECT_TRUE(throws_error([&] { f.get_float_array("f.f64"); }, k, {"array of float64"}));
  EXPECT_TRUE(throws_error([&] { f.get_float_array("u8"); }, k, {"key u8 is uint8"}));
  EXPECT_TRUE(
      throws_error([&] { f.get_string_array("scores.u8"); }, k, {"expected array of string"}));
  EXPECT_TRUE(throws_error([&] { f.get_int32_array("ids.u32"); }, k,
                           {"ids.u32[1] = 2147483648 (uint32) does not fit int32"}));
  EXPECT_TRUE(throws_error([&] { f.get_int32_array("f.f64"); }, k, {"expected array of int32"}));
  EXPECT_TRUE(throws_error([&] { f.array_size("u8"); }, k, {"key u8 is uint8, expected array"}));
}

TEST_F(GgufReader, ParsesFromMemoryAndKeepsItsBytesAlive) {
  TinyModel m;
  auto bytes = std::make_shared<std::string>(m.w.to_bytes());
  std::optional<GgufFile> f = GgufFile::from_bytes(bytes->data(), bytes->size(), "mem");
  EXPECT_EQ(f->path(), "mem");
  const ModelFile loaded = load_gguf(*f);
  f.reset();  // the ModelFile's storage keeps the copy
  const WeightView& w = loaded.weights.at("blk.0.ffn_norm.weight");
  EXPECT_EQ(static_cast<const float*>(w.data)[1], TinyModel::norm_value(1));

  // parse() reads in place, from an owner the caller gives; the start must be 8-byte aligned.
  const auto* start = reinterpret_cast<const std::byte*>(bytes->data());
  const GgufFile in_place = GgufFile::parse(bytes, start, bytes->size(), "in place");
  EXPECT_EQ(in_place.find_tensor("output.weight")->data,
            start + in_place.data_offset() + TinyModel::kDim * TinyModel::kVocab * 4 + 32 * 4);
  EXPECT_TRUE(throws_error([&] { GgufFile::parse(bytes, start + 4, bytes->size() - 4, "odd"); },
                           ErrorCode::kInvalidArgument, {"odd", "8-byte-aligned"}));
}

TEST_F(GgufReader, CheckedArithmeticAndCursor) {
  EXPECT_EQ(detail::checked_add(1, 2, "x"), 3u);
  EXPECT_TRUE(throws_error([] { detail::checked_add(~std::uint64_t{0}, 1, "sum of it"); },
                           ErrorCode::kFormat, {"sum of it", "overflows 64 bits"}));
  EXPECT_EQ(detail::checked_mul(1ull << 32, 1ull << 31, "x"), 1ull << 63);
  EXPECT_TRUE(throws_error([] { detail::checked_mul(1ull << 32, 1ull << 32, "product"); },
                           ErrorCode::kFormat, {"product", "overflows 64 bits"}));
  const unsigned char raw[] = {0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0xC0, 0x3F, 0xFF};
  detail::ByteCursor c(reinterpret_cast<const std::byte*>(raw), sizeof raw, "raw.bin");
  EXPECT_EQ(c.read<std::uint32_t>("an int"), 0x04030201u);
  EXPECT_EQ(c.read<float>("a float"), 1.5f);
  EXPECT_EQ(c.offset(), 8u);
  EXPECT_EQ(c.remaining(), 1u);
  EXPECT_TRUE(throws_error([&] { c.read<std::uint16_t>("the thing"); }, ErrorCode::kFormat,
                           {"raw.bin: ", "the thing", "offset 8", "needs 2 bytes, 1 remain"}));
  EXPECT_EQ(c.read<std::int8_t>("a byte"), -1);
  EXPECT_TRUE(throws_error([&] { c.read_bytes(~std::uint64_t{0}, "everything"); },
                           ErrorCode::kFormat, {"everything"}));
}

// --- malformed files: one test per class ---------------------------------------------------

TEST_F(GgufMalformed, BadMagic) {
  EXPECT_TRUE(
      refuses(Bytes().raw("GGML").u32(3).u64(0).u64(0), {"not a GGUF file", "47 47 4d 4c"}));
  EXPECT_TRUE(refuses(Bytes().raw("GG"), {"not a GGUF file", "2 bytes"}));
  EXPECT_TRUE(refuses(Bytes(), {"not a GGUF file", "0 bytes"}));
}

TEST_F(GgufMalformed, LlamaTwoCFileIsNotGguf) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  EXPECT_TRUE(
      throws_error([&] { GgufFile::open(bin); }, ErrorCode::kFormat, {bin, "not a GGUF file"}));
}

TEST_F(GgufMalformed, BigEndian) {
  EXPECT_TRUE(refuses(Bytes().raw("GGUF").raw(std::string("\0\0\0\3", 4)).u64(0).u64(0),
                      {"big-endian", "version 3"}));
}

TEST_F(GgufMalformed, UnsupportedVersions) {
  EXPECT_TRUE(refuses(Bytes().header(0, 0, 1), {"GGUF version 1 is not supported"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 0, 4), {"unsupported GGUF version 4"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 0, 0), {"unsupported GGUF version 0"}));
  // Version 2 has version 3's layout.
  const std::string p = write("v2.gguf", Bytes().header(0, 1, 2).kv_u32("a", 1).s);
  EXPECT_EQ(GgufFile::open(p).version(), 2u);
}

TEST_F(GgufMalformed, StringLongerThanTheFile) {
  EXPECT_TRUE(
      refuses(Bytes().header(0, 1).key("general.name", ValueType::kString).u64(1000).raw("abc"),
              {"the value of key general.name", "offset 56", "needs 1000 bytes, 3 remain"}));
  // A key's own length.
  EXPECT_TRUE(refuses(Bytes().header(0, 1).u64(5000).raw("general.alignment....").u32(4).u32(32),
                      {"key 0", "needs 5000 bytes"}));
}

TEST_F(GgufMalformed, StringOverTheLimit) {
  EXPECT_TRUE(
      refuses(Bytes().header(0, 1).key("general.name", ValueType::kString).u64(1ull << 62),
              {"key general.name is a string of 4611686018427387904 bytes", "limit of 67108864"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 1).u64(70000).raw(std::string(70000, 'k')).u32(4).u32(1),
                      {"key 0 is 70000 bytes long, more than the limit of 65535"}));
  // A string inside an array.
  EXPECT_TRUE(refuses(Bytes()
                          .header(0, 1)
                          .key("tokenizer.ggml.tokens", ValueType::kArray)
                          .u32(8)
                          .u64(2)
                          .str("a")
                          .u64(~std::uint64_t{0}),
                      {"key tokenizer.ggml.tokens[1] is 18446744073709551615 bytes long"}));
}

TEST_F(GgufMalformed, ArrayLongerThanTheFile) {
  EXPECT_TRUE(refuses(Bytes()
                          .header(0, 1)
                          .key("tokenizer.ggml.scores", ValueType::kArray)
                          .u32(6)
                          .u64(1ull << 30)
                          .u32(0),
                      {"the value of key tokenizer.ggml.scores", "needs 4294967296 bytes"}));
  EXPECT_TRUE(refuses(Bytes()
                          .header(0, 1)
                          .key("tokenizer.ggml.tokens", ValueType::kArray)
                          .u32(8)
                          .u64(1ull << 31)
                          .u64(0),
                      {"array of 2147483648 strings", "cannot fit"}));
}

TEST_F(GgufMalformed, ArrayOverTheLimit) {
  EXPECT_TRUE(
      refuses(Bytes().header(0, 1).key("a", ValueType::kArray).u32(12).u64((1ull << 31) + 1).u64(0),
              {"key a is an array of 2147483649 elements", "limit of 2147483648"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 1).key("a", ValueType::kArray).u32(10).u64(~0ull),
                      {"key a is an array of 18446744073709551615 elements"}));
}

TEST_F(GgufMalformed, CountsBeyondTheFile) {
  // No count reaches a reserve() or a loop before it is bounded by the bytes that follow.
  EXPECT_TRUE(refuses(Bytes().header(0, ~0ull).zeros(100),
                      {"metadata count 18446744073709551615 cannot be right"}));
  EXPECT_TRUE(refuses(Bytes().header(1ull << 59, 0).zeros(100),
                      {"tensor count 576460752303423488 cannot be right"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 1ull << 21).zeros(1 << 22),
                      {"metadata count 2097152", "the limit is 1048576"}));
  EXPECT_TRUE(refuses(Bytes().header(3, 3).zeros(100),
                      {"3 metadata entries and 3 tensor infos cannot fit in the 100 bytes"}));
}

TEST_F(GgufMalformed, NDimsOutOfRange) {
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {1, 1, 1, 1, 1}, 0, 0).pad().zeros(32),
                      {"tensor w has n_dims = 5"}));
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {}, 0, 0).pad().zeros(32),
                      {"tensor w has n_dims = 0"}));
}

TEST_F(GgufMalformed, DimensionZeroOrHuge) {
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {4, 0}, 0, 0).pad().zeros(32),
                      {"tensor w has ne[1] = 0"}));
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {(1ull << 40) + 1}, 0, 0).pad().zeros(32),
                      {"tensor w has ne[0] = 1099511627777", "outside [1, 1099511627776]"}));
}

TEST_F(GgufMalformed, ElementCountOverflows) {
  const std::uint64_t big = 1ull << 40;
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {big, big, big, big}, 0, 0).pad().zeros(32),
                      {"tensor w element count", "overflows 64 bits"}));
}

TEST_F(GgufMalformed, ByteSizeOverflows) {
  // 2^40 * 2^23 elements fit in 64 bits; as F32 their 2^65 bytes do not.
  EXPECT_TRUE(
      refuses(Bytes().header(1, 0).tensor("w", {1ull << 40, 1ull << 23}, 0, 0).pad().zeros(32),
              {"tensor w byte size", "overflows 64 bits"}));
}

TEST_F(GgufMalformed, RowNotAWholeNumberOfBlocks) {
  EXPECT_TRUE(refuses(
      Bytes().header(1, 0).tensor("blk.0.attn_q.weight", {33, 2}, 8, 0).pad().zeros(96),
      {"tensor blk.0.attn_q.weight has ne[0] = 33", "not a multiple of Q8_0's block size 32"}));
}

TEST_F(GgufMalformed, TensorDataPastTheEnd) {
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {16}, 0, 0).pad().zeros(63),
                      {"tensor w (64 bytes at offset 0", "runs past the end of the"}));
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {16}, 0, 1ull << 20).pad().zeros(64),
                      {"tensor w", "offset 1048576", "runs past the end"}));
  // offset + data start wraps around 2^64.
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {16}, 0, ~std::uint64_t{31}).pad().zeros(64),
                      {"tensor w offset", "overflows 64 bits"}));
}

TEST_F(GgufMalformed, TensorOffsetNotAligned) {
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor("w", {4}, 0, 4).pad().zeros(64),
                      {"tensor w has offset 4, not a multiple of the alignment 32"}));
}

TEST_F(GgufMalformed, AlignmentZero) {
  EXPECT_TRUE(refuses(Bytes().header(0, 1).kv_u32("general.alignment", 0),
                      {"general.alignment = 0 is not a power of two"}));
}

TEST_F(GgufMalformed, AlignmentNotAPowerOfTwo) {
  EXPECT_TRUE(refuses(Bytes().header(0, 1).kv_u32("general.alignment", 48),
                      {"general.alignment = 48 is not a power of two"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 1).kv_u32("general.alignment", 4),
                      {"general.alignment = 4 is not a multiple of 8"}));
}

TEST_F(GgufMalformed, AlignmentNotUint32) {
  EXPECT_TRUE(refuses(Bytes().header(0, 1).key("general.alignment", ValueType::kUint64).u64(32),
                      {"general.alignment is uint64 (32), expected uint32"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 1).key("general.alignment", ValueType::kString).str("32"),
                      {"general.alignment is string"}));
}

TEST_F(GgufMalformed, AlignmentIsUsed) {
  // With alignment 64 the data section starts at 64, so offset 32 is misaligned.
  Bytes b;
  b.header(1, 1).kv_u32("general.alignment", 64).tensor("w", {8}, 0, 32).pad(64).zeros(128);
  EXPECT_TRUE(refuses(b, {"tensor w has offset 32, not a multiple of the alignment 64"}));
}

TEST_F(GgufMalformed, UnknownValueType) {
  EXPECT_TRUE(refuses(Bytes().header(0, 1).str("k").u32(13).u32(0),
                      {"key k has value type 13, which is not a GGUF type"}));
  EXPECT_TRUE(refuses(Bytes().header(0, 1).key("k", ValueType::kArray).u32(42).u64(0),
                      {"key k is an array of value type 42"}));
}

TEST_F(GgufMalformed, NestedArray) {
  EXPECT_TRUE(refuses(Bytes().header(0, 1).key("k", ValueType::kArray).u32(9).u64(1).u32(4).u64(0),
                      {"key k is an array of arrays", "nested arrays are not supported"}));
}

TEST_F(GgufMalformed, UnsupportedTensorTypes) {
  auto with_type = [](std::uint32_t type) {
    return Bytes().header(1, 0).tensor("blk.0.attn_q.weight", {256, 2}, type, 0).pad().zeros(2048);
  };
  EXPECT_TRUE(refuses(with_type(11), {"tensor blk.0.attn_q.weight has type 11 (Q3_K), which kvlm "
                                      "does not support"}));
  EXPECT_TRUE(refuses(with_type(15), {"type 15 (Q8_K)"}));  // an activation type, never a weight
  EXPECT_TRUE(refuses(with_type(3), {"type 3 (Q4_1)"}));
  EXPECT_TRUE(refuses(with_type(16), {"type 16 (IQ2_XXS)"}));
  EXPECT_TRUE(refuses(with_type(4), {"type 4 (unknown to ggml)"}));
  EXPECT_TRUE(refuses(with_type(200), {"type 200 (unknown to ggml)"}));
  EXPECT_TRUE(refuses(with_type(0xFFFFFFFFu), {"type 4294967295 (negative as int32: -1)"}));
}

TEST_F(GgufMalformed, DuplicateKey) {
  EXPECT_TRUE(
      refuses(Bytes().header(0, 2).kv_u32("llama.block_count", 1).kv_u32("llama.block_count", 2),
              {"key llama.block_count appears twice (metadata entries 0 and 1)"}));
}

TEST_F(GgufMalformed, DuplicateTensor) {
  EXPECT_TRUE(refuses(Bytes()
                          .header(2, 0)
                          .tensor("output.weight", {8}, 0, 0)
                          .tensor("output.weight", {8}, 0, 32)
                          .pad()
                          .zeros(64),
                      {"tensor output.weight appears twice (tensor infos 0 and 1)"}));
}

TEST_F(GgufMalformed, BoolNeitherZeroNorOne) {
  EXPECT_TRUE(
      refuses(Bytes().header(0, 1).key("tokenizer.ggml.add_bos_token", ValueType::kBool).u8(2),
              {"key tokenizer.ggml.add_bos_token is a bool of value 2, neither 0 nor 1"}));
  EXPECT_TRUE(
      refuses(Bytes().header(0, 1).key("b", ValueType::kArray).u32(7).u64(3).u8(1).u8(0).u8(255),
              {"key b[2] is a bool of value 255"}));
}

TEST_F(GgufMalformed, TensorNameOverTheLimit) {
  EXPECT_TRUE(refuses(Bytes().header(1, 0).tensor(std::string(65, 'x'), {8}, 0, 0).pad().zeros(32),
                      {"the name of tensor 0 is 65 bytes long, more than the limit of 63"}));
}

TEST_F(GgufMalformed, StringsNeedNotBeUtf8) {
  const std::string odd("\xff\xfe\xc3", 3);
  const std::string p = write("odd.gguf", Bytes().header(0, 1).kv_str(odd, odd).s);
  const GgufFile f = GgufFile::open(p);
  EXPECT_EQ(f.keys(), std::vector<std::string>{odd});
  EXPECT_EQ(f.get_string(odd), odd);
}

// --- the Llama loader -----------------------------------------------------------------------

TEST_F(GgufLoader, TinyModelLoadsZeroCopy) {
  TinyModel m;
  const GgufFile f = GgufFile::open(write("tiny.gguf", m.w));
  const ModelFile loaded = load_gguf(f);
  const ModelConfig& c = loaded.config;
  EXPECT_EQ(c.dim, 32);
  EXPECT_EQ(c.hidden_dim, 64);
  EXPECT_EQ(c.n_layers, 1);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 16);
  EXPECT_EQ(c.max_seq_len, 64);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.norm_eps, 1e-6f);
  EXPECT_FALSE(c.shared_classifier);
  EXPECT_EQ(loaded.weights.size(), 12u);
  for (const auto& [name, w] : loaded.weights) {
    EXPECT_EQ(w.data, f.find_tensor(name)->data) << name;
  }
  const WeightView& q = loaded.weights.at("blk.0.attn_q.weight");
  EXPECT_EQ(q.rows, 32);
  EXPECT_EQ(q.cols, 32);
  EXPECT_EQ(loaded.weights.at("blk.0.attn_k.weight").rows, 16);
  EXPECT_EQ(loaded.weights.at("blk.0.ffn_down.weight").cols, 64);
  EXPECT_NO_THROW(Model::from_file(load_gguf(f)));
}

TEST_F(GgufLoader, HalfPrecisionNormsAreConvertedOnce) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(to_string(dtype));
    TinyOptions o;
    o.norm_dtype = dtype;
    TinyModel m(o);
    const GgufFile f = GgufFile::open(write("half.gguf", m.w));
    EXPECT_EQ(f.find_tensor("output_norm.weight")->dtype, dtype);
    const ModelFile loaded = load_gguf(f);
    for (const char* name :
         {"output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"}) {
      const WeightView& w = loaded.weights.at(name);
      EXPECT_EQ(w.dtype, DType::kF32) << name;
      EXPECT_EQ(w.rows, 1);
      ASSERT_EQ(w.cols, 32);
      EXPECT_NE(w.data, f.find_tensor(name)->data) << name;  // converted into the ModelFile
      for (int i = 0; i < 32; ++i) {
        EXPECT_EQ(w.f32()[i], TinyModel::norm_value(static_cast<std::uint64_t>(i))) << name << i;
      }
    }
    EXPECT_EQ(loaded.weights.at("blk.0.attn_q.weight").data,
              f.find_tensor("blk.0.attn_q.weight")->data);
    EXPECT_NO_THROW(Model::from_file(load_gguf(f)));
  }
}

TEST_F(GgufLoader, QuantizedNormIsRefused) {
  TinyOptions o;
  o.norm_dtype = DType::kQ8_0;
  EXPECT_TRUE(
      load_refuses(TinyModel(o), ErrorCode::kFormat,
                   {"tensor output_norm.weight is Q8_0", "norm weights must be F32, F16 or BF16"}));
}

TEST_F(GgufLoader, ClassifierSharedWhenOutputIsAbsent) {
  TinyOptions o;
  o.output = false;
  const ModelFile loaded = load_gguf(write("shared.gguf", TinyModel(o).w));
  EXPECT_TRUE(loaded.config.shared_classifier);
  EXPECT_EQ(loaded.weights.count("output.weight"), 0u);
  EXPECT_NO_THROW(Model::from_file(load_gguf(path("shared.gguf"))));
}

TEST_F(GgufLoader, OtherArchitectureIsRefused) {
  TinyModel m;
  m.w.set("general.architecture", "gemma2");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"architecture 'gemma2' is not supported (kvlm runs 'llama')"}));
  m.w.remove("general.architecture");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"key general.architecture is missing"}));
}

TEST_F(GgufLoader, MissingOrMistypedKeysAreNamed) {
  TinyModel m;
  m.w.remove("llama.embedding_length");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"key llama.embedding_length is missing"}));
  m.w.set("llama.embedding_length", "32");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"key llama.embedding_length is string, expected uint32"}));
  m.w.set("llama.embedding_length", std::uint32_t{32});
  m.w.remove("llama.attention.layer_norm_rms_epsilon");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"llama.attention.layer_norm_rms_epsilon"}));
  m.w.set("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  m.w.set("llama.block_count", std::uint32_t{0});
  EXPECT_TRUE(
      load_refuses(m, ErrorCode::kConfig, {"llama.block_count = 0 is outside [1, 16777216]"}));
}

TEST_F(GgufLoader, DefaultsFollowLlamaCpp) {
  TinyModel m;
  m.w.remove("llama.attention.head_count_kv");
  m.w.remove("llama.rope.freq_base");
  m.w.remove("llama.rope.dimension_count");
  // The config alone: with head_count_kv = head_count the tiny model's K/V shapes are wrong.
  const ModelConfig c = gguf::read_config(GgufFile::open(write("defaults.gguf", m.w)));
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.rope_theta, 10000.0f);
}

TEST_F(GgufLoader, ConfigErrorsArePrefixedWithThePath) {
  TinyModel m;
  m.w.set("llama.attention.head_count_kv", std::uint32_t{3});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig, {"not divisible by n_kv_heads = 3"}));
  m.w.set("llama.attention.head_count_kv", std::uint32_t{2});
  m.w.set("llama.attention.head_count", std::uint32_t{5});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig,
                           {"llama.embedding_length = 32 is not divisible by "
                            "llama.attention.head_count = 5"}));
}

TEST_F(GgufLoader, PartialRopeIsRefused) {
  TinyModel m;
  m.w.set("llama.rope.dimension_count", std::uint32_t{4});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig,
                           {"llama.rope.dimension_count = 4 differs from head_dim = 8",
                            "partial RoPE is not supported"}));
}

TEST_F(GgufLoader, OtherHeadSizeIsRefused) {
  TinyModel m;
  m.w.set("llama.attention.key_length", std::uint32_t{16});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig, {"llama.attention.key_length = 16 differs"}));
  m.w.set("llama.attention.key_length", std::uint32_t{8});
  m.w.set("llama.attention.value_length", std::uint32_t{4});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig, {"llama.attention.value_length = 4 differs"}));
  m.w.set("llama.attention.value_length", std::uint32_t{8});
  EXPECT_NO_THROW(load_gguf(write("ok.gguf", m.w)));
}

TEST_F(GgufLoader, RopeScalingIsRefused) {
  TinyModel m;
  m.w.set("llama.rope.scaling.type", "yarn");
  EXPECT_TRUE(
      load_refuses(m, ErrorCode::kConfig,
                   {"RoPE scaling type 'yarn' (llama.rope.scaling.type) is not supported"}));
  m.w.set("llama.rope.scaling.type", "linear");
  m.w.set("llama.rope.scaling.factor", 4.0f);
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig,
                           {"RoPE scaling 'linear' with llama.rope.scaling.factor = 4"}));
  m.w.remove("llama.rope.scaling.type");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig, {"llama.rope.scaling.factor = 4"}));
  m.w.set("llama.rope.scaling.factor", 1.0f);  // linear by 1 is no scaling
  EXPECT_NO_THROW(load_gguf(write("ok1.gguf", m.w)));
  m.w.set("llama.rope.scaling.type", "none");
  m.w.set("llama.rope.scaling.factor", 8.0f);  // ignored with "none"
  EXPECT_NO_THROW(load_gguf(write("ok2.gguf", m.w)));
}

TEST_F(GgufLoader, RopeFreqsTensorIsRefused) {
  TinyModel m;
  m.add({}, "rope_freqs.weight", DType::kF32, {4});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig, {"tensor rope_freqs.weight", "not supported"}));
}

TEST_F(GgufLoader, MixtureOfExpertsIsRefused) {
  TinyModel m;
  m.w.set("llama.expert_count", std::uint32_t{8});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kConfig,
                           {"llama.expert_count = 8: mixtures of experts are not supported"}));
  m.w.set("llama.expert_count", std::uint32_t{0});
  EXPECT_NO_THROW(load_gguf(write("ok.gguf", m.w)));
}

TEST_F(GgufLoader, UnknownTensorsAreRefused) {
  {
    TinyModel m;
    m.add({}, "blk.0.attn_q.bias", DType::kF32, {32});
    EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                             {"tensor blk.0.attn_q.bias is not one of the weights of a Llama "
                              "model with 1 layers"}));
  }
  {
    TinyModel m;
    m.add({}, "blk.1.attn_q.weight", DType::kF32, {32, 32});  // a layer past block_count
    EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"tensor blk.1.attn_q.weight is not one"}));
  }
}

TEST_F(GgufLoader, MissingTensorIsNamed) {
  TinyOptions o;
  o.skip_tensor = "blk.0.ffn_up.weight";
  EXPECT_TRUE(
      load_refuses(TinyModel(o), ErrorCode::kFormat, {"missing tensor blk.0.ffn_up.weight"}));
}

TEST_F(GgufLoader, WrongShapeIsNamed) {
  TinyOptions o;
  o.skip_tensor = "blk.0.attn_k.weight";
  TinyModel m(o);
  m.add({}, "blk.0.attn_k.weight", DType::kF32, {32, 32});  // [32, 32]: 4 KV heads, not 2
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"tensor blk.0.attn_k.weight has ne [32, 32], expected [16, 32]"}));
  TinyOptions o3;
  o3.skip_tensor = "blk.0.attn_v.weight";
  TinyModel m3(o3);
  m3.add({}, "blk.0.attn_v.weight", DType::kF32, {32, 8, 2});
  EXPECT_TRUE(load_refuses(m3, ErrorCode::kFormat,
                           {"tensor blk.0.attn_v.weight has ne [32, 8, 2], expected [16, 32]"}));
}

TEST_F(GgufLoader, VocabSizeFromTheKeyOrTheEmbedding) {
  TinyModel m;
  m.w.set("llama.vocab_size", std::uint32_t{16});
  EXPECT_EQ(load_gguf(write("a.gguf", m.w)).config.vocab_size, 16);
  m.w.set("llama.vocab_size", std::uint32_t{17});  // then token_embd has the wrong shape
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"tensor token_embd.weight has ne [32, 16], expected [17, 32]"}));
  m.w.remove("llama.vocab_size");
  EXPECT_EQ(load_gguf(write("b.gguf", m.w)).config.vocab_size, 16);
}

TEST_F(GgufLoader, TokenCountMustMatchTheModel) {
  TinyModel m;
  std::vector<std::string> tokens(15, "x");
  m.w.set_array("tokenizer.ggml.tokens", tokens);
  m.w.set_array("tokenizer.ggml.scores", std::vector<float>(15, 0.0f));
  m.w.set_array("tokenizer.ggml.token_type", std::vector<std::int32_t>(15, 1));
  EXPECT_TRUE(
      load_refuses(m, ErrorCode::kFormat,
                   {"tokenizer.ggml.tokens has 15 tokens but the model's vocabulary has 16"}));
}

// --- the embedded vocabulary ------------------------------------------------------------------

TEST_F(GgufVocab, ReadsEveryField) {
  TinyModel m;
  m.w.set("tokenizer.ggml.add_bos_token", false);
  m.w.set("tokenizer.ggml.add_eos_token", true);
  m.w.set("tokenizer.ggml.add_space_prefix", false);
  m.w.set("tokenizer.ggml.remove_extra_whitespaces", true);
  const ModelFile loaded = load_gguf(write("v.gguf", m.w));
  ASSERT_TRUE(loaded.vocab.has_value());
  const TokenizerVocab& v = *loaded.vocab;
  EXPECT_EQ(v.model, "llama");
  ASSERT_EQ(v.tokens.size(), 16u);
  EXPECT_EQ(v.tokens[5], "\xe2\x96\x81t5");
  EXPECT_EQ(v.scores[5], -5.0f);
  EXPECT_EQ(v.token_types[0], 2);
  EXPECT_EQ(v.bos, 1);
  EXPECT_EQ(v.eos, 2);
  EXPECT_EQ(v.unk, 0);
  EXPECT_EQ(v.pad, -1);
  EXPECT_FALSE(v.add_bos);
  EXPECT_TRUE(v.add_eos);
  EXPECT_FALSE(v.add_space_prefix);
  EXPECT_TRUE(v.remove_extra_whitespaces);
}

TEST_F(GgufVocab, DefaultsForAbsentKeys) {
  TinyModel m;
  for (const char* key : {"tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                          "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"}) {
    EXPECT_TRUE(m.w.remove(key)) << key;
  }
  const TokenizerVocab v = gguf::read_vocab(GgufFile::open(write("d.gguf", m.w)));
  const TokenizerVocab defaults;
  EXPECT_EQ(v.scores, std::vector<float>(16, 0.0f));
  EXPECT_EQ(v.token_types, std::vector<std::int32_t>(16, 1));
  EXPECT_EQ(v.bos, -1);
  EXPECT_EQ(v.eos, -1);
  EXPECT_EQ(v.unk, -1);
  EXPECT_EQ(v.pad, -1);
  EXPECT_EQ(v.add_bos, defaults.add_bos);
  EXPECT_EQ(v.add_eos, defaults.add_eos);
  EXPECT_EQ(v.add_space_prefix, defaults.add_space_prefix);
  EXPECT_EQ(v.remove_extra_whitespaces, defaults.remove_extra_whitespaces);
}

TEST_F(GgufVocab, AbsentWithoutTokenizerModel) {
  TinyOptions o;
  o.vocab = false;
  const std::string p = write("novocab.gguf", TinyModel(o).w);
  EXPECT_FALSE(load_gguf(p).vocab.has_value());
  EXPECT_FALSE(gguf::find_vocab(GgufFile::open(p)).has_value());
  EXPECT_TRUE(throws_error([&] { gguf::read_vocab(GgufFile::open(p)); }, ErrorCode::kFormat,
                           {p, "key tokenizer.ggml.model is missing"}));
  TinyModel m(o);
  m.w.set("tokenizer.ggml.model", "llama");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"key tokenizer.ggml.tokens is missing"}));
  m.w.set_array("tokenizer.ggml.tokens", std::vector<std::string>{});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"tokenizer.ggml.tokens has 0 tokens"}));
}

TEST_F(GgufVocab, ArrayLengthsMustMatchTheTokens) {
  TinyModel m;
  m.w.set_array("tokenizer.ggml.scores", std::vector<float>(3, 0.0f));
  EXPECT_TRUE(
      load_refuses(m, ErrorCode::kFormat,
                   {"tokenizer.ggml.scores has 3 entries but tokenizer.ggml.tokens has 16"}));
  m.w.set_array("tokenizer.ggml.scores", std::vector<float>(16, 0.0f));
  m.w.set_array("tokenizer.ggml.token_type", std::vector<std::int32_t>(17, 1));
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"tokenizer.ggml.token_type has 17 entries"}));
}

TEST_F(GgufVocab, ArrayTypesAreChecked) {
  TinyModel m;
  m.w.set_array("tokenizer.ggml.scores", std::vector<std::uint8_t>(16, 0));
  EXPECT_TRUE(
      load_refuses(m, ErrorCode::kFormat,
                   {"key tokenizer.ggml.scores is array of uint8, expected array of float32"}));
  m.w.set_array("tokenizer.ggml.scores", std::vector<float>(16, 0.0f));
  m.w.set_array("tokenizer.ggml.tokens", std::vector<float>(16, 0.0f));
  EXPECT_TRUE(
      load_refuses(m, ErrorCode::kFormat,
                   {"key tokenizer.ggml.tokens is array of float32, expected array of string"}));
  m.w.set("tokenizer.ggml.tokens", "not an array");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"key tokenizer.ggml.tokens is string"}));
}

TEST_F(GgufVocab, TokenTypesOutOfRange) {
  TinyModel m;
  std::vector<std::int32_t> types(16, 1);
  types[7] = 9;
  m.w.set_array("tokenizer.ggml.token_type", types);
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"tokenizer.ggml.token_type[7] = 9 is not a token type (0..6)"}));
}

TEST_F(GgufVocab, SpecialIdsMustBeTokens) {
  TinyModel m;
  m.w.set("tokenizer.ggml.bos_token_id", std::uint32_t{16});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"tokenizer.ggml.bos_token_id = 16 is not a token id (the vocabulary "
                            "has 16 tokens)"}));
  m.w.set("tokenizer.ggml.bos_token_id", std::uint32_t{1});
  m.w.set("tokenizer.ggml.eos_token_id", std::uint32_t{0xFFFFFFFE});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"tokenizer.ggml.eos_token_id = 4294967294"}));
  m.w.set("tokenizer.ggml.eos_token_id", std::int32_t{-2});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat, {"tokenizer.ggml.eos_token_id = -2"}));
  m.w.set("tokenizer.ggml.eos_token_id", std::int32_t{-1});  // none, as an int32
  m.w.set("tokenizer.ggml.unknown_token_id", "0");
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"key tokenizer.ggml.unknown_token_id is string, expected an integer"}));
  m.w.set("tokenizer.ggml.unknown_token_id", std::uint32_t{0xFFFFFFFF});
  const TokenizerVocab v = *load_gguf(write("ok.gguf", m.w)).vocab;
  EXPECT_EQ(v.eos, -1);
  EXPECT_EQ(v.unk, -1);
}

TEST_F(GgufVocab, BoolKeysMustBeBools) {
  TinyModel m;
  m.w.set("tokenizer.ggml.add_bos_token", std::uint8_t{1});
  EXPECT_TRUE(load_refuses(m, ErrorCode::kFormat,
                           {"key tokenizer.ggml.add_bos_token is uint8, expected bool"}));
}

}  // namespace
}  // namespace kvlm
