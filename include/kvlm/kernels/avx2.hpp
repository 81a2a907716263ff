#pragma once
// AVX2 kernels (with FMA and F16C: Intel Haswell and later, AMD Zen and later). Every function
// carries its target attribute, so this header compiles in a host built without -march flags;
// kernels/kernels.hpp calls these only on a CPU that has the features. Each kernel has a scalar
// twin in kernels/scalar.hpp; row and block layouts are described there and in dtype.hpp.
//
// A gemv reads the rows one after another (kRowStep = 1, one accumulator per row), one stream
// the hardware prefetcher follows, and on a large matrix also prefetches the next rows into L2,
// as kernels/avx512.hpp explains.

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvlm/dtype.hpp"
#include "kvlm/kernels/panel.hpp"
#include "kvlm/kernels/scalar.hpp"

#define KVLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

// Unrolls the loops over a tile's tokens, so that its accumulators live in registers.
#define KVLM_UNROLL_AVX2 _Pragma("GCC unroll 8")

namespace kvlm::kernels::avx2 {

constexpr int kRowStep = 1;  // rows one after another (kernels/avx512.hpp)

// Matrices from this size on are prefetched: well beyond a core's L2 (kernels/avx512.hpp).
constexpr std::int64_t kPrefetchMinBytes = std::int64_t{4} << 20;

// How far ahead, in elements (or blocks), the group of rows starting at row r prefetches: the
// next group, or 0 (no prefetching) for the last group and for matrices small enough to stay in
// cache. row_size: elements (or blocks) per row.
inline std::int64_t prefetch_distance(std::int64_t r, std::int64_t rows, std::int64_t row_size,
                                      std::int64_t bytes) {
  const bool next_group = r + 2 * kRowStep <= rows;
  return bytes >= kPrefetchMinBytes && next_group ? kRowStep * row_size : 0;
}

// Prefetches the cache line at p into L2.
template <typename T>
void prefetch_l2(const T* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1);
}

KVLM_TARGET_AVX2 inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KVLM_TARGET_AVX2 inline float horizontal_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// --- Float weights (F32, F16, BF16) times a float activation ------------------------------------

// How each float type loads 8 elements as floats, and converts one (for the last cols % 8).
struct F32 {
  using Element = float;
  KVLM_TARGET_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  static float to_float(float v) { return v; }
};

struct F16 {
  using Element = std::uint16_t;
  KVLM_TARGET_AVX2 static __m256 load(const std::uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float to_float(std::uint16_t h) { return fp16_to_fp32(h); }
};

struct BF16 {
  using Element = std::uint16_t;
  // A bfloat16 is the top half of a float32: widen to 32 bits and shift into place.
  KVLM_TARGET_AVX2 static __m256 load(const std::uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float to_float(std::uint16_t h) { return bf16_to_fp32(h); }
};

// y[0, kRows) = w · x; w: [kRows, cols] of Type, x: [cols]. Prefetches from w + ahead on unless
// ahead is 0.
template <typename Type, int kRows>
KVLM_TARGET_AVX2 inline void gemv_float_rows(const typename Type::Element* w, std::int64_t cols,
                                             const float* x, float* y, std::int64_t ahead) {
  constexpr int kPerLine = 64 / sizeof(typename Type::Element);  // 16 or 32 elements
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + kPerLine <= cols; i += kPerLine) {  // a cache line of each row
    if (ahead != 0) {
      for (int r = 0; r < kRows; ++r) prefetch_l2(w + r * cols + i + ahead);
    }
    for (int k = 0; k < kPerLine; k += 8) {
      const __m256 xv = _mm256_loadu_ps(x + i + k);
      for (int r = 0; r < kRows; ++r) {
        acc[r] = _mm256_fmadd_ps(Type::load(w + r * cols + i + k), xv, acc[r]);
      }
    }
  }
  for (; i + 8 <= cols; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    for (int r = 0; r < kRows; ++r) {
      acc[r] = _mm256_fmadd_ps(Type::load(w + r * cols + i), xv, acc[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    float sum = horizontal_sum(acc[r]);
    for (std::int64_t j = i; j < cols; ++j) sum += Type::to_float(w[r * cols + j]) * x[j];
    y[r] = sum;
  }
}

// y = W x; w: [rows, cols] of Type, x: [cols] floats, y: [rows].
template <typename Type>
KVLM_TARGET_AVX2 inline void gemv_float(const void* w, std::int64_t rows, std::int64_t cols,
                                        const void* x, float* y) {
  const auto* wt = static_cast<const typename Type::Element*>(w);
  const auto* xf = static_cast<const float*>(x);
  const std::int64_t bytes = rows * cols * static_cast<std::int64_t>(sizeof(*wt));
  std::int64_t r = 0;
  for (; r + kRowStep <= rows; r += kRowStep) {
    const std::int64_t ahead = prefetch_distance(r, rows, cols, bytes);
    gemv_float_rows<Type, kRowStep>(wt + r * cols, cols, xf, y + r, ahead);
  }
  for (; r < rows; ++r) gemv_float_rows<Type, 1>(wt + r * cols, cols, xf, y + r, 0);
}

// --- Quantized weights (Q8_0, Q4_0) ------------------------------------------------------------
// Each Kernel below adds block column b of kRows rows (stride blocks apart) times the activation
// into acc[kRows]: 8 float lanes per row, summed at the end.

// The 32 q + 8 (in [0, 15]) of a Q4_0 block in element order: low nibbles, then high nibbles.
KVLM_TARGET_AVX2 inline __m256i load_q4_0(const BlockQ4_0& b) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(packed),
                                               _mm_srli_epi16(packed, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

KVLM_TARGET_AVX2 inline __m256i load_q8_0(const BlockQ8_0& b) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
}

// Q8_0 weights times a quantized activation (BlockQ8_0).
struct Q8_0TimesQ8 {
  using Block = BlockQ8_0;
  using Activation = BlockQ8_0;

  template <int kRows>
  KVLM_TARGET_AVX2 static void step(const BlockQ8_0* w, std::int64_t stride, const BlockQ8_0* x,
                                    std::int64_t b, __m256* acc) {
    const __m256i xq = load_q8_0(x[b]);
    const float dx = _cvtsh_ss(x[b].d);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < kRows; ++r) {
      const BlockQ8_0& wb = w[r * stride + b];
      const __m256i wq = load_q8_0(wb);
      // maddubs multiplies unsigned by signed bytes: |w| times x with w's sign, which cannot
      // overflow since x is never -128; adjacent pairs summed to int16 (at most 2 * 128 * 127).
      const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(xq, wq));
      const __m256i sums = _mm256_madd_epi16(pairs, ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(_cvtsh_ss(wb.d) * dx),
                               acc[r]);
    }
  }
};

// Q4_0 weights times a quantized activation (BlockQ8_0).
struct Q4_0TimesQ8 {
  using Block = BlockQ4_0;
  using Activation = BlockQ8_0;

  template <int kRows>
  KVLM_TARGET_AVX2 static void step(const BlockQ4_0* w, std::int64_t stride, const BlockQ8_0* x,
                                    std::int64_t b, __m256* acc) {
    const __m256i xq = load_q8_0(x[b]);
    const float dx = _cvtsh_ss(x[b].d);
    const __m256i ones = _mm256_set1_epi16(1);
    // The weights are stored as q + 8: subtracting 8 * (x[j] + x[j + 1]) from each pair's sum
    // takes the 8 off.
    const __m256i offset = _mm256_maddubs_epi16(_mm256_set1_epi8(8), xq);
    for (int r = 0; r < kRows; ++r) {
      const BlockQ4_0& wb = w[r * stride + b];
      const __m256i pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(load_q4_0(wb), xq), offset);
      const __m256i sums = _mm256_madd_epi16(pairs, ones);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(_cvtsh_ss(wb.d) * dx),
                               acc[r]);
    }
  }
};

// Q8_0 weights times a float activation, dequantized in registers.
struct Q8_0TimesF32 {
  using Block = BlockQ8_0;
  using Activation = float;

  template <int kRows>
  KVLM_TARGET_AVX2 static void step(const BlockQ8_0* w, std::int64_t stride, const float* x,
                                    std::int64_t b, __m256* acc) {
    const float* xb = x + b * BlockQ8_0::kSize;
    __m256 xv[4];
    for (int k = 0; k < 4; ++k) xv[k] = _mm256_loadu_ps(xb + 8 * k);
    for (int r = 0; r < kRows; ++r) {
      const BlockQ8_0& wb = w[r * stride + b];
      __m256 qx = _mm256_setzero_ps();
      for (int k = 0; k < 4; ++k) {
        const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wb.qs + 8 * k));
        qx = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), xv[k], qx);
      }
      acc[r] = _mm256_fmadd_ps(qx, _mm256_set1_ps(_cvtsh_ss(wb.d)), acc[r]);
    }
  }
};

// Q4_0 weights times a float activation, dequantized in registers.
struct Q4_0TimesF32 {
  using Block = BlockQ4_0;
  using Activation = float;

  template <int kRows>
  KVLM_TARGET_AVX2 static void step(const BlockQ4_0* w, std::int64_t stride, const float* x,
                                    std::int64_t b, __m256* acc) {
    const float* xb = x + b * BlockQ4_0::kSize;
    __m256 xv[4];
    for (int k = 0; k < 4; ++k) xv[k] = _mm256_loadu_ps(xb + 8 * k);
    const __m256i eight = _mm256_set1_epi32(8);
    for (int r = 0; r < kRows; ++r) {
      const BlockQ4_0& wb = w[r * stride + b];
      __m256 qx = _mm256_setzero_ps();
      for (int k = 0; k < 2; ++k) {  // bytes 8k .. 8k + 7: elements 8k.. (low) and 16 + 8k.. (high)
        const __m256i bytes = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wb.qs + 8 * k)));
        const __m256i low = _mm256_sub_epi32(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0F)), eight);
        const __m256i high = _mm256_sub_epi32(_mm256_srli_epi32(bytes, 4), eight);
        qx = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low), xv[k], qx);
        qx = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high), xv[k + 2], qx);
      }
      acc[r] = _mm256_fmadd_ps(qx, _mm256_set1_ps(_cvtsh_ss(wb.d)), acc[r]);
    }
  }
};

// y[0, kRows) = w · x; w: [kRows, n_blocks] blocks, x: the activation of n_blocks blocks.
// Prefetches from w + ahead on unless ahead is 0, every other block (about a cache line).
template <typename Kernel, int kRows>
KVLM_TARGET_AVX2 inline void gemv_blocks_rows(const typename Kernel::Block* w, std::int64_t n_blocks,
                                              const typename Kernel::Activation* x, float* y,
                                              std::int64_t ahead) {
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  std::int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    if (ahead != 0) {
      for (int r = 0; r < kRows; ++r) prefetch_l2(w + r * n_blocks + b + ahead);
    }
    Kernel::template step<kRows>(w, n_blocks, x, b, acc);
    Kernel::template step<kRows>(w, n_blocks, x, b + 1, acc);
  }
  if (b < n_blocks) Kernel::template step<kRows>(w, n_blocks, x, b, acc);
  for (int r = 0; r < kRows; ++r) y[r] = horizontal_sum(acc[r]);
}

// y = W x; w: [rows, cols] of Kernel::Block, x: [cols] as Kernel::Activation, y: [rows].
template <typename Kernel>
KVLM_TARGET_AVX2 inline void gemv_blocks(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, float* y) {
  const auto* wb = static_cast<const typename Kernel::Block*>(w);
  const auto* xa = static_cast<const typename Kernel::Activation*>(x);
  const std::int64_t n_blocks = cols / Kernel::Block::kSize;
  const std::int64_t bytes = rows * n_blocks * static_cast<std::int64_t>(sizeof(*wb));
  std::int64_t r = 0;
  for (; r + kRowStep <= rows; r += kRowStep) {
    const std::int64_t ahead = prefetch_distance(r, rows, n_blocks, bytes);
    gemv_blocks_rows<Kernel, kRowStep>(wb + r * n_blocks, n_blocks, xa, y + r, ahead);
  }
  for (; r < rows; ++r) gemv_blocks_rows<Kernel, 1>(wb + r * n_blocks, n_blocks, xa, y + r, 0);
}


// --- K types (Q4_K, Q5_K, Q6_K; layouts in dtype.hpp) -------------------------------------------
// One step handles one 256-weight block column of kRows rows, as in kernels/avx512.hpp: unsigned
// q (Q6_K's stored as q + 32) times the BlockQ8_K activation's int8 with maddubs (pair sums at
// most 2 * 63 * 127), then madd by the sub-block scales into int32 lanes, exactly; the minimums
// (Q4_K, Q5_K) and the offset 32 (Q6_K) come off through the activation's bsums. The float
// kernels dequantize each row's block (to_float, bit for bit) into an L1 buffer and multiply
// that by x.

// The q of a Q4_K or Q5_K block as 8 vectors of 32 bytes: q[s] is sub-block s, in order.
template <typename Block>
KVLM_TARGET_AVX2 inline void load_q_k4(const Block& b, __m256i* q) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i h = _mm256_setzero_si256();
  if constexpr (std::is_same_v<Block, BlockQ5_K>) h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh));
  for (int c = 0; c < 4; ++c) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * c));
    q[2 * c] = _mm256_and_si256(packed, low4);
    q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
    if constexpr (std::is_same_v<Block, BlockQ5_K>) {
      // Sub-blocks 2c and 2c + 1 take their fifth bits from bits 0 and 1 of h = qh >> 2c.
      const __m256i bit4 = _mm256_set1_epi8(0x10);
      q[2 * c] = _mm256_or_si256(q[2 * c], _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4));
      q[2 * c + 1] = _mm256_or_si256(q[2 * c + 1], _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4));
      h = _mm256_srli_epi16(h, 2);
    }
  }
}

// The q + 32 (in [0, 63]) of a Q6_K block as 8 vectors of 32 bytes in element order.
KVLM_TARGET_AVX2 inline void load_q_q6_k(const BlockQ6_K& b, __m256i* q) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i bits45 = _mm256_set1_epi8(0x30);
  for (int h = 0; h < 2; ++h) {
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.ql + 64 * h));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.ql + 64 * h + 32));
    const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h));
    __m256i* o = q + 4 * h;
    o[0] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), bits45));
    o[1] = _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), bits45));
    o[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_and_si256(hb, bits45));
    o[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                           _mm256_and_si256(_mm256_srli_epi16(hb, 2), bits45));
  }
}

// unpack_scales_k4 in registers (a round trip through memory would stall on store forwarding):
// bytes 0..7 the scales and 8..15 the minimums of a Q4_K or Q5_K block. Reads 16 bytes from
// scales (the 12 and the first 4 of qh or qs, which follow them in the block).
KVLM_TARGET_AVX2 inline __m128i unpack_scales_k4(const std::uint8_t* scales) {
  const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales));  // words w0 w1 w2 -
  const __m128i a = _mm_shuffle_epi32(w, _MM_SHUFFLE(1, 1, 0, 0));               // w0 w0 w1 w1
  const __m128i c = _mm_srlv_epi32(_mm_shuffle_epi32(w, _MM_SHUFFLE(2, 2, 2, 2)), _mm_setr_epi32(0, 0, 0, 4));
  const __m128i low6 = _mm_and_si128(a, _mm_set1_epi32(0x3F3F3F3F));  // scales 0..3, mins 0..3
  const __m128i high = _mm_or_si128(  // scales 4..7 (w2, w0), mins 4..7 (w2 >> 4, w1)
      _mm_and_si128(c, _mm_set1_epi32(0x0F0F0F0F)),
      _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(a, 6), _mm_set1_epi32(0x03030303)), 4));
  return _mm_blend_epi32(low6, high, 0b1010);
}

// Q4_K or Q5_K weights times BlockQ8_K activations.
template <typename Block_>
struct K4TimesQ8K {
  using Block = Block_;
  using Activation = BlockQ8_K;

  template <int kRows>
  KVLM_TARGET_AVX2 static void step(const Block* w, std::int64_t stride, const BlockQ8_K* x,
                                    std::int64_t b, __m256* acc) {
    const BlockQ8_K& xb = x[b];
    // The activation's sums over each sub-block of 32 (at most 32 * 127) as 8 int16.
    const __m256i pair_sums = _mm256_madd_epi16(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums)), _mm256_set1_epi16(1));
    const __m128i x_sums = _mm_packs_epi32(_mm256_castsi256_si128(pair_sums),
                                           _mm256_extracti128_si256(pair_sums, 1));
    for (int r = 0; r < kRows; ++r) {
      const Block& wb = w[r * stride + b];
      const __m128i scale_min = unpack_scales_k4(wb.scales);
      // The scales as int16 in both 16-byte halves; sub-block s's is bytes 2s, 2s + 1.
      const __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scale_min));
      __m256i q[8];
      load_q_k4(wb, q);
      __m256i sums = _mm256_setzero_si256();
      for (int s = 0; s < 8; ++s) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs + 32 * s));
        const __m256i pairs = _mm256_maddubs_epi16(q[s], xq);
        const __m256i scale = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(static_cast<short>(0x0100 * (2 * s + 1) + 2 * s)));
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, scale));
      }
      const __m128i mins = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128(scale_min, 8)), x_sums);
      const float d = _cvtsh_ss(wb.d) * xb.d;
      const float dmin = _cvtsh_ss(wb.dmin) * xb.d;
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d), acc[r]);
      acc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(_mm256_zextsi128_si256(mins)), _mm256_set1_ps(dmin),
                                acc[r]);
    }
  }
};

// Q6_K weights times BlockQ8_K activations.
struct Q6_KTimesQ8K {
  using Block = BlockQ6_K;
  using Activation = BlockQ8_K;

  template <int kRows>
  KVLM_TARGET_AVX2 static void step(const BlockQ6_K* w, std::int64_t stride, const BlockQ8_K* x,
                                    std::int64_t b, __m256* acc) {
    const BlockQ8_K& xb = x[b];
    const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums));
    for (int r = 0; r < kRows; ++r) {
      const BlockQ6_K& wb = w[r * stride + b];
      const __m256i scales16 =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.scales)));
      // Both 16-byte halves holding scales 0..7 (low) or 8..15 (high), as int16.
      const __m256i low = _mm256_permute2x128_si256(scales16, scales16, 0x00);
      const __m256i high = _mm256_permute2x128_si256(scales16, scales16, 0x11);
      __m256i q[8];
      load_q_q6_k(wb, q);
      // The weights are stored as q + 32: 32 * sum_j scale_j * bsums_j comes off.
      __m256i sums = _mm256_sub_epi32(_mm256_setzero_si256(),
                                      _mm256_slli_epi32(_mm256_madd_epi16(scales16, bsums), 5));
      for (int v = 0; v < 8; ++v) {  // vector v: sub-blocks 2v (low half) and 2v + 1 (high half)
        const int k = v % 4;         // int16 lanes 2k, 2k + 1 of low or high
        const __m256i pick = _mm256_setr_epi8(
            static_cast<char>(4 * k), static_cast<char>(4 * k + 1), static_cast<char>(4 * k), static_cast<char>(4 * k + 1),
            static_cast<char>(4 * k), static_cast<char>(4 * k + 1), static_cast<char>(4 * k), static_cast<char>(4 * k + 1),
            static_cast<char>(4 * k), static_cast<char>(4 * k + 1), static_cast<char>(4 * k), static_cast<char>(4 * k + 1),
            static_cast<char>(4 * k), static_cast<char>(4 * k + 1), static_cast<char>(4 * k), static_cast<char>(4 * k + 1),
            static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3), static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3),
            static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3), static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3),
            static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3), static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3),
            static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3), static_cast<char>(4 * k + 2), static_cast<char>(4 * k + 3));
        const __m256i scales = _mm256_shuffle_epi8(v < 4 ? low : high, pick);
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs + 32 * v));
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(_mm256_maddubs_epi16(q[v], xq), scales));
      }
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(_cvtsh_ss(wb.d) * xb.d), acc[r]);
    }
  }
};

// The 8-byte group i (0..3) of v, zero-extended into a 16-byte vector.
KVLM_TARGET_AVX2 inline __m128i group64(__m256i v, int i) {
  const __m128i half = i < 2 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1);
  return i % 2 == 0 ? half : _mm_unpackhi_epi64(half, half);
}

// Dequantizes one K block into out[256], bit for bit as scalar::to_float.
template <typename Block>
KVLM_TARGET_AVX2 inline void to_float_block_k4(const Block& b, float* out) {
  alignas(16) std::uint8_t scale_min[16];
  kvlm::unpack_scales_k4(b.scales, scale_min);
  const float d = _cvtsh_ss(b.d), dmin = _cvtsh_ss(b.dmin);
  __m256i q[8];
  load_q_k4(b, q);
  for (int s = 0; s < 8; ++s) {
    const __m256 d1 = _mm256_set1_ps(d * static_cast<float>(scale_min[s]));
    const __m256 minus_m1 = _mm256_set1_ps(-(dmin * static_cast<float>(scale_min[8 + s])));
    for (int g = 0; g < 4; ++g) {
      const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(group64(q[s], g)));
      _mm256_storeu_ps(out + 32 * s + 8 * g, _mm256_fmadd_ps(d1, qf, minus_m1));
    }
  }
}

KVLM_TARGET_AVX2 inline void to_float_block(const BlockQ4_K& b, float* out) { to_float_block_k4(b, out); }
KVLM_TARGET_AVX2 inline void to_float_block(const BlockQ5_K& b, float* out) { to_float_block_k4(b, out); }

KVLM_TARGET_AVX2 inline void to_float_block(const BlockQ6_K& b, float* out) {
  const float d = _cvtsh_ss(b.d);
  const __m256i offset = _mm256_set1_epi32(32);
  __m256i q[8];
  load_q_q6_k(b, q);
  for (int j = 0; j < 16; ++j) {  // sub-block j: half j % 2 of q[j / 2]
    const __m256 d1 = _mm256_set1_ps(d * static_cast<float>(b.scales[j]));
    for (int g = 0; g < 2; ++g) {
      const __m256i qi = _mm256_sub_epi32(_mm256_cvtepu8_epi32(group64(q[j / 2], 2 * (j % 2) + g)), offset);
      _mm256_storeu_ps(out + 16 * j + 8 * g, _mm256_mul_ps(d1, _mm256_cvtepi32_ps(qi)));
    }
  }
}

// Dequantized K weights times a float activation: each row's block goes through to_float_block
// into a buffer (L1-resident), then times x, 8 floats at a time.
template <typename Block_>
struct KTimesF32 {
  using Block = Block_;
  using Activation = float;

  template <int kRows>
  KVLM_TARGET_AVX2 static void step(const Block* w, std::int64_t stride, const float* x,
                                    std::int64_t b, __m256* acc) {
    alignas(32) float wf[kRows][kQK_K];
    for (int r = 0; r < kRows; ++r) to_float_block(w[r * stride + b], wf[r]);
    const float* xb = x + b * kQK_K;
    for (int i = 0; i < kQK_K; i += 8) {
      const __m256 xv = _mm256_loadu_ps(xb + i);
      for (int r = 0; r < kRows; ++r) acc[r] = _mm256_fmadd_ps(_mm256_load_ps(wf[r] + i), xv, acc[r]);
    }
  }
};

// y[0, kRows) = w · x for K blocks, one block column at a time; prefetches every cache line of
// the blocks `ahead` blocks on unless ahead is 0.
template <typename Kernel, int kRows>
KVLM_TARGET_AVX2 inline void gemv_k_rows(const typename Kernel::Block* w, std::int64_t n_blocks,
                                         const typename Kernel::Activation* x, float* y,
                                         std::int64_t ahead) {
  using Block = typename Kernel::Block;
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    if (ahead != 0) {
      for (int r = 0; r < kRows; ++r) {
        const char* next = reinterpret_cast<const char*>(w + r * n_blocks + b + ahead);
        for (std::size_t line = 0; line < sizeof(Block); line += 64) prefetch_l2(next + line);
      }
    }
    Kernel::template step<kRows>(w, n_blocks, x, b, acc);
  }
  for (int r = 0; r < kRows; ++r) y[r] = horizontal_sum(acc[r]);
}

// y = W x; w: [rows, cols] of Kernel::Block, x: [cols] as Kernel::Activation, y: [rows].
template <typename Kernel>
KVLM_TARGET_AVX2 inline void gemv_k(const void* w, std::int64_t rows, std::int64_t cols,
                                    const void* x, float* y) {
  const auto* wb = static_cast<const typename Kernel::Block*>(w);
  const auto* xa = static_cast<const typename Kernel::Activation*>(x);
  const std::int64_t n_blocks = cols / kQK_K;
  const std::int64_t bytes = rows * n_blocks * static_cast<std::int64_t>(sizeof(*wb));
  std::int64_t r = 0;
  for (; r + kRowStep <= rows; r += kRowStep) {
    const std::int64_t ahead = prefetch_distance(r, rows, n_blocks, bytes);
    gemv_k_rows<Kernel, kRowStep>(wb + r * n_blocks, n_blocks, xa, y + r, ahead);
  }
  for (; r < rows; ++r) gemv_k_rows<Kernel, 1>(wb + r * n_blocks, n_blocks, xa, y + r, 0);
}

template <typename Block>
KVLM_TARGET_AVX2 inline void to_float_k(const void* row, float* out, std::int64_t n) {
  const auto* blocks = static_cast<const Block*>(row);
  for (std::int64_t b = 0; b < n / kQK_K; ++b) to_float_block(blocks[b], out + b * kQK_K);
}

// --- The kernels: gemv(w: [rows, cols], x, y: [rows]) and to_float(row: [n], out: [n]) ---------

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                      const void* x, float* y) {
  gemv_float<F32>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_f16(const void* w, std::int64_t rows, std::int64_t cols,
                                      const void* x, float* y) {
  gemv_float<F16>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_bf16(const void* w, std::int64_t rows, std::int64_t cols,
                                       const void* x, float* y) {
  gemv_float<BF16>(w, rows, cols, x, y);
}

/// x: [cols / 32] BlockQ8_0, from quantize_activation.
KVLM_TARGET_AVX2 inline void gemv_q8_0(const void* w, std::int64_t rows, std::int64_t cols,
                                       const void* x, float* y) {
  gemv_blocks<Q8_0TimesQ8>(w, rows, cols, x, y);
}

/// x: [cols / 32] BlockQ8_0, from quantize_activation.
KVLM_TARGET_AVX2 inline void gemv_q4_0(const void* w, std::int64_t rows, std::int64_t cols,
                                       const void* x, float* y) {
  gemv_blocks<Q4_0TimesQ8>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_q8_0_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                           const void* x, float* y) {
  gemv_blocks<Q8_0TimesF32>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_q4_0_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                           const void* x, float* y) {
  gemv_blocks<Q4_0TimesF32>(w, rows, cols, x, y);
}

template <typename Type>
KVLM_TARGET_AVX2 inline void to_float_16bit(const void* row, float* out, std::int64_t n) {
  const auto* h = static_cast<const std::uint16_t*>(row);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, Type::load(h + i));
  for (; i < n; ++i) out[i] = Type::to_float(h[i]);
}

KVLM_TARGET_AVX2 inline void to_float_f16(const void* row, float* out, std::int64_t n) {
  to_float_16bit<F16>(row, out, n);
}

KVLM_TARGET_AVX2 inline void to_float_bf16(const void* row, float* out, std::int64_t n) {
  to_float_16bit<BF16>(row, out, n);
}

/// d * q in float, exactly as the scalar twin.
KVLM_TARGET_AVX2 inline void to_float_q8_0(const void* row, float* out, std::int64_t n) {
  const auto* blocks = static_cast<const BlockQ8_0*>(row);
  for (std::int64_t b = 0; b < n / BlockQ8_0::kSize; ++b) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(blocks[b].d));
    for (int k = 0; k < 4; ++k) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blocks[b].qs + 8 * k));
      _mm256_storeu_ps(out + b * BlockQ8_0::kSize + 8 * k,
                       _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
    }
  }
}

/// d * (q - 8) in float, exactly as the scalar twin.
KVLM_TARGET_AVX2 inline void to_float_q4_0(const void* row, float* out, std::int64_t n) {
  const auto* blocks = static_cast<const BlockQ4_0*>(row);
  const __m256i eight = _mm256_set1_epi32(8);
  for (std::int64_t b = 0; b < n / BlockQ4_0::kSize; ++b) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(blocks[b].d));
    float* o = out + b * BlockQ4_0::kSize;
    for (int k = 0; k < 2; ++k) {  // bytes 8k .. 8k + 7: elements 8k.. (low) and 16 + 8k.. (high)
      const __m256i bytes = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blocks[b].qs + 8 * k)));
      const __m256i low = _mm256_sub_epi32(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0F)), eight);
      const __m256i high = _mm256_sub_epi32(_mm256_srli_epi32(bytes, 4), eight);
      _mm256_storeu_ps(o + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(low)));
      _mm256_storeu_ps(o + 16 + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(high)));
    }
  }
}

/// scalar::quantize_activation, bit for bit: x: [n], out: [n / 32].
KVLM_TARGET_AVX2 inline void quantize_activation(const float* x, BlockQ8_0* out, std::int64_t n) {
  constexpr int kNearestEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (std::int64_t b = 0; b < n / BlockQ8_0::kSize; ++b) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(x + b * BlockQ8_0::kSize + 8 * k);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
    }
    const float d = horizontal_max(amax) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = fp32_to_fp16(d);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], _mm256_set1_ps(id)), kNearestEven));
    }
    // Packing works within 128-bit lanes: the bytes come out as the block's 4-byte groups
    // 0, 2, 4, 6, 1, 3, 5, 7, and the permutation puts them back in order.
    const __m256i q16_01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i q16_23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i q8 = _mm256_packs_epi16(q16_01, q16_23);
    const __m256i ordered = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].qs), ordered);
  }
}

/// x: [cols / 256] BlockQ8_K, from quantize_activation_k.
KVLM_TARGET_AVX2 inline void gemv_q4_k(const void* w, std::int64_t rows, std::int64_t cols,
                                       const void* x, float* y) {
  gemv_k<K4TimesQ8K<BlockQ4_K>>(w, rows, cols, x, y);
}

/// x: [cols / 256] BlockQ8_K, from quantize_activation_k.
KVLM_TARGET_AVX2 inline void gemv_q5_k(const void* w, std::int64_t rows, std::int64_t cols,
                                       const void* x, float* y) {
  gemv_k<K4TimesQ8K<BlockQ5_K>>(w, rows, cols, x, y);
}

/// x: [cols / 256] BlockQ8_K, from quantize_activation_k.
KVLM_TARGET_AVX2 inline void gemv_q6_k(const void* w, std::int64_t rows, std::int64_t cols,
                                       const void* x, float* y) {
  gemv_k<Q6_KTimesQ8K>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_q4_k_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                           const void* x, float* y) {
  gemv_k<KTimesF32<BlockQ4_K>>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_q5_k_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                           const void* x, float* y) {
  gemv_k<KTimesF32<BlockQ5_K>>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX2 inline void gemv_q6_k_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                           const void* x, float* y) {
  gemv_k<KTimesF32<BlockQ6_K>>(w, rows, cols, x, y);
}

/// Exactly as the scalar twin (fused d1 * q - m1).
KVLM_TARGET_AVX2 inline void to_float_q4_k(const void* row, float* out, std::int64_t n) {
  to_float_k<BlockQ4_K>(row, out, n);
}

/// Exactly as the scalar twin (fused d1 * q - m1).
KVLM_TARGET_AVX2 inline void to_float_q5_k(const void* row, float* out, std::int64_t n) {
  to_float_k<BlockQ5_K>(row, out, n);
}

/// (d * scale) * (q - 32), exactly as the scalar twin.
KVLM_TARGET_AVX2 inline void to_float_q6_k(const void* row, float* out, std::int64_t n) {
  to_float_k<BlockQ6_K>(row, out, n);
}

/// scalar::quantize_activation_k, bit for bit: x: [n], out: [n / 256].
KVLM_TARGET_AVX2 inline void quantize_activation_k(const float* x, BlockQ8_K* out, std::int64_t n) {
  constexpr int kNearestEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < kQK_K; i += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + i)));
    const float d = horizontal_max(amax) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    const __m256 inverse = _mm256_set1_ps(id);
    for (int j = 0; j < kQK_K / 32; ++j) {  // 32 values: two bsums
      __m256i q[4];
      for (int k = 0; k < 4; ++k) {
        q[k] = _mm256_cvtps_epi32(
            _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * j + 8 * k), inverse), kNearestEven));
      }
      // As in quantize_activation: packing interleaves 4-byte groups, the permutation restores them.
      const __m256i q8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].qs + 32 * j),
                          _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      for (int half = 0; half < 2; ++half) {
        const __m256i s = _mm256_add_epi32(q[2 * half], q[2 * half + 1]);
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 1));
        out[b].bsums[2 * j + half] = static_cast<std::int16_t>(_mm_cvtsi128_si32(t));
      }
    }
  }
}

// --- The float GEMM over packed panels (layout in kernels/panel.hpp) ---------------------------
// A pass takes half a panel: two vectors hold a column's 16 rows, and each of kPanelTokens tokens
// broadcasts its value of that column into two FMAs, so the 12 accumulators (16 rows x 6 tokens)
// stay in registers over all the columns, beside the two weight vectors and the broadcast. The
// panels are packed by the plain kernels::pack_panel.

constexpr int kPanelTokens = 6;

// Rows [16 * half, 16 * half + n_rows) of the panel times kTokens tokens, token t at
// x + t * ldx.
template <int kTokens>
KVLM_TARGET_AVX2 inline void gemm_panel_tokens(int tokens, const float* panel, int half,
                                               std::int64_t n_rows, std::int64_t cols,
                                               const float* x, std::int64_t ldx, float* y,
                                               std::int64_t ldy) {
  if constexpr (kTokens > 1) {
    if (tokens < kTokens) {
      return gemm_panel_tokens<kTokens - 1>(tokens, panel, half, n_rows, cols, x, ldx, y, ldy);
    }
  }
  __m256 acc[kTokens][2];
  KVLM_UNROLL_AVX2
  for (int t = 0; t < kTokens; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  const float* w = panel + 16 * half;
  for (std::int64_t k = 0; k < cols; ++k) {
    const __m256 w0 = _mm256_loadu_ps(w + k * kPanelRows);
    const __m256 w1 = _mm256_loadu_ps(w + k * kPanelRows + 8);
    KVLM_UNROLL_AVX2
    for (int t = 0; t < kTokens; ++t) {
      const __m256 xt = _mm256_broadcast_ss(x + t * ldx + k);
      acc[t][0] = _mm256_fmadd_ps(w0, xt, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(w1, xt, acc[t][1]);
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    float* out = y + t * ldy + 16 * half;
    if (n_rows >= 16) {
      _mm256_storeu_ps(out, acc[t][0]);
      _mm256_storeu_ps(out + 8, acc[t][1]);
    } else {
      alignas(32) float rows[16];
      _mm256_store_ps(rows, acc[t][0]);
      _mm256_store_ps(rows + 8, acc[t][1]);
      for (std::int64_t r = 0; r < n_rows; ++r) out[r] = rows[r];
    }
  }
}

/// scalar::gemm_panel, bit for bit.
KVLM_TARGET_AVX2 inline void gemm_panel(const float* panel, std::int64_t n_rows,
                                        std::int64_t cols, const float* x, std::int64_t ldx,
                                        std::int64_t n_tokens, float* y, std::int64_t ldy) {
  for (int half = 0; half * 16 < n_rows; ++half) {
    for (std::int64_t t = 0; t < n_tokens; t += kPanelTokens) {
      const int tokens = static_cast<int>(std::min<std::int64_t>(kPanelTokens, n_tokens - t));
      gemm_panel_tokens<kPanelTokens>(tokens, panel, half, n_rows - 16 * half, cols,
                                      x + t * ldx, ldx, y + t * ldy, ldy);
    }
  }
}

// --- Elementwise math (scalar::exp and what uses it), 8 lanes at a time ---------------------------

// 2^k on each lane, for k in [-126, 127] (scalar::pow2). A function, not a lambda: a lambda
// does not inherit its enclosing function's target attribute.
KVLM_TARGET_AVX2 inline __m256 pow2(__m256i k) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

/// scalar::exp on each lane, bit for bit.
KVLM_TARGET_AVX2 inline __m256 exp(__m256 x) {
  using C = scalar::ExpConstants;
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(C::kExpMin)), _mm256_set1_ps(C::kExpMax));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(C::kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-C::kLn2Hi), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-C::kLn2Lo), r);
  __m256 p = _mm256_set1_ps(C::kP[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C::kP[i]));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i k = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(k, 1);
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2(half)), pow2(_mm256_sub_epi32(k, half)));
}

// The first n lanes of 8 (all for n >= 8), as a maskload/maskstore mask.
KVLM_TARGET_AVX2 inline __m256i first_lanes(std::int64_t n) {
  const int lanes = static_cast<int>(std::min<std::int64_t>(n, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/// scalar::exp_shifted, bit for bit.
KVLM_TARGET_AVX2 inline void exp_shifted(float* x, std::int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  for (std::int64_t i = 0; i < n; i += 8) {
    const __m256i m = first_lanes(n - i);
    _mm256_maskstore_ps(x + i, m, exp(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), s)));
  }
}

/// scalar::silu_mul, bit for bit.
KVLM_TARGET_AVX2 inline void silu_mul(float* gate, const float* up, std::int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  for (std::int64_t i = 0; i < n; i += 8) {
    const __m256i m = first_lanes(n - i);
    const __m256 g = _mm256_maskload_ps(gate + i, m);
    const __m256 e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_maskstore_ps(gate + i, m, _mm256_mul_ps(silu, _mm256_maskload_ps(up + i, m)));
  }
}

// --- One token's attention: a KV head's query heads against its cached rows ---------------------
// As kernels/avx512.hpp's: scores four rows at a time; weighted rows keep kWeightedQueries query
// heads x 32 columns of outputs in registers while the rows stream past.

constexpr int kWeightedQueries = 2;

// The sums of a's, b's, c's and d's lanes, in that order.
KVLM_TARGET_AVX2 inline __m128 horizontal_sums(__m256 a, __m256 b, __m256 c, __m256 d) {
  // Within each 128-bit lane, pairs added: [a, a, b, b] then [a, b, c, d]; then the two lanes.
  const __m256 v = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

/// scalar::scores, within a dot product's rounding.
KVLM_TARGET_AVX2 inline void scores(const float* q, std::int64_t ldq, std::int64_t n_q,
                                    const float* rows, std::int64_t ld, std::int64_t n_rows,
                                    std::int64_t cols, float scale, float* s, std::int64_t lds) {
  const __m128 scale_v = _mm_set1_ps(scale);
  const __m256i tail = first_lanes(cols % 8);
  for (std::int64_t t = 0; t < n_rows; t += 4) {
    // Rows t .. t + 3; past the last row, the last row again, its sums not stored.
    const std::int64_t n = std::min<std::int64_t>(4, n_rows - t);
    const float* row[4];
    for (int i = 0; i < 4; ++i) row[i] = rows + (t + std::min<std::int64_t>(i, n - 1)) * ld;
    for (std::int64_t g = 0; g < n_q; ++g) {
      const float* x = q + g * ldq;
      __m256 acc[4];
      KVLM_UNROLL_AVX2 for (int i = 0; i < 4; ++i) acc[i] = _mm256_setzero_ps();
      std::int64_t c = 0;
      for (; c + 8 <= cols; c += 8) {
        const __m256 xc = _mm256_loadu_ps(x + c);
        KVLM_UNROLL_AVX2 for (int i = 0; i < 4; ++i) {
          acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(row[i] + c), xc, acc[i]);
        }
      }
      if (c < cols) {
        const __m256 xc = _mm256_maskload_ps(x + c, tail);
        KVLM_UNROLL_AVX2 for (int i = 0; i < 4; ++i) {
          acc[i] = _mm256_fmadd_ps(_mm256_maskload_ps(row[i] + c, tail), xc, acc[i]);
        }
      }
      alignas(16) float sums[4];
      _mm_store_ps(sums, _mm_mul_ps(horizontal_sums(acc[0], acc[1], acc[2], acc[3]), scale_v));
      for (int i = 0; i < n; ++i) s[g * lds + t + i] = sums[i];
    }
  }
}

// Query heads [0, kQueries) of add_weighted_rows, over columns [c, c + 32).
template <int kQueries>
KVLM_TARGET_AVX2 inline void add_weighted_rows_tile(const float* p, std::int64_t ldp,
                                                    const float* rows, std::int64_t ld,
                                                    std::int64_t n_rows, std::int64_t cols,
                                                    std::int64_t c, float* out, std::int64_t ldo) {
  __m256i m[4];
  __m256 acc[kQueries][4];
  KVLM_UNROLL_AVX2 for (int j = 0; j < 4; ++j) {
    m[j] = first_lanes(cols - c - 8 * j);
    KVLM_UNROLL_AVX2 for (int g = 0; g < kQueries; ++g) {
      acc[g][j] = _mm256_maskload_ps(out + g * ldo + c + 8 * j, m[j]);
    }
  }
  for (std::int64_t t = 0; t < n_rows; ++t) {
    KVLM_UNROLL_AVX2 for (int j = 0; j < 4; ++j) {
      const __m256 v = _mm256_maskload_ps(rows + t * ld + c + 8 * j, m[j]);
      KVLM_UNROLL_AVX2 for (int g = 0; g < kQueries; ++g) {
        acc[g][j] = _mm256_fmadd_ps(_mm256_set1_ps(p[g * ldp + t]), v, acc[g][j]);
      }
    }
  }
  KVLM_UNROLL_AVX2 for (int j = 0; j < 4; ++j) {
    KVLM_UNROLL_AVX2 for (int g = 0; g < kQueries; ++g) {
      _mm256_maskstore_ps(out + g * ldo + c + 8 * j, m[j], acc[g][j]);
    }
  }
}

/// scalar::add_weighted_rows, bit for bit.
KVLM_TARGET_AVX2 inline void add_weighted_rows(const float* p, std::int64_t ldp, std::int64_t n_q,
                                               const float* rows, std::int64_t ld,
                                               std::int64_t n_rows, std::int64_t cols, float* out,
                                               std::int64_t ldo) {
  for (std::int64_t g = 0; g < n_q; g += kWeightedQueries) {
    const float* pg = p + g * ldp;
    float* og = out + g * ldo;
    for (std::int64_t c = 0; c < cols; c += 32) {
      if (n_q - g == 1) {
        add_weighted_rows_tile<1>(pg, ldp, rows, ld, n_rows, cols, c, og, ldo);
      } else {
        add_weighted_rows_tile<2>(pg, ldp, rows, ld, n_rows, cols, c, og, ldo);
      }
    }
  }
}
}  // namespace kvlm::kernels::avx2

#undef KVLM_TARGET_AVX2  // the attribute belongs to these definitions, not to the host
#undef KVLM_UNROLL_AVX2
