// KVCache: its size, the shape of each layer's K and V, that no two of them share memory, and
// the size a Session's cache has for a real model.

#include "kvlm/kv_cache.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include "kvlm/session.hpp"
#include "models.hpp"

namespace kvlm {
namespace {

std::size_t expected_bytes(const KVCacheShape& s) {
  return 2 * static_cast<std::size_t>(s.n_layers) * s.max_seq_len * s.n_kv_heads * s.head_dim *
         sizeof(float);
}

TEST(KVCache, ByteSizeIsTwoTimesLayersPositionsKvHeadsHeadDim) {
  for (const KVCacheShape& s : {KVCacheShape{5, 512, 4, 8}, KVCacheShape{1, 1, 1, 2},
                                KVCacheShape{3, 17, 2, 6}, KVCacheShape{2, 96, 8, 8}}) {
    const KVCache<float> cache(s);
    EXPECT_EQ(cache.byte_size(), expected_bytes(s))
        << s.n_layers << " layers, " << s.max_seq_len << " positions, " << s.n_kv_heads
        << " KV heads, head_dim " << s.head_dim;
  }
  EXPECT_EQ(KVCache<float>(KVCacheShape{5, 512, 4, 8}).byte_size(), 655360u);
}

TEST(KVCache, EachLayerHasKeysAndValuesOfPositionsByKvDim) {
  const KVCacheShape shape{3, 17, 2, 6};
  KVCache<float> cache(shape);
  EXPECT_EQ(cache.shape().n_layers, 3);
  for (int l = 0; l < shape.n_layers; ++l) {
    for (const TensorView<float>& part : {cache.keys(l), cache.values(l)}) {
      EXPECT_EQ(part.rank(), 2);
      EXPECT_EQ(part.rows(), shape.max_seq_len);
      EXPECT_EQ(part.cols(), shape.n_kv_heads * shape.head_dim);
    }
    const KVCache<float>& const_cache = cache;
    EXPECT_EQ(const_cache.keys(l).data(), cache.keys(l).data());
    EXPECT_EQ(const_cache.values(l).data(), cache.values(l).data());
  }
}

TEST(KVCache, LayersKeysAndValuesDoNotOverlap) {
  const KVCacheShape shape{4, 13, 3, 4};
  KVCache<float> cache(shape);
  std::set<const float*> starts;
  // A distinct value for every element of every part: (layer, K or V, index).
  auto pattern = [](int layer, int which, std::int64_t i) {
    return static_cast<float>((layer * 2 + which) * 100000 + i);
  };
  for (int l = 0; l < shape.n_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      const TensorView<float> part = which == 0 ? cache.keys(l) : cache.values(l);
      starts.insert(part.data());
      for (std::int64_t i = 0; i < part.size(); ++i) part[i] = pattern(l, which, i);
    }
  }
  EXPECT_EQ(starts.size(), 2u * shape.n_layers);
  // Had any two parts overlapped, a later write would have replaced an earlier one.
  for (int l = 0; l < shape.n_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      const TensorView<const float> part =
          which == 0 ? std::as_const(cache).keys(l) : std::as_const(cache).values(l);
      for (std::int64_t i = 0; i < part.size(); ++i) {
        ASSERT_EQ(part[i], pattern(l, which, i))
            << (which == 0 ? "keys" : "values") << " of layer " << l << ", element " << i;
      }
    }
  }
}

TEST(KVCache, StartsZeroed) {
  KVCache<float> cache(KVCacheShape{2, 8, 2, 4});
  for (int l = 0; l < 2; ++l) {
    for (std::int64_t i = 0; i < cache.keys(l).size(); ++i) {
      EXPECT_EQ(cache.keys(l)[i], 0.0f);
      EXPECT_EQ(cache.values(l)[i], 0.0f);
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
