// KVCache: its size for each element type, the shape of each layer's K and V, that no two of them
// share memory, conversion on store, the context shift's move and re-rotation, and the size a
// Session's cache has for a real model.

#include "kvlm/kv_cache.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <set>
#include <string>
#include <utility>

#include "kvlm/session.hpp"
#include "expect_error.hpp"
#include "models.hpp"

namespace kvlm {
namespace {

std::size_t expected_bytes(const KVCacheShape& s) {
  return 2 * static_cast<std::size_t>(s.n_layers) * s.max_seq_len *
         row_bytes(s.type, std::int64_t{s.n_kv_heads} * s.head_dim);
}

TEST(KVCache, ByteSizeIsTwoTimesLayersPositionsRowBytes) {
  for (const KVCacheShape& s : {KVCacheShape{5, 512, 4, 8}, KVCacheShape{1, 1, 1, 2},
                                KVCacheShape{3, 17, 2, 6}, KVCacheShape{2, 96, 8, 8},
                                KVCacheShape{2, 96, 8, 8, DType::kF16},
                                KVCacheShape{2, 96, 8, 8, DType::kBF16},
                                KVCacheShape{2, 96, 8, 8, DType::kQ8_0}}) {
    const KVCache cache(s);
    EXPECT_EQ(cache.byte_size(), expected_bytes(s))
        << s.n_layers << " layers, " << s.max_seq_len << " positions, " << s.n_kv_heads
        << " KV heads, head_dim " << s.head_dim << ", " << to_string(s.type);
  }
  EXPECT_EQ(KVCache(KVCacheShape{5, 512, 4, 8}).byte_size(), 655360u);
  // 16-bit types halve it; Q8_0 stores 32 values in 34 bytes.
  EXPECT_EQ(KVCache(KVCacheShape{5, 512, 4, 8, DType::kF16}).byte_size(), 327680u);
  EXPECT_EQ(KVCache(KVCacheShape{5, 512, 4, 8, DType::kQ8_0}).byte_size(), 2u * 5 * 512 * 34);
}

TEST(KVCache, RefusesTypesItCannotStore) {
  EXPECT_TRUE(test::throws_error([] { KVCache(KVCacheShape{1, 4, 1, 8, DType::kQ4_0}); },
                                 ErrorCode::kInvalidArgument, {"not one of F32, F16, BF16, Q8_0"}));
  EXPECT_TRUE(test::throws_error([] { KVCache(KVCacheShape{1, 4, 3, 8, DType::kQ8_0}); },
                                 ErrorCode::kInvalidArgument, {"n_kv_heads * head_dim = 24"}));
}

TEST(KVCache, EachLayerHasKeysAndValuesOfPositionsByKvDim) {
  for (DType type : {DType::kF32, DType::kF16, DType::kQ8_0}) {
    const KVCacheShape shape{3, 17, 4, 8, type};
    KVCache cache(shape);
    EXPECT_EQ(cache.shape().n_layers, 3);
    for (int l = 0; l < shape.n_layers; ++l) {
      for (const KVRows& part : {cache.keys(l), cache.values(l)}) {
        EXPECT_EQ(part.type, type);
        EXPECT_EQ(part.rows, shape.max_seq_len);
        EXPECT_EQ(part.cols, shape.n_kv_heads * shape.head_dim);
        EXPECT_EQ(part.row_bytes, row_bytes(type, 32));
        EXPECT_EQ(part.row(1) - part.row(0), static_cast<std::ptrdiff_t>(part.row_bytes));
      }
    }
  }
}

TEST(KVCache, LayersKeysAndValuesDoNotOverlap) {
  const KVCacheShape shape{4, 13, 3, 4};
  KVCache cache(shape);
  std::set<const std::byte*> starts;
  // A distinct value for every element of every part: (layer, K or V, index).
  auto pattern = [](int layer, int which, std::int64_t i) {
    return static_cast<float>((layer * 2 + which) * 100000 + i);
  };
  const auto floats = [&](int l, int which) {
    return (which == 0 ? cache.keys(l) : cache.values(l)).f32();
  };
  for (int l = 0; l < shape.n_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      const TensorView<float> part = floats(l, which);
      starts.insert(reinterpret_cast<const std::byte*>(part.data()));
      for (std::int64_t i = 0; i < part.size(); ++i) part[i] = pattern(l, which, i);
    }
  }
  EXPECT_EQ(starts.size(), 2u * shape.n_layers);
  // Had any two parts overlapped, a later write would have replaced an earlier one.
  for (int l = 0; l < shape.n_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      const TensorView<float> part = floats(l, which);
      for (std::int64_t i = 0; i < part.size(); ++i) {
        ASSERT_EQ(part[i], pattern(l, which, i))
            << (which == 0 ? "keys" : "values") << " of layer " << l << ", element " << i;
      }
    }
  }
}

TEST(KVCache, StartsZeroed) {
  KVCache cache(KVCacheShape{2, 8, 2, 4});
  for (int l = 0; l < 2; ++l) {
    for (std::int64_t i = 0; i < cache.keys(l).f32().size(); ++i) {
      EXPECT_EQ(cache.keys(l).f32()[i], 0.0f);
      EXPECT_EQ(cache.values(l).f32()[i], 0.0f);
    }
  }
}

// store() writes what the type's reference quantizer writes; reading back is within its rounding.
TEST(KVCache, StoreConvertsFromFloat) {
  std::vector<float> x(2 * 32);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0}) {
    KVCache cache({1, 4, 4, 8, type});
    cache.keys(0).store(1, TensorView<const float>(x.data(), {2, 32}));
    std::vector<std::byte> expected(row_bytes(type, 32));
    kernels::scalar::from_float(type, x.data() + 32, expected.data(), 32);
    EXPECT_EQ(std::memcmp(cache.keys(0).row(2), expected.data(), expected.size()), 0)
        << to_string(type);
  }
}

// A shift drops rows, moves the rest down and turns the moved keys back: a key stored for
// position p reads as the key rope() makes for p - n_discard; values just move.
TEST(KVCache, ShiftMovesRowsAndTurnsKeysBack) {
  const int head_dim = 8, n_kv_heads = 4, kv_dim = 32, positions = 12;
  const RopeTable rope_table(head_dim, positions, 10000.0f);
  std::vector<float> raw(static_cast<std::size_t>(positions) * kv_dim);
  for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = std::cos(0.11f * static_cast<float>(i));
  KVCache cache({1, positions, n_kv_heads, head_dim, DType::kF32});
  std::vector<float> rotated = raw;
  rope(TensorView<float>(rotated.data(), {positions, kv_dim}), head_dim, 0, rope_table);
  cache.keys(0).store(0, TensorView<const float>(rotated.data(), {positions, kv_dim}));
  cache.values(0).store(0, TensorView<const float>(raw.data(), {positions, kv_dim}));
  std::vector<float> row(kv_dim);
  const int n_keep = 2, n_discard = 3, n_moved = 5;  // rows [5, 10) move to [2, 7)
  cache.shift(n_keep, n_discard, n_moved, rope_table, TensorView<float>(row.data(), {1, kv_dim}));
  for (int p = 0; p < n_keep + n_moved; ++p) {
    const int source = p < n_keep ? p : p + n_discard;
    std::vector<float> expected(raw.begin() + source * kv_dim, raw.begin() + (source + 1) * kv_dim);
    rope(TensorView<float>(expected.data(), {1, kv_dim}), head_dim, p, rope_table);
    for (int i = 0; i < kv_dim; ++i) {
      ASSERT_NEAR(cache.keys(0).f32().row(p)[i], expected[i], 1e-6f) << "position " << p;
      ASSERT_EQ(cache.values(0).f32().row(p)[i], raw[static_cast<std::size_t>(source * kv_dim + i)]);
    }
  }
}

TEST(KVCacheSession, Stories260KCacheSizeFollowsMaxSeqLen) {
  KVLM_REQUIRE_MODEL(bin, "stories260K/stories260K.bin");
  const auto model = Model::load(bin);
  // 2 (K, V) * 5 layers * 512 positions * 4 KV heads * head_dim 8 * 4 bytes.
  EXPECT_EQ(Session(model, SessionOptions{}).kv_cache_bytes(), 2u * 5 * 512 * 4 * 8 * 4);
  EXPECT_EQ(Session(model, SessionOptions{}).kv_cache_bytes(), 655360u);
  for (int max_seq_len : {1, 64, 100, 512}) {
    SessionOptions options;
    options.max_seq_len = max_seq_len;
    EXPECT_EQ(Session(model, options).kv_cache_bytes(),
              2u * 5 * static_cast<std::size_t>(max_seq_len) * 4 * 8 * 4)
        << "max_seq_len " << max_seq_len;
  }
}

}  // namespace
}  // namespace kvlm
