#pragma once
// AVX-512 kernels (F, BW, VL and VNNI: Intel Ice Lake and later, AMD Zen 4 and later, which also
// have the AVX2, FMA and F16C used here). Every function carries its target attribute, so this
// header compiles in a host built without -march flags; kernels/kernels.hpp calls these only on a
// CPU that has the features. Each kernel has a scalar twin in kernels/scalar.hpp; row and block
// layouts are described there and in dtype.hpp.
//
// A gemv computes y[r] = row r · x for kRowStep rows at a time, one accumulator per row; the
// rows left over go one by one. kRowStep = 1: rows are read one after another, one sequential
// stream the hardware prefetcher follows. Reading 4 rows side by side (so one activation load
// feeds 4 rows) made 4 short streams instead (a 2048-column Q4_0 row is 18 cache lines), and
// decoding tinyllama-1.1b's shape on 2 threads went from 46 to 67 tok/s in Q4_0, 30 to 39 in
// Q8_0 and 19 to 21 in F16 when they were read one by one: the activation (a few KB) stays in
// L1 either way. A gemv over a matrix too large to stay in cache also prefetches the next rows
// into L2; on a matrix that stays in cache the prefetches would only cost load slots.

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvlm/dtype.hpp"
#include "kvlm/kernels/interleaved.hpp"
#include "kvlm/kernels/panel.hpp"
#include "kvlm/kernels/scalar.hpp"

// GCC 12.1 and 12.2 report a use of an uninitialised value inside their own AVX-512 intrinsics
// (GCC bug 105593, fixed in 12.3 and 13) wherever one is inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// The loops over a tile's rows and tokens are unrolled, so that the tile's accumulators live in
// registers (GCC at -O2 keeps such arrays in memory otherwise).
#define KVLM_UNROLL _Pragma("GCC unroll 16")

// For the helpers GCC must not leave as calls (see prefetch_part).
#define KVLM_ALWAYS_INLINE __attribute__((always_inline)) inline

#define KVLM_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace kvlm::kernels::avx512 {

constexpr int kRowStep = 1;

// Matrices from this size on are prefetched (see above): well beyond a core's L2 (1 or 2 MiB).
constexpr std::int64_t kPrefetchMinBytes = std::int64_t{4} << 20;

// How far ahead, in elements (or blocks), the group of rows starting at row r prefetches: the
// next group, or 0 (no prefetching) for the last group and for matrices small enough to stay in
// cache. row_size: elements (or blocks) per row.
inline std::int64_t prefetch_distance(std::int64_t r, std::int64_t rows, std::int64_t row_size,
                                      std::int64_t bytes) {
  const bool next_group = r + 2 * kRowStep <= rows;
  return bytes >= kPrefetchMinBytes && next_group ? kRowStep * row_size : 0;
}

KVLM_TARGET_AVX512 inline float horizontal_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 s = _mm512_castps512_ps128(v);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KVLM_TARGET_AVX512 inline float horizontal_max(__m512 v) {
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 s = _mm512_castps512_ps128(v);
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Prefetches the cache line at p into L2.
template <typename T>
void prefetch_l2(const T* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1);
}

// The first n lanes of 16, for n in [0, 16].
inline __mmask16 first_lanes(std::int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }

// --- Float weights (F32, F16, BF16) times a float activation ------------------------------------

// How each float type loads 16 elements as floats: all of them, or the lanes of mask m (the
// others zero, nothing read beyond them).
struct F32 {
  using Element = float;
  KVLM_TARGET_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  KVLM_TARGET_AVX512 static __m512 load(const float* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
  }
};

struct F16 {
  using Element = std::uint16_t;
  KVLM_TARGET_AVX512 static __m512 load(const std::uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  KVLM_TARGET_AVX512 static __m512 load(const std::uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};

struct BF16 {
  using Element = std::uint16_t;
  // A bfloat16 is the top half of a float32: widen to 32 bits and shift into place.
  KVLM_TARGET_AVX512 static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  KVLM_TARGET_AVX512 static __m512 load(const std::uint16_t* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  KVLM_TARGET_AVX512 static __m512 load(const std::uint16_t* p, __mmask16 m) {
    return widen(_mm256_maskz_loadu_epi16(m, p));
  }
};

// y[0, kRows) = w · x; w: [kRows, cols] of Type, x: [cols]. Prefetches from w + ahead on unless
// ahead is 0.
template <typename Type, int kRows>
KVLM_TARGET_AVX512 inline void gemv_float_rows(const typename Type::Element* w, std::int64_t cols,
                                               const float* x, float* y, std::int64_t ahead) {
  constexpr int kPerLine = 64 / sizeof(typename Type::Element);  // 16 or 32 elements
  __m512 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + kPerLine <= cols; i += kPerLine) {  // a cache line of each row
    if (ahead != 0) {
      for (int r = 0; r < kRows; ++r) prefetch_l2(w + r * cols + i + ahead);
    }
    for (int k = 0; k < kPerLine; k += 16) {
      const __m512 xv = _mm512_loadu_ps(x + i + k);
      for (int r = 0; r < kRows; ++r) {
        acc[r] = _mm512_fmadd_ps(Type::load(w + r * cols + i + k), xv, acc[r]);
      }
    }
  }
  for (; i + 16 <= cols; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    for (int r = 0; r < kRows; ++r) {
      acc[r] = _mm512_fmadd_ps(Type::load(w + r * cols + i), xv, acc[r]);
    }
  }
  if (i < cols) {
    const __mmask16 m = first_lanes(cols - i);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
    for (int r = 0; r < kRows; ++r) {
      acc[r] = _mm512_fmadd_ps(Type::load(w + r * cols + i, m), xv, acc[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) y[r] = horizontal_sum(acc[r]);
}

// y = W x; w: [rows, cols] of Type, x: [cols] floats, y: [rows].
template <typename Type>
KVLM_TARGET_AVX512 inline void gemv_float(const void* w, std::int64_t rows, std::int64_t cols,
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
// Each Kernel below adds kBlocks (1 or 2) blocks, from block column b on, of kRows rows (stride
// blocks apart) times the activation into acc[kRows]: 16 float lanes per row, summed at the end.

// The scales of kBlocks blocks as floats, spread over the lanes that hold their products:
// `second` marks the lanes of the second block (0 when there is one block).
template <int kBlocks, typename Block>
KVLM_TARGET_AVX512 inline __m512 block_scales(const Block* b, __mmask16 second) {
  const auto d0 = static_cast<short>(b[0].d);
  if constexpr (kBlocks == 1) {
    return _mm512_cvtph_ps(_mm256_maskz_set1_epi16(static_cast<__mmask16>(~second), d0));
  } else {
    const auto d1 = static_cast<short>(b[1].d);
    return _mm512_cvtph_ps(_mm256_mask_set1_epi16(_mm256_set1_epi16(d0), second, d1));
  }
}

// The q of kBlocks consecutive Q8_0 blocks: bytes [block 0: 32 | block 1: 32, or zeros].
template <int kBlocks>
KVLM_TARGET_AVX512 inline __m512i load_q8_0(const BlockQ8_0* b) {
  const __m256i first = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[0].qs));
  if constexpr (kBlocks == 1) {
    return _mm512_zextsi256_si512(first);
  } else {
    const __m256i second = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[1].qs));
    return _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
  }
}

// The q + 8 (in [0, 15]) of kBlocks consecutive Q4_0 blocks, in 16-byte lanes
// [block 0 elements 0..15 | block 1 0..15 | block 0 16..31 | block 1 16..31]: all the low nibbles,
// then all the high ones (block 1's lanes are zero when there is one block).
template <int kBlocks>
KVLM_TARGET_AVX512 inline __m512i load_q4_0(const BlockQ4_0* b) {
  constexpr __mmask16 kOddLanes = 0xF0F0;  // of 16-byte lanes, in 32-bit elements
  const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[0].qs));
  __m512i packed;  // [block 0 | block 1 | block 0 | block 1]
  if constexpr (kBlocks == 1) {
    packed = _mm512_maskz_broadcast_i32x4(static_cast<__mmask16>(~kOddLanes), first);
  } else {
    const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[1].qs));
    packed = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(first), kOddLanes, second);
  }
  const __m512i high_moved = _mm512_mask_srli_epi16(packed, 0xFFFF0000u, packed, 4);  // upper half
  return _mm512_and_si512(high_moved, _mm512_set1_epi8(0x0F));
}

// The integer kernels split a step in three, so that gemv (one token) and gemm (several, below)
// compute each (row, token) with the same instructions: activation (what a pair of activation
// blocks contributes to every row: the lane order, the offset, the scales as floats), unpack
// (what a row's blocks contribute to every token) and multiply (once per row and token).

/// Two blocks of one token's activation as the weight type's kernel uses them: gemm's prepared
/// activation, computed once per matmul.
struct PreparedPair {
  std::int8_t q[64];      // the blocks' q in the kernel's lane order (Q8_0: q + 128, unsigned)
  std::int32_t base[16];  // Q4_0: where each lane's sum starts, -8 x its four q (the weights'
                          // offset); Q8_0: unused
  float d[16];            // the blocks' scales over the lanes of their products
};
static_assert(sizeof(PreparedPair) == 192);

// A PreparedPair in registers.
struct PreparedRegisters {
  __m512i q;
  __m512i base;
  __m512 d;
};

KVLM_TARGET_AVX512 inline PreparedRegisters load_prepared(const PreparedPair& x) {
  return {_mm512_loadu_si512(x.q), _mm512_loadu_si512(x.base), _mm512_loadu_ps(x.d)};
}

KVLM_TARGET_AVX512 inline void store_prepared(const PreparedRegisters& x, PreparedPair* out) {
  _mm512_storeu_si512(out->q, x.q);
  _mm512_storeu_si512(out->base, x.base);
  _mm512_storeu_ps(out->d, x.d);
}

// Q4_0 weights times a quantized activation, with the activation's bytes arranged in
// load_q4_0's order: block 0's int32 sums in lanes 0..3 and 8..11, block 1's in 4..7 and 12..15.
struct Q4_0Rows {
  using Block = BlockQ4_0;
  using Activation = BlockQ8_0;
  using Prepared = PreparedPair;
  static constexpr int kStep = 2;  // blocks per step
  static constexpr __mmask16 kSecond = 0xF0F0;
  struct Unpacked {
    __m512i q;
    __m512 d;
  };

  // The weights are stored as q + 8: starting each sum at -8 * (sum of x) takes the 8 off.
  template <int kBlocks>
  KVLM_TARGET_AVX512 static PreparedRegisters activation(const BlockQ8_0* x) {
    const __m512i x_blocks = load_q8_0<kBlocks>(x);
    const __m512i xq = _mm512_shuffle_i64x2(x_blocks, x_blocks, _MM_SHUFFLE(3, 1, 2, 0));
    const __m512i zero = _mm512_setzero_si512();
    return {xq, _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(8), xq)),
            block_scales<kBlocks>(x, kSecond)};
  }
  template <int kBlocks>
  KVLM_TARGET_AVX512 static Unpacked unpack(const BlockQ4_0* w) {
    return {load_q4_0<kBlocks>(w), block_scales<kBlocks>(w, kSecond)};
  }
  KVLM_TARGET_AVX512 static __m512 multiply(const Unpacked& w, const PreparedRegisters& x,
                                            __m512 acc) {
    const __m512i sums = _mm512_dpbusd_epi32(x.base, w.q, x.q);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(w.d, x.d), acc);
  }
};

// Q8_0 weights times a quantized activation: block 0's int32 sums in lanes 0..7, block 1's in
// 8..15. dpbusd multiplies unsigned by signed bytes; the activation is the unsigned side, as
// q + 128 (1 to 255, since q is never -128), and each lane starts at -128 x the sum of its four
// weights.
struct Q8_0Rows {
  using Block = BlockQ8_0;
  using Activation = BlockQ8_0;
  using Prepared = PreparedPair;
  static constexpr int kStep = 2;
  static constexpr __mmask16 kSecond = 0xFF00;
  struct Unpacked {
    __m512i q;
    __m512i base;
    __m512 d;
  };

  template <int kBlocks>
  KVLM_TARGET_AVX512 static PreparedRegisters activation(const BlockQ8_0* x) {
    return {_mm512_xor_si512(load_q8_0<kBlocks>(x), _mm512_set1_epi8(-128)),
            _mm512_setzero_si512(), block_scales<kBlocks>(x, kSecond)};
  }
  template <int kBlocks>
  KVLM_TARGET_AVX512 static Unpacked unpack(const BlockQ8_0* w) {
    const __m512i q = load_q8_0<kBlocks>(w);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i sum_128_w = _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(-128), q);
    return {q, _mm512_sub_epi32(zero, sum_128_w), block_scales<kBlocks>(w, kSecond)};
  }
  KVLM_TARGET_AVX512 static __m512 multiply(const Unpacked& w, const PreparedRegisters& x,
                                            __m512 acc) {
    const __m512i sums = _mm512_dpbusd_epi32(w.base, x.q, w.q);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(w.d, x.d), acc);
  }
};

// The gemv step of Rows (Q4_0Rows, Q8_0Rows or a K type's below) times its 8-bit activation
// (Rows::Activation: BlockQ8_0 or BlockQ8_K).
template <typename Rows>
struct TimesQ8 {
  using Block = typename Rows::Block;
  using Activation = typename Rows::Activation;
  static constexpr int kStep = Rows::kStep;

  template <int kRows, int kBlocks>
  KVLM_TARGET_AVX512 static void step(const Block* w, std::int64_t stride, const Activation* x,
                                      std::int64_t b, __m512* acc) {
    const auto xb = Rows::template activation<kBlocks>(x + b);
    KVLM_UNROLL
    for (int r = 0; r < kRows; ++r) {
      acc[r] = Rows::multiply(Rows::template unpack<kBlocks>(w + r * stride + b), xb, acc[r]);
    }
  }
};

// Q8_0 weights times a float activation, dequantized in registers.
struct Q8_0TimesF32 {
  using Block = BlockQ8_0;
  using Activation = float;
  static constexpr int kStep = 2;

  template <int kRows, int kBlocks>
  KVLM_TARGET_AVX512 static void step(const BlockQ8_0* w, std::int64_t stride, const float* x,
                                      std::int64_t b, __m512* acc) {
    for (int j = 0; j < kBlocks; ++j) {
      const float* xb = x + (b + j) * BlockQ8_0::kSize;
      const __m512 x0 = _mm512_loadu_ps(xb);
      const __m512 x1 = _mm512_loadu_ps(xb + 16);
      for (int r = 0; r < kRows; ++r) {
        const BlockQ8_0& wb = w[r * stride + b + j];
        const __m512 q0 = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.qs))));
        const __m512 q1 = _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.qs + 16))));
        const __m512 qx = _mm512_fmadd_ps(q1, x1, _mm512_mul_ps(q0, x0));
        acc[r] = _mm512_fmadd_ps(qx, _mm512_set1_ps(_cvtsh_ss(wb.d)), acc[r]);
      }
    }
  }
};

// Q4_0 weights times a float activation, dequantized in registers.
struct Q4_0TimesF32 {
  using Block = BlockQ4_0;
  using Activation = float;
  static constexpr int kStep = 2;

  template <int kRows, int kBlocks>
  KVLM_TARGET_AVX512 static void step(const BlockQ4_0* w, std::int64_t stride, const float* x,
                                      std::int64_t b, __m512* acc) {
    const __m512i eight = _mm512_set1_epi32(8);
    for (int j = 0; j < kBlocks; ++j) {
      const float* xb = x + (b + j) * BlockQ4_0::kSize;
      const __m512 x0 = _mm512_loadu_ps(xb);
      const __m512 x1 = _mm512_loadu_ps(xb + 16);
      for (int r = 0; r < kRows; ++r) {
        const BlockQ4_0& wb = w[r * stride + b + j];
        const __m512i bytes =  // one byte (two nibbles) per int32 lane
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.qs)));
        const __m512 q0 = _mm512_cvtepi32_ps(
            _mm512_sub_epi32(_mm512_and_si512(bytes, _mm512_set1_epi32(0x0F)), eight));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(bytes, 4), eight));
        const __m512 qx = _mm512_fmadd_ps(q1, x1, _mm512_mul_ps(q0, x0));
        acc[r] = _mm512_fmadd_ps(qx, _mm512_set1_ps(_cvtsh_ss(wb.d)), acc[r]);
      }
    }
  }
};

// --- K types (Q4_K, Q5_K, Q6_K; layouts in dtype.hpp) -------------------------------------------
// One step handles one 256-weight block column of kRows rows. The integer kernels multiply
// unsigned q (Q6_K's stored as q + 32) by the BlockQ8_K activation's int8 exactly in int32 lanes
// (scaled_sum below), then by d_w * d_x in float; the minimums (Q4_K, Q5_K) and the offset 32
// (Q6_K) come off through the activation's bsums. The float kernels dequantize each row's block
// (to_float, bit for bit) into a buffer in L1 and multiply that by x.
//
// gemm over Q4_K (2048 x 2048 in L3, 144 tokens, 64-row tiles, one core of a slow day) ran at
// 146-151 GFLOP/s, where dequantizing rows into the float GEMM's panels ran at 110-119; tiles of
// 1 x 8 and 2 x 8 were within 3% of each other, 2 x 4, 2 x 6, 1 x 12 and 1 x 16 slower. Summing
// with dpbusd and packing (scaled_sum) measured the same as maddubs then dpwssd: a (row, token,
// block) costs about twelve vector instructions either way, where rows interleaved 16 to a
// vector (as Q4_0's copy is) would share the scale and convert work across 16 rows.

// The q of a Q4_K or Q5_K block as 4 vectors of 64 bytes, in the order the nibbles lie in qs:
// vector k holds sub-blocks kSubs[k][0] (bytes 0..31) and kSubs[k][1] (bytes 32..63).
constexpr int kK4Subs[4][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}};

template <typename Block>
KVLM_TARGET_AVX512 inline void load_q_k4(const Block& b, __m512i* q) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i a = _mm512_loadu_si512(b.qs);       // runs 0 and 1
  const __m512i c = _mm512_loadu_si512(b.qs + 64);  // runs 2 and 3
  q[0] = _mm512_and_si512(a, low4);
  q[1] = _mm512_and_si512(_mm512_srli_epi16(a, 4), low4);
  q[2] = _mm512_and_si512(c, low4);
  q[3] = _mm512_and_si512(_mm512_srli_epi16(c, 4), low4);
  if constexpr (std::is_same_v<Block, BlockQ5_K>) {
    // The fifth bit of sub-block s is bit s of qh: [qh | qh >> 2] puts sub-blocks 0, 1, 4, 5's
    // bits at 0, 1, 4, 5 of the low half's bytes and 2, 3, 6, 7's at the same places of the high
    // half's, matching q[k]'s halves; each is moved to bit 4.
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh));
    const __m512i hs = _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 2), 1);
    const __m512i bit4 = _mm512_set1_epi8(0x10);
    q[0] = _mm512_or_si512(q[0], _mm512_and_si512(_mm512_slli_epi16(hs, 4), bit4));
    q[1] = _mm512_or_si512(q[1], _mm512_and_si512(_mm512_slli_epi16(hs, 3), bit4));
    q[2] = _mm512_or_si512(q[2], _mm512_and_si512(hs, bit4));
    q[3] = _mm512_or_si512(q[3], _mm512_and_si512(_mm512_srli_epi16(hs, 1), bit4));
  }
}

// The q + 32 (in [0, 63]) of a Q6_K block as 4 vectors of 64 bytes in element order.
KVLM_TARGET_AVX512 inline void load_q_q6_k(const BlockQ6_K& b, __m512i* q) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bits45 = _mm512_set1_epi8(0x30);
  KVLM_UNROLL
  for (int h = 0; h < 2; ++h) {
    const __m512i l = _mm512_loadu_si512(b.ql + 64 * h);
    const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h));
    // [qh | qh >> 2]: bits 0-1 of each byte for weights 0..63 of the half, bits 4-5 for 64..127.
    const __m512i hs = _mm512_inserti64x4(_mm512_castsi256_si512(hb), _mm256_srli_epi16(hb, 2), 1);
    q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, low4),
                               _mm512_and_si512(_mm512_slli_epi16(hs, 4), bits45));
    q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), low4),
                                   _mm512_and_si512(hs, bits45));
  }
}

// unpack_scales_k4 in registers (a round trip through memory would stall on store forwarding):
// bytes 0..7 the scales and 8..15 the minimums of a Q4_K or Q5_K block. Reads 16 bytes from
// scales (the 12 and the first 4 of qh or qs, which follow them in the block).
KVLM_TARGET_AVX512 inline __m128i unpack_scales_k4(const std::uint8_t* scales) {
  const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales));  // words w0 w1 w2 -
  const __m128i a = _mm_shuffle_epi32(w, _MM_SHUFFLE(1, 1, 0, 0));               // w0 w0 w1 w1
  const __m128i c = _mm_srlv_epi32(_mm_shuffle_epi32(w, _MM_SHUFFLE(2, 2, 2, 2)), _mm_setr_epi32(0, 0, 0, 4));
  const __m128i low6 = _mm_and_si128(a, _mm_set1_epi32(0x3F3F3F3F));  // scales 0..3, mins 0..3
  const __m128i high = _mm_or_si128(  // scales 4..7 (w2, w0), mins 4..7 (w2 >> 4, w1)
      _mm_and_si128(c, _mm_set1_epi32(0x0F0F0F0F)),
      _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(a, 6), _mm_set1_epi32(0x03030303)), 4));
  return _mm_blend_epi32(low6, high, 0b1010);
}

// One 256-weight block of a token's activation as the K types' Rows multiply it: gemv's step
// computes it per block, prepare once per matmul into a PreparedK.
struct ActivationK {
  __m512i q[4];    // the q in load_q_k4's order: vector k holds sub-blocks of 32 kK4Subs[k]
  __m256i bsums;   // the sums of q over each 16 (Q6_K's offset)
  __m512 sums;     // d * bsums (Q4_K's and Q5_K's minimums)
  __m512 d;        // d in every lane
};

/// An ActivationK in memory: gemm's prepared activation for the K types.
struct alignas(64) PreparedK {
  std::int8_t q[kQK_K];
  std::int16_t bsums[16];
  float sums[16];
  float d;
};
static_assert(sizeof(PreparedK) == 384);

KVLM_TARGET_AVX512 inline ActivationK activation_k(const BlockQ8_K& x) {
  ActivationK a;
  KVLM_UNROLL
  for (int h = 0; h < 2; ++h) {  // sub-blocks 4h .. 4h + 3
    const __m512i x0 = _mm512_loadu_si512(x.qs + 128 * h);       // 4h, 4h + 1
    const __m512i x1 = _mm512_loadu_si512(x.qs + 128 * h + 64);  // 4h + 2, 4h + 3
    a.q[2 * h] = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(1, 0, 1, 0));
    a.q[2 * h + 1] = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(3, 2, 3, 2));
  }
  a.bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
  a.d = _mm512_set1_ps(x.d);
  a.sums = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(a.bsums)), a.d);
  return a;
}

KVLM_TARGET_AVX512 inline ActivationK load_prepared(const PreparedK& x) {
  ActivationK a;
  KVLM_UNROLL
  for (int k = 0; k < 4; ++k) a.q[k] = _mm512_loadu_si512(x.q + 64 * k);
  a.bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
  a.sums = _mm512_loadu_ps(x.sums);
  a.d = _mm512_set1_ps(x.d);
  return a;
}

KVLM_TARGET_AVX512 inline void store_prepared(const ActivationK& a, PreparedK* out) {
  KVLM_UNROLL
  for (int k = 0; k < 4; ++k) _mm512_storeu_si512(out->q + 64 * k, a.q[k]);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->bsums), a.bsums);
  _mm512_storeu_ps(out->sums, a.sums);
  out->d = _mm_cvtss_f32(_mm512_castps512_ps128(a.d));
}

// The K types' steps: activation (ActivationK), unpack (a row's block: q in load_q_k4's order,
// the sub-block scales spread over the int16 lanes of maddubs' pair sums, d) and multiply (once
// per row and token): the integer sum of scale * q * x over the block, times d_w * d_x, less
// what the minimums or the offset take off. The Rows of all three take the same activation, so
// the products of a Q4_K_M layer (Q4_K and Q6_K) share one preparation.

// multiply sums four weights' products per int32 lane (dpbusd: at most 4 * 63 * 127, so an
// int16 holds it), packs two vectors' lanes into int16 (packs_epi32, which interleaves them by
// 4 lanes within each 16 bytes) and multiplies each by its scale with dpwssd: three
// multiply-class instructions per 128 weights where maddubs and dpwssd took four.
// Lane j of packed vector p: int32 lane j % 4 + 4 (j / 8) of vector 2p (j % 8 < 4) or 2p + 1,
// whose 16 bytes (number j / 8) hold sub-block of 32 kK4Subs[v][j / 16] (the 16 of it
// numbered j / 8 % 2).
struct PackedScaleIndex {
  std::int16_t lanes[2][32];
};
constexpr PackedScaleIndex packed_scale_index(bool per_16) {
  PackedScaleIndex index{};
  for (int p = 0; p < 2; ++p) {
    for (int j = 0; j < 32; ++j) {
      const int v = 2 * p + (j % 8 >= 4 ? 1 : 0), sub = kK4Subs[v][j / 16];
      index.lanes[p][j] = static_cast<std::int16_t>(per_16 ? 2 * sub + j / 8 % 2 : sub);
    }
  }
  return index;
}
alignas(64) inline constexpr PackedScaleIndex kK4ScaleIndex = packed_scale_index(false);
alignas(64) inline constexpr PackedScaleIndex kQ6ScaleIndex = packed_scale_index(true);

// The integer sum over a block: the four vectors of q times x, each int16 lane of
// packs(vector 2p, vector 2p + 1) times scales[p]; start: where the sum starts.
KVLM_TARGET_AVX512 inline __m512i scaled_sum(const __m512i (&q)[4], const __m512i (&scales)[2],
                                             const __m512i (&x)[4], __m512i start) {
  const __m512i zero = _mm512_setzero_si512();
  __m512i quads[4];
  KVLM_UNROLL
  for (int k = 0; k < 4; ++k) quads[k] = _mm512_dpbusd_epi32(zero, q[k], x[k]);
  const __m512i sum = _mm512_dpwssd_epi32(start, _mm512_packs_epi32(quads[0], quads[1]), scales[0]);
  return _mm512_dpwssd_epi32(sum, _mm512_packs_epi32(quads[2], quads[3]), scales[1]);
}

// What the K types' Rows share: the activation, one block per step.
struct KRows {
  using Activation = BlockQ8_K;
  using Prepared = PreparedK;
  static constexpr int kStep = 1;

  template <int kBlocks>
  KVLM_TARGET_AVX512 static ActivationK activation(const BlockQ8_K* x) {
    static_assert(kBlocks == 1);
    return activation_k(*x);
  }
};

// Q4_K or Q5_K weights: the minimums come off in float, dmin_w * m of the 32 a bsum's 16 lie in
// times d_x * bsum, so one multiply-add per row and token takes all eight off.
template <typename Block_>
struct K4Rows : KRows {
  using Block = Block_;
  struct Unpacked {
    __m512i q[4];
    __m512i scales[2];  // over scaled_sum's packed lanes
    __m512 d;
    __m512 mins;        // lane j: dmin * m of sub-block j / 2
  };

  template <int kBlocks>
  KVLM_TARGET_AVX512 static Unpacked unpack(const Block* w) {
    static_assert(kBlocks == 1);
    Unpacked u;
    load_q_k4(*w, u.q);
    const __m128i sm = unpack_scales_k4(w->scales);  // 8 scales, 8 minimums
    const __m512i scales = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(sm));
    KVLM_UNROLL
    for (int p = 0; p < 2; ++p) {
      u.scales[p] = _mm512_permutexvar_epi16(_mm512_load_si512(kK4ScaleIndex.lanes[p]), scales);
    }
    const __m128i mins = _mm_unpackhi_epi8(sm, sm);  // m0 m0 m1 m1 .. m7 m7
    u.mins = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mins)),
                           _mm512_set1_ps(_cvtsh_ss(w->dmin)));
    u.d = _mm512_set1_ps(_cvtsh_ss(w->d));
    return u;
  }
  KVLM_TARGET_AVX512 static __m512 multiply(const Unpacked& w, const ActivationK& x, __m512 acc) {
    const __m512i sums = scaled_sum(w.q, w.scales, x.q, _mm512_setzero_si512());
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(w.d, x.d), acc);
    return _mm512_fnmadd_ps(w.mins, x.sums, acc);
  }
};

// Q6_K weights: q is stored as q + 32, and 32 * scale of each 16 times its bsum comes off in the
// integer sum.
struct Q6_KRows : KRows {
  using Block = BlockQ6_K;
  struct Unpacked {
    __m512i q[4];
    __m512i scales[2];  // over scaled_sum's packed lanes, a scale per 16 weights
    __m512 d;
    __m256i offset;     // -32 * scale of each 16
  };

  template <int kBlocks>
  KVLM_TARGET_AVX512 static Unpacked unpack(const BlockQ6_K* w) {
    static_assert(kBlocks == 1);
    __m512i q[4];  // in element order: vector k holds sub-blocks of 32 2k and 2k + 1
    load_q_q6_k(*w, q);
    Unpacked u;
    KVLM_UNROLL
    for (int h = 0; h < 2; ++h) {
      u.q[2 * h] = _mm512_shuffle_i64x2(q[2 * h], q[2 * h + 1], _MM_SHUFFLE(1, 0, 1, 0));
      u.q[2 * h + 1] = _mm512_shuffle_i64x2(q[2 * h], q[2 * h + 1], _MM_SHUFFLE(3, 2, 3, 2));
    }
    const __m256i scales16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w->scales)));
    const __m512i scales = _mm512_zextsi256_si512(scales16);
    KVLM_UNROLL
    for (int p = 0; p < 2; ++p) {
      u.scales[p] = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6ScaleIndex.lanes[p]), scales);
    }
    u.offset = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(scales16, 5));
    u.d = _mm512_set1_ps(_cvtsh_ss(w->d));
    return u;
  }
  KVLM_TARGET_AVX512 static __m512 multiply(const Unpacked& w, const ActivationK& x, __m512 acc) {
    const __m512i offset = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                               _mm512_zextsi256_si512(w.offset),
                                               _mm512_zextsi256_si512(x.bsums));
    const __m512i sums = scaled_sum(w.q, w.scales, x.q, offset);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(w.d, x.d), acc);
  }
};

// The 16-byte lane i (0..3) of v.
KVLM_TARGET_AVX512 inline __m128i lane128(__m512i v, int i) {
  switch (i) {
    case 0: return _mm512_extracti32x4_epi32(v, 0);
    case 1: return _mm512_extracti32x4_epi32(v, 1);
    case 2: return _mm512_extracti32x4_epi32(v, 2);
    default: return _mm512_extracti32x4_epi32(v, 3);
  }
}

// Dequantizes one K block into out[256], bit for bit as scalar::to_float.
template <typename Block>
KVLM_TARGET_AVX512 inline void to_float_block_k4(const Block& b, float* out) {
  alignas(16) std::uint8_t scale_min[16];
  kvlm::unpack_scales_k4(b.scales, scale_min);
  const float d = _cvtsh_ss(b.d), dmin = _cvtsh_ss(b.dmin);
  __m512i q[4];
  load_q_k4(b, q);
  for (int k = 0; k < 4; ++k) {
    for (int half = 0; half < 2; ++half) {
      const int s = kK4Subs[k][half];
      const __m512 d1 = _mm512_set1_ps(d * static_cast<float>(scale_min[s]));
      const __m512 minus_m1 = _mm512_set1_ps(-(dmin * static_cast<float>(scale_min[8 + s])));
      for (int g = 0; g < 2; ++g) {
        const __m512 qf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lane128(q[k], 2 * half + g)));
        _mm512_storeu_ps(out + 32 * s + 16 * g, _mm512_fmadd_ps(d1, qf, minus_m1));
      }
    }
  }
}

KVLM_TARGET_AVX512 inline void to_float_block(const BlockQ4_K& b, float* out) { to_float_block_k4(b, out); }
KVLM_TARGET_AVX512 inline void to_float_block(const BlockQ5_K& b, float* out) { to_float_block_k4(b, out); }

KVLM_TARGET_AVX512 inline void to_float_block(const BlockQ6_K& b, float* out) {
  const float d = _cvtsh_ss(b.d);
  const __m512i offset = _mm512_set1_epi32(32);
  __m512i q[4];
  load_q_q6_k(b, q);
  for (int j = 0; j < 16; ++j) {  // sub-block j: bytes 16 (j % 4) .. 16 (j % 4) + 15 of q[j / 4]
    const __m512i qi = _mm512_sub_epi32(_mm512_cvtepu8_epi32(lane128(q[j / 4], j % 4)), offset);
    const __m512 d1 = _mm512_set1_ps(d * static_cast<float>(b.scales[j]));
    _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(d1, _mm512_cvtepi32_ps(qi)));
  }
}

// Dequantized K weights times a float activation: each row's block goes through to_float_block
// into a buffer (L1-resident), then times x, 16 floats at a time.
template <typename Block_>
struct KTimesF32 {
  using Block = Block_;
  using Activation = float;
  static constexpr int kStep = 1;

  template <int kRows, int kBlocks>
  KVLM_TARGET_AVX512 static void step(const Block* w, std::int64_t stride, const float* x,
                                      std::int64_t b, __m512* acc) {
    alignas(64) float wf[kRows][kQK_K];
    for (int r = 0; r < kRows; ++r) to_float_block(w[r * stride + b], wf[r]);
    const float* xb = x + b * kQK_K;
    for (int i = 0; i < kQK_K; i += 16) {
      const __m512 xv = _mm512_loadu_ps(xb + i);
      for (int r = 0; r < kRows; ++r) acc[r] = _mm512_fmadd_ps(_mm512_load_ps(wf[r] + i), xv, acc[r]);
    }
  }
};

template <typename Block>
KVLM_TARGET_AVX512 inline void to_float_k(const void* row, float* out, std::int64_t n) {
  const auto* blocks = static_cast<const Block*>(row);
  for (std::int64_t b = 0; b < n / kQK_K; ++b) to_float_block(blocks[b], out + b * kQK_K);
}

// --- Block types: gemv and gemm over any Kernel above or below ---------------------------------
// A Kernel names its Block, its Activation (what x holds) and kStep, the blocks one step takes
// (2 for the 32-weight types, 1 for the K types' 256).

// Prefetches into L2 every cache line of the kBlocks blocks at p.
template <int kBlocks, typename Block>
KVLM_TARGET_AVX512 inline void prefetch_blocks(const Block* p) {
  for (std::size_t line = 0; line < kBlocks * sizeof(Block); line += 64) {
    prefetch_l2(reinterpret_cast<const char*>(p) + line);
  }
}

// y[0, kRows) = w · x; w: [kRows, n_blocks] blocks, x: the activation of n_blocks blocks.
// Prefetches from w + ahead on unless ahead is 0.
template <typename Kernel, int kRows>
KVLM_TARGET_AVX512 inline void gemv_blocks_rows(const typename Kernel::Block* w,
                                                std::int64_t n_blocks,
                                                const typename Kernel::Activation* x, float* y,
                                                std::int64_t ahead) {
  constexpr int kStep = Kernel::kStep;
  __m512 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
  std::int64_t b = 0;
  for (; b + kStep <= n_blocks; b += kStep) {
    if (ahead != 0) {
      for (int r = 0; r < kRows; ++r) prefetch_blocks<kStep>(w + r * n_blocks + b + ahead);
    }
    Kernel::template step<kRows, kStep>(w, n_blocks, x, b, acc);
  }
  if constexpr (kStep > 1) {
    if (b < n_blocks) Kernel::template step<kRows, 1>(w, n_blocks, x, b, acc);
  }
  for (int r = 0; r < kRows; ++r) y[r] = horizontal_sum(acc[r]);
}

// y = W x; w: [rows, cols] of Kernel::Block, x: [cols] as Kernel::Activation, y: [rows].
template <typename Kernel>
KVLM_TARGET_AVX512 inline void gemv_blocks(const void* w, std::int64_t rows, std::int64_t cols,
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

// --- Several tokens at once (Q8_0, Q4_0 and the K types) ----------------------------------------
// gemm unpacks each weight block once for several tokens (kGemmTokens) and multiplies it by each
// of their activations, kGemmRows rows side by side so that each activation load feeds several
// rows. What gemv's step computes from the activation on every row (Rows::activation) prepare
// computes once per matmul into a Rows::Prepared per step (PreparedPair, PreparedK). Each
// (row, token) then runs the same Rows::multiply in the same order as gemv's step, so gemm's
// outputs are gemv's bit for bit: a token gives the same output alone or in a batch.
//
// Measured on a 5632 x 2048 matrix in L3 over 64-row tiles, one Zen 5 core: 8 tokens cost 2.3x
// one token's gemv in Q4_0 and 2.6x in Q8_0 (a gemv per token: 7.9x and 7.7x); tiles of 2 rows x
// 8 tokens beat 4 x 4, 3 x 4, 2 x 6, 2 x 4, 1 x 8 and 4 x 2. From DRAM, without the prefetch
// below, rows read side by side were slow: 2 tokens cost 3.2x one token, with it 0.95x.

constexpr int kGemmRows = 2;
constexpr int kGemmTokens = 8;
constexpr int kGemmPrefetchRows = 16;

/// Bytes of one token's activation prepared for gemm, for any type: a PreparedPair per two
/// blocks of 32 (Q8_0, Q4_0; one for a last single block) or a PreparedK per 256 (the K types).
inline std::size_t prepared_bytes(std::int64_t cols) {
  const auto pairs = static_cast<std::size_t>((cols / BlockQ8_0::kSize + 1) / 2);
  const auto k_blocks = static_cast<std::size_t>(cols / kQK_K);
  return std::max(pairs * sizeof(PreparedPair), k_blocks * sizeof(PreparedK));
}

// x: [cols / Activation::kSize] activation blocks (quantize_activation's or
// quantize_activation_k's); out: [ceil(n_blocks / kStep)] Rows::Prepared.
template <typename Rows>
KVLM_TARGET_AVX512 inline void prepare(const void* x, std::int64_t cols, void* out) {
  constexpr int kStep = Rows::kStep;
  const auto* xb = static_cast<const typename Rows::Activation*>(x);
  auto* units = static_cast<typename Rows::Prepared*>(out);
  const std::int64_t n_blocks = cols / Rows::Activation::kSize;
  std::int64_t b = 0;
  for (; b + kStep <= n_blocks; b += kStep) {
    store_prepared(Rows::template activation<kStep>(xb + b), units + b / kStep);
  }
  if constexpr (kStep > 1) {
    if (b < n_blocks) store_prepared(Rows::template activation<1>(xb + b), units + b / kStep);
  }
}

// The prepared unit of block column b of the token at x.
template <typename Rows>
const typename Rows::Prepared& prepared_unit(const std::byte* x, std::int64_t b) {
  return reinterpret_cast<const typename Rows::Prepared*>(x)[b / Rows::kStep];
}

// The kBlocks blocks from block column b of kRows rows times kTokens tokens' prepared
// activations (x_stride bytes apart).
template <typename Rows, int kRows, int kTokens, int kBlocks>
KVLM_TARGET_AVX512 inline void gemm_step(const typename Rows::Block* w, std::int64_t n_blocks,
                                         const std::byte* x, std::size_t x_stride, std::int64_t b,
                                         __m512 (&acc)[kRows][kTokens], std::int64_t ahead) {
  if (ahead != 0) {
    KVLM_UNROLL
    for (int r = 0; r < kRows; ++r) prefetch_blocks<kBlocks>(w + r * n_blocks + b + ahead);
  }
  typename Rows::Unpacked rows[kRows];
  KVLM_UNROLL
  for (int r = 0; r < kRows; ++r) rows[r] = Rows::template unpack<kBlocks>(w + r * n_blocks + b);
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) {
    const auto xt = load_prepared(prepared_unit<Rows>(x + t * x_stride, b));
    KVLM_UNROLL
    for (int r = 0; r < kRows; ++r) acc[r][t] = Rows::multiply(rows[r], xt, acc[r][t]);
  }
}

// y[t * ldy + r] = row r · token t for kRows rows and kTokens tokens; w: [kRows, n_blocks],
// x: kTokens prepared activations, x_stride bytes apart. Prefetches from w + ahead on unless
// ahead is 0.
template <typename Rows, int kRows, int kTokens>
KVLM_TARGET_AVX512 inline void gemm_tile(const typename Rows::Block* w, std::int64_t n_blocks,
                                         const std::byte* x, std::size_t x_stride, float* y,
                                         std::int64_t ldy, std::int64_t ahead) {
  constexpr int kStep = Rows::kStep;
  __m512 acc[kRows][kTokens];
  KVLM_UNROLL
  for (int r = 0; r < kRows; ++r) {
    KVLM_UNROLL
    for (int t = 0; t < kTokens; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  std::int64_t b = 0;
  for (; b + kStep <= n_blocks; b += kStep) {
    gemm_step<Rows, kRows, kTokens, kStep>(w, n_blocks, x, x_stride, b, acc, ahead);
  }
  if constexpr (kStep > 1) {
    if (b < n_blocks) gemm_step<Rows, kRows, kTokens, 1>(w, n_blocks, x, x_stride, b, acc, 0);
  }
  KVLM_UNROLL
  for (int r = 0; r < kRows; ++r) {
    KVLM_UNROLL
    for (int t = 0; t < kTokens; ++t) y[t * ldy + r] = horizontal_sum(acc[r][t]);
  }
}

// gemm_tile for `tokens` (1 to kGemmTokens) tokens: the runtime count to its instantiation.
template <typename Rows, int kRows, int kTokens = kGemmTokens>
KVLM_TARGET_AVX512 inline void gemm_tile_tokens(int tokens, const typename Rows::Block* w,
                                                std::int64_t n_blocks, const std::byte* x,
                                                std::size_t x_stride, float* y, std::int64_t ldy,
                                                std::int64_t ahead) {
  if constexpr (kTokens > 1) {
    if (tokens < kTokens) {
      return gemm_tile_tokens<Rows, kRows, kTokens - 1>(tokens, w, n_blocks, x, x_stride, y, ldy,
                                                        ahead);
    }
  }
  gemm_tile<Rows, kRows, kTokens>(w, n_blocks, x, x_stride, y, ldy, ahead);
}

// y[t * ldy + r] = row r · token t; w: [rows, cols] of Rows::Block, x: [n_tokens] activations
// from prepare, prepared_bytes(cols) apart.
template <typename Rows>
KVLM_TARGET_AVX512 inline void gemm(const void* w, std::int64_t rows, std::int64_t cols,
                                    const void* x, std::int64_t n_tokens, float* y,
                                    std::int64_t ldy) {
  const auto* wb = static_cast<const typename Rows::Block*>(w);
  const std::int64_t n_blocks = cols / Rows::Block::kSize;
  const std::size_t x_stride = prepared_bytes(cols);
  for (std::int64_t t = 0; t < n_tokens; t += kGemmTokens) {
    const int tokens = static_cast<int>(std::min<std::int64_t>(kGemmTokens, n_tokens - t));
    const std::byte* xt = static_cast<const std::byte*>(x) + static_cast<std::size_t>(t) * x_stride;
    // The first tokens read the rows from memory, several side by side: they prefetch the rows
    // kGemmPrefetchRows on (those of the next tile too, which the next call reads). The others
    // find the rows in cache.
    const std::int64_t ahead = t == 0 ? kGemmPrefetchRows * n_blocks : 0;
    std::int64_t r = 0;
    for (; r + kGemmRows <= rows; r += kGemmRows) {
      gemm_tile_tokens<Rows, kGemmRows>(tokens, wb + r * n_blocks, n_blocks, xt, x_stride,
                                        y + t * ldy + r, ldy, ahead);
    }
    for (; r < rows; ++r) {
      gemm_tile_tokens<Rows, 1>(tokens, wb + r * n_blocks, n_blocks, xt, x_stride,
                                y + t * ldy + r, ldy, ahead);
    }
  }
}

// --- The kernels: gemv(w: [rows, cols], x, y: [rows]) and to_float(row: [n], out: [n]) ---------

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                        const void* x, float* y) {
  gemv_float<F32>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_f16(const void* w, std::int64_t rows, std::int64_t cols,
                                        const void* x, float* y) {
  gemv_float<F16>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_bf16(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, float* y) {
  gemv_float<BF16>(w, rows, cols, x, y);
}

/// x: [cols / 32] BlockQ8_0, from quantize_activation.
KVLM_TARGET_AVX512 inline void gemv_q8_0(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, float* y) {
  gemv_blocks<TimesQ8<Q8_0Rows>>(w, rows, cols, x, y);
}

/// x: [cols / 32] BlockQ8_0, from quantize_activation.
KVLM_TARGET_AVX512 inline void gemv_q4_0(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, float* y) {
  gemv_blocks<TimesQ8<Q4_0Rows>>(w, rows, cols, x, y);
}

/// x: [n_tokens] activations from prepare_q8_0, prepared_bytes(cols) apart; y: [n_tokens, ldy].
KVLM_TARGET_AVX512 inline void gemm_q8_0(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, std::int64_t n_tokens, float* y,
                                         std::int64_t ldy) {
  gemm<Q8_0Rows>(w, rows, cols, x, n_tokens, y, ldy);
}

/// x: [n_tokens] activations from prepare_q4_0, prepared_bytes(cols) apart; y: [n_tokens, ldy].
KVLM_TARGET_AVX512 inline void gemm_q4_0(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, std::int64_t n_tokens, float* y,
                                         std::int64_t ldy) {
  gemm<Q4_0Rows>(w, rows, cols, x, n_tokens, y, ldy);
}

/// x: [cols / 32] BlockQ8_0 from quantize_activation; out: prepared_bytes(cols) bytes.
KVLM_TARGET_AVX512 inline void prepare_q8_0(const void* x, std::int64_t cols, void* out) {
  prepare<Q8_0Rows>(x, cols, out);
}

/// x: [cols / 32] BlockQ8_0 from quantize_activation; out: prepared_bytes(cols) bytes.
KVLM_TARGET_AVX512 inline void prepare_q4_0(const void* x, std::int64_t cols, void* out) {
  prepare<Q4_0Rows>(x, cols, out);
}

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_q8_0_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                             const void* x, float* y) {
  gemv_blocks<Q8_0TimesF32>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_q4_0_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                             const void* x, float* y) {
  gemv_blocks<Q4_0TimesF32>(w, rows, cols, x, y);
}

template <typename Type>
KVLM_TARGET_AVX512 inline void to_float_16bit(const void* row, float* out, std::int64_t n) {
  const auto* h = static_cast<const std::uint16_t*>(row);
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, Type::load(h + i));
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    _mm512_mask_storeu_ps(out + i, m, Type::load(h + i, m));
  }
}

KVLM_TARGET_AVX512 inline void to_float_f16(const void* row, float* out, std::int64_t n) {
  to_float_16bit<F16>(row, out, n);
}

KVLM_TARGET_AVX512 inline void to_float_bf16(const void* row, float* out, std::int64_t n) {
  to_float_16bit<BF16>(row, out, n);
}

/// d * q in float, exactly as the scalar twin.
KVLM_TARGET_AVX512 inline void to_float_q8_0(const void* row, float* out, std::int64_t n) {
  const auto* blocks = static_cast<const BlockQ8_0*>(row);
  for (std::int64_t b = 0; b < n / BlockQ8_0::kSize; ++b) {
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(blocks[b].d));
    for (int half = 0; half < 2; ++half) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks[b].qs + 16 * half));
      _mm512_storeu_ps(out + b * BlockQ8_0::kSize + 16 * half,
                       _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))));
    }
  }
}

/// d * (q - 8) in float, exactly as the scalar twin.
KVLM_TARGET_AVX512 inline void to_float_q4_0(const void* row, float* out, std::int64_t n) {
  const auto* blocks = static_cast<const BlockQ4_0*>(row);
  const __m512i eight = _mm512_set1_epi32(8);
  for (std::int64_t b = 0; b < n / BlockQ4_0::kSize; ++b) {
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(blocks[b].d));
    const __m512i bytes =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks[b].qs)));
    const __m512i low = _mm512_sub_epi32(_mm512_and_si512(bytes, _mm512_set1_epi32(0x0F)), eight);
    const __m512i high = _mm512_sub_epi32(_mm512_srli_epi32(bytes, 4), eight);
    float* o = out + b * BlockQ4_0::kSize;
    _mm512_storeu_ps(o, _mm512_mul_ps(d, _mm512_cvtepi32_ps(low)));
    _mm512_storeu_ps(o + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(high)));
  }
}

/// scalar::quantize_activation, bit for bit: x: [n], out: [n / 32].
KVLM_TARGET_AVX512 inline void quantize_activation(const float* x, BlockQ8_0* out, std::int64_t n) {
  constexpr int kNearestEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (std::int64_t b = 0; b < n / BlockQ8_0::kSize; ++b) {
    const __m512 x0 = _mm512_loadu_ps(x + b * BlockQ8_0::kSize);
    const __m512 x1 = _mm512_loadu_ps(x + b * BlockQ8_0::kSize + 16);
    const float amax = horizontal_max(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = fp32_to_fp16(d);
    const __m512 inverse = _mm512_set1_ps(id);
    const __m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(x0, inverse), kNearestEven);
    const __m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(x1, inverse), kNearestEven);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16), _mm512_cvtsepi32_epi8(q1));
  }
}

/// x: [cols / 256] BlockQ8_K, from quantize_activation_k.
KVLM_TARGET_AVX512 inline void gemv_q4_k(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, float* y) {
  gemv_blocks<TimesQ8<K4Rows<BlockQ4_K>>>(w, rows, cols, x, y);
}

/// x: [cols / 256] BlockQ8_K, from quantize_activation_k.
KVLM_TARGET_AVX512 inline void gemv_q5_k(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, float* y) {
  gemv_blocks<TimesQ8<K4Rows<BlockQ5_K>>>(w, rows, cols, x, y);
}

/// x: [cols / 256] BlockQ8_K, from quantize_activation_k.
KVLM_TARGET_AVX512 inline void gemv_q6_k(const void* w, std::int64_t rows, std::int64_t cols,
                                         const void* x, float* y) {
  gemv_blocks<TimesQ8<Q6_KRows>>(w, rows, cols, x, y);
}

/// The K types' one preparation, for gemm<K4Rows<...>> and gemm<Q6_KRows>: x: [cols / 256]
/// BlockQ8_K from quantize_activation_k; out: prepared_bytes(cols) bytes.
KVLM_TARGET_AVX512 inline void prepare_k(const void* x, std::int64_t cols, void* out) {
  prepare<KRows>(x, cols, out);
}

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_q4_k_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                             const void* x, float* y) {
  gemv_blocks<KTimesF32<BlockQ4_K>>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_q5_k_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                             const void* x, float* y) {
  gemv_blocks<KTimesF32<BlockQ5_K>>(w, rows, cols, x, y);
}

/// x: [cols] floats.
KVLM_TARGET_AVX512 inline void gemv_q6_k_f32(const void* w, std::int64_t rows, std::int64_t cols,
                                             const void* x, float* y) {
  gemv_blocks<KTimesF32<BlockQ6_K>>(w, rows, cols, x, y);
}

/// Exactly as the scalar twin (fused d1 * q - m1).
KVLM_TARGET_AVX512 inline void to_float_q4_k(const void* row, float* out, std::int64_t n) {
  to_float_k<BlockQ4_K>(row, out, n);
}

/// Exactly as the scalar twin (fused d1 * q - m1).
KVLM_TARGET_AVX512 inline void to_float_q5_k(const void* row, float* out, std::int64_t n) {
  to_float_k<BlockQ5_K>(row, out, n);
}

/// (d * scale) * (q - 32), exactly as the scalar twin.
KVLM_TARGET_AVX512 inline void to_float_q6_k(const void* row, float* out, std::int64_t n) {
  to_float_k<BlockQ6_K>(row, out, n);
}

/// scalar::quantize_activation_k, bit for bit: x: [n], out: [n / 256].
KVLM_TARGET_AVX512 inline void quantize_activation_k(const float* x, BlockQ8_K* out, std::int64_t n) {
  constexpr int kNearestEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (std::int64_t b = 0; b < n / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < kQK_K; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(xb + i)));
    const float d = horizontal_max(amax) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    const __m512 inverse = _mm512_set1_ps(id);
    for (int j = 0; j < kQK_K / 16; ++j) {
      const __m512i q = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * j), inverse),
                                                 kNearestEven);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16 * j), _mm512_cvtsepi32_epi8(q));
      out[b].bsums[j] = static_cast<std::int16_t>(_mm512_reduce_add_epi32(q));
    }
  }
}

// --- Interleaved rows (kernels/interleaved.hpp) ----------------------------------------------
// Lane r of every vector is row r of a group of 16. 32 weights of a group unpack into 8 vectors,
// vector k holding elements 4k .. 4k + 3 of the 16 rows; each token's activation block is then 8
// dpbusd with the token's bytes 4k .. 4k + 3 broadcast (starting from the sum that takes the
// weights' offset off), one convert, one product by the token's scale and one FMA by the rows'
// scales: 11 instructions for 16 rows, where the stored layout takes 2 per row. Q4_K and Q5_K add
// one FMA for their minimums per 32 weights, Q6_K a convert and an FMA for the second scale of
// its sub-blocks of 16; the K-quants' sub-block scales are unpacked into floats (d x scale) once
// per sub-block for all the tokens. The outputs do not depend on the number of tokens: each
// (row, token) adds the same blocks in the same order.

// The q of 32 weights of 16 rows, vector k holding elements 4k .. 4k + 3.
KVLM_TARGET_AVX512 inline void unpack_interleaved(const BlockQ4_0x16& w, __m512i (&q)[8]) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  KVLM_UNROLL
  for (int k = 0; k < 4; ++k) {
    const __m512i bytes = _mm512_loadu_si512(w.qs[k]);
    q[k] = _mm512_and_si512(bytes, low);
    q[4 + k] = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low);
  }
}

KVLM_TARGET_AVX512 inline void unpack_interleaved(const BlockQ8_0x16& w, __m512i (&q)[8]) {
  KVLM_UNROLL
  for (int k = 0; k < 8; ++k) q[k] = _mm512_loadu_si512(w.qs[k]);
}

// Every byte of v with its bit `from` moved to bit `to`, and other bits of its own or of the
// byte next to it elsewhere (for the caller to mask off: the shifts are 16-bit).
KVLM_TARGET_AVX512 inline __m512i move_bits(__m512i v, int from, int to) {
  return from > to ? _mm512_srli_epi16(v, from - to) : _mm512_slli_epi16(v, to - from);
}

// Sub-block j's q of 16 K-quant rows (as q_of in kernels/interleaved.hpp gives them): the low
// (j even) or high nibbles of chunks qs[j / 2], with Q5_K's fifth bit and Q6_K's top two.
KVLM_TARGET_AVX512 inline void unpack_sub_block(const std::uint8_t (&qs)[4][8][4 * kInterleave],
                                                int j, __m512i (&q)[8]) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  KVLM_UNROLL
  for (int k = 0; k < 8; ++k) {
    q[k] = _mm512_and_si512(move_bits(_mm512_loadu_si512(qs[j / 2][k]), 4 * (j % 2), 0), low);
  }
}
KVLM_TARGET_AVX512 inline void unpack_sub_block(const BlockQ4_Kx16& w, int j, __m512i (&q)[8]) {
  unpack_sub_block(w.qs, j, q);
}
KVLM_TARGET_AVX512 inline void unpack_sub_block(const BlockQ5_Kx16& w, int j, __m512i (&q)[8]) {
  unpack_sub_block(w.q4.qs, j, q);
  const __m512i fifth = _mm512_set1_epi8(0x10);
  KVLM_UNROLL
  for (int k = 0; k < 8; ++k) {
    const __m512i bits = move_bits(_mm512_loadu_si512(w.qh[k]), j, 4);
    q[k] = _mm512_ternarylogic_epi32(q[k], bits, fifth, 0xF8);  // q | (bits & fifth)
  }
}
KVLM_TARGET_AVX512 inline void unpack_sub_block(const BlockQ6_Kx16& w, int j, __m512i (&q)[8]) {
  unpack_sub_block(w.qs, j, q);
  const __m512i top = _mm512_set1_epi8(0x30);
  KVLM_UNROLL
  for (int k = 0; k < 8; ++k) {
    const __m512i bits = move_bits(_mm512_loadu_si512(w.qh[j / 4][k]), 2 * (j % 4), 4);
    q[k] = _mm512_ternarylogic_epi32(q[k], bits, top, 0xF8);  // q | (bits & top)
  }
}

// Where a block's int32 sum starts, taking the stored offset (8 or 128) off.
inline std::int32_t offset_sum(const BlockQ4_0x16&, const ActivationBlock& x) {
  return x.minus_8_sum;
}
inline std::int32_t offset_sum(const BlockQ8_0x16&, const ActivationBlock& x) {
  return x.minus_128_sum;
}

// start plus the int32 sum of 16 rows' q (vectors as unpacked above) times an activation
// block, over vectors [first, first + count) (elements 4 first .. 4 (first + count) - 1).
KVLM_TARGET_AVX512 inline __m512i dot_block(const __m512i (&q)[8], const ActivationBlock& a,
                                            __m512i start, int first = 0, int count = 8) {
  __m512i sum = start;
  KVLM_UNROLL
  for (int k = first; k < first + count; ++k) {
    std::int32_t four;
    std::memcpy(&four, a.q + 4 * k, sizeof four);
    sum = _mm512_dpbusd_epi32(sum, q[k], _mm512_set1_epi32(four));
  }
  return sum;
}

// Prefetches part `part` of the block at p, cut into kParts runs of whole cache lines (the last
// run may reach into the next block), into L2 or (kIntoL1) L1. The K-quant tiles prefetch one
// eighth of a block per sub-block: issued all at once, a Q6_K block's 53 prefetches
// held up the loads behind them, and one token over a matrix in DRAM ran 25-35% slower (Q4_K 20%)
// than with them spread. Always inlined, as is prefetch_sub_block: GCC takes a function that only
// prefetches for one without effects and drops the calls to it that it has not inlined.
template <int kParts, bool kIntoL1 = false, typename Block16>
KVLM_TARGET_AVX512 KVLM_ALWAYS_INLINE void prefetch_part(const Block16* p, int part) {
  constexpr int kLines = (sizeof(Block16) + 64 * kParts - 1) / (64 * kParts);
  const char* first = reinterpret_cast<const char*>(p) + part * kLines * 64;
  KVLM_UNROLL
  for (int line = 0; line < kLines; ++line) {
    if constexpr (kIntoL1) {
      _mm_prefetch(first + 64 * line, _MM_HINT_T0);
    } else {
      _mm_prefetch(first + 64 * line, _MM_HINT_T1);
    }
  }
}

// The K-quant tiles' prefetches for sub-block j of block b of group w: the next group's block b
// into L2 unless ahead is 0; for one token, also block b + 1 into L1. One token's work on a block
// is too short to hide the block's wait on L2 (Q6_K decode on tinyllama-1.1b: 1.16x with it).
template <int kTokens, typename Block16>
KVLM_TARGET_AVX512 KVLM_ALWAYS_INLINE void prefetch_sub_block(const Block16* w, std::int64_t b,
                                                              int j, std::int64_t ahead) {
  if (ahead != 0) prefetch_part<8>(w + b + ahead, j);
  if constexpr (kTokens == 1) prefetch_part<8, true>(w + b + 1, j);
}

// acc[t] += the 16 rows of group w: [n_blocks] times token t, x: kTokens tokens' activation
// blocks, x_stride apart. Prefetches from w + ahead on unless ahead is 0.
template <typename Block16, int kTokens>
KVLM_TARGET_AVX512 inline void interleaved_tile(const Block16* w, std::int64_t n_blocks,
                                                const ActivationBlock* x, std::int64_t x_stride,
                                                __m512 (&acc)[kTokens], std::int64_t ahead) {
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    if (ahead != 0) prefetch_part<1>(w + b + ahead, 0);
    __m512i q[8];
    unpack_interleaved(w[b], q);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].d)));
    KVLM_UNROLL
    for (int t = 0; t < kTokens; ++t) {
      const ActivationBlock& a = x[t * x_stride + b];
      const __m512i sum = dot_block(q, a, _mm512_set1_epi32(offset_sum(w[b], a)));
      const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(a.d));
      acc[t] = _mm512_fmadd_ps(scaled, d, acc[t]);
    }
  }
}

// The 16 bytes of lane i (0..3) of v as 16 floats.
KVLM_TARGET_AVX512 inline __m512 bytes_to_floats(__m512i v, int i) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lane128(v, i)));
}

// interleaved_tile for Q4_K and Q5_K: a block is 8 sub-blocks of 32, each meeting one
// activation block.
template <typename Block16, int kTokens>
KVLM_TARGET_AVX512 inline void interleaved_tile_k4(const Block16* w, std::int64_t n_blocks,
                                                   const ActivationBlock* x, std::int64_t x_stride,
                                                   __m512 (&acc)[kTokens], std::int64_t ahead) {
  // The sums in locals: GCC keeps an array behind a reference in memory, storing it at every
  // update, where this function is too large to be inlined into its caller.
  __m512 sums[kTokens];
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) sums[t] = acc[t];
  const __m512i low4 = _mm512_set1_epi8(0x0F), high2 = _mm512_set1_epi8(0x30);
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    const BlockQ4_Kx16& k4 = q4_fields(w[b]);
    // Sub-block j's scales and minimums, 6 bits each, in lane j % 4 of scales[j / 4] and
    // mins[j / 4]: the low 4 bits from scales_low, the top 2 from nibble j / 4 of scales_high.
    const __m512i high = _mm512_loadu_si512(k4.scales_high);
    const __m512i lows[2] = {_mm512_loadu_si512(k4.scales_low[0]),
                             _mm512_loadu_si512(k4.scales_low[4])};
    const __m512i scales[2] = {
        _mm512_or_si512(_mm512_and_si512(lows[0], low4),
                        _mm512_and_si512(_mm512_slli_epi16(high, 4), high2)),
        _mm512_or_si512(_mm512_and_si512(lows[1], low4), _mm512_and_si512(high, high2))};
    const __m512i mins[2] = {
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lows[0], 4), low4),
                        _mm512_and_si512(_mm512_slli_epi16(high, 2), high2)),
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lows[1], 4), low4),
                        _mm512_and_si512(_mm512_srli_epi16(high, 2), high2))};
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k4.d)));
    const __m512 dmin =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k4.dmin)));
    const ActivationBlock* xb = x + b * (Block16::kSize / BlockQ8_0::kSize);
    KVLM_UNROLL
    for (int j = 0; j < 8; ++j) {
      const __m512 scale = _mm512_mul_ps(d, bytes_to_floats(scales[j / 4], j % 4));
      const __m512 min = _mm512_mul_ps(dmin, bytes_to_floats(mins[j / 4], j % 4));
      prefetch_sub_block<kTokens>(w, b, j, ahead);
      __m512i q[8];
      unpack_sub_block(w[b], j, q);
      KVLM_UNROLL
      for (int t = 0; t < kTokens; ++t) {
        const ActivationBlock& a = xb[t * x_stride + j];
        const __m512i sum = dot_block(q, a, _mm512_setzero_si512());
        const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(a.d));
        sums[t] = _mm512_fmadd_ps(scaled, scale, sums[t]);
        sums[t] = _mm512_fnmadd_ps(min, _mm512_set1_ps(a.d_sum), sums[t]);
      }
    }
  }
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) acc[t] = sums[t];
}

// interleaved_tile for Q6_K: sub-block j of 32 meets activation block j; its halves of 16, each
// with its own scale, are two dpbusd chains, each starting from -32 x its half's activation sum.
template <int kTokens>
KVLM_TARGET_AVX512 inline void interleaved_tile_q6(const BlockQ6_Kx16* w, std::int64_t n_blocks,
                                                   const ActivationBlock* x, std::int64_t x_stride,
                                                   __m512 (&acc)[kTokens], std::int64_t ahead) {
  __m512 sums[kTokens];  // in locals, as interleaved_tile_k4's
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) sums[t] = acc[t];
  for (std::int64_t b = 0; b < n_blocks; ++b) {
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].d)));
    const ActivationBlock* xb = x + b * (BlockQ6_Kx16::kSize / BlockQ8_0::kSize);
    KVLM_UNROLL
    for (int j = 0; j < 8; ++j) {
      __m512 scale[2];  // d x the scales of the sub-block's halves
      KVLM_UNROLL
      for (int h = 0; h < 2; ++h) {
        const auto* bytes = reinterpret_cast<const __m128i*>(w[b].scales[2 * j + h]);
        const __m512i ints = _mm512_cvtepi8_epi32(_mm_loadu_si128(bytes));
        scale[h] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(ints));
      }
      prefetch_sub_block<kTokens>(w, b, j, ahead);
      __m512i q[8];
      unpack_sub_block(w[b], j, q);
      KVLM_UNROLL
      for (int t = 0; t < kTokens; ++t) {
        const ActivationBlock& a = xb[t * x_stride + j];
        const __m512i low = dot_block(q, a, _mm512_set1_epi32(a.minus_32_sums[0]), 0, 4);
        const __m512i high = dot_block(q, a, _mm512_set1_epi32(a.minus_32_sums[1]), 4, 4);
        const __m512 scaled = _mm512_fmadd_ps(_mm512_cvtepi32_ps(high), scale[1],
                                              _mm512_mul_ps(_mm512_cvtepi32_ps(low), scale[0]));
        sums[t] = _mm512_fmadd_ps(scaled, _mm512_set1_ps(a.d), sums[t]);
      }
    }
  }
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) acc[t] = sums[t];
}

// The 16 rows of group w times `tokens` (1 to kTokens) tokens, rows `lanes` of them stored:
// y[t * ldy + r] for lane r; the runtime count to its instantiation.
template <typename Block16, int kTokens>
KVLM_TARGET_AVX512 inline void interleaved_group(int tokens, const Block16* w,
                                                 std::int64_t n_blocks, const ActivationBlock* x,
                                                 std::int64_t x_stride, __mmask16 lanes, float* y,
                                                 std::int64_t ldy, std::int64_t ahead) {
  if constexpr (kTokens > 1) {
    if (tokens < kTokens) {
      return interleaved_group<Block16, kTokens - 1>(tokens, w, n_blocks, x, x_stride, lanes, y,
                                                     ldy, ahead);
    }
  }
  __m512 acc[kTokens];
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) acc[t] = _mm512_setzero_ps();
  if constexpr (std::is_same_v<Block16, BlockQ4_Kx16> || std::is_same_v<Block16, BlockQ5_Kx16>) {
    interleaved_tile_k4<Block16, kTokens>(w, n_blocks, x, x_stride, acc, ahead);
  } else if constexpr (std::is_same_v<Block16, BlockQ6_Kx16>) {
    interleaved_tile_q6<kTokens>(w, n_blocks, x, x_stride, acc, ahead);
  } else {
    interleaved_tile<Block16, kTokens>(w, n_blocks, x, x_stride, acc, ahead);
  }
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) _mm512_mask_storeu_ps(y + t * ldy, lanes, acc[t]);
}

constexpr int kInterleavedTokens = 8;
// The groups the tokens pass over together, kInterleavedTokens at a time: as many as fit in this
// many bytes, so they stay in L2 while each pass's activations are read once for all of them.
// One group at a time, a 512-token product read every activation once per group: on 2 threads,
// blocks of 4-16 groups ran 1.05-1.10x as fast on matrices of 2048 columns and 1.01-1.08x on
// 5632 (a harness alternating the two 25 times; tinyllama-1.1b's prefill moved within noise).
constexpr std::int64_t kInterleavedBlockBytes = 256 * 1024;

/// scalar::gemm_interleaved, bit for bit: y[t * ldy + r] = row r · token t for r in
/// [row_begin, row_end).
template <typename Block16>
KVLM_TARGET_AVX512 inline void gemm_interleaved(const void* w, std::int64_t row_begin,
                                                std::int64_t row_end, std::int64_t cols,
                                                const ActivationBlock* x, std::int64_t n_tokens,
                                                float* y, std::int64_t ldy) {
  const std::int64_t n_blocks = cols / Block16::kSize, x_stride = cols / BlockQ8_0::kSize;
  const auto* groups = static_cast<const Block16*>(w);
  const std::int64_t first_group = row_begin / kInterleave;
  const std::int64_t end_group = (row_end + kInterleave - 1) / kInterleave;
  const std::int64_t block_groups = std::max<std::int64_t>(
      1, kInterleavedBlockBytes / (n_blocks * static_cast<std::int64_t>(sizeof(Block16))));
  for (std::int64_t g0 = first_group; g0 < end_group; g0 += block_groups) {
    const std::int64_t g1 = std::min(end_group, g0 + block_groups);
    for (std::int64_t t = 0; t < n_tokens; t += kInterleavedTokens) {
      const int tokens = static_cast<int>(std::min<std::int64_t>(kInterleavedTokens, n_tokens - t));
      for (std::int64_t g = g0; g < g1; ++g) {
        // The group's rows in [row_begin, row_end), as lanes; y from the group's first row.
        const std::int64_t first = g * kInterleave;
        const std::int64_t lo = std::max(row_begin, first) - first;
        const std::int64_t hi = std::min(row_end, first + kInterleave) - first;
        const auto lanes = static_cast<__mmask16>(((1u << hi) - 1) & ~((1u << lo) - 1));
        // The first tokens read the group from memory, prefetching the next group into L2
        // (without that, 8 tokens over a matrix in DRAM cost 2.5x one token, with it 1.1x);
        // the other tokens find the block in cache.
        const std::int64_t ahead = t == 0 && g + 1 < end_group ? n_blocks : 0;
        interleaved_group<Block16, kInterleavedTokens>(tokens, groups + g * n_blocks, n_blocks,
                                                       x + t * x_stride, x_stride, lanes,
                                                       y + t * ldy + first, ldy, ahead);
      }
    }
  }
}

// --- The float GEMM over packed panels (layout in kernels/panel.hpp) ---------------------------
// Two vectors hold a panel column's 32 rows; each of kPanelTokens tokens broadcasts its value of
// that column into two FMAs, so the 16 accumulators (32 rows x 8 tokens) stay in registers over
// all the columns. One core reaches about 0.9 of its FMA peak on tinyllama-1.1b's matrices
// (8, 10 and 12 tokens ran within noise of each other).

// Transposes 16 rows of 16 floats in registers: v[i] holds row i, and then column i.
KVLM_TARGET_AVX512 inline void transpose16(__m512 (&v)[16]) {
  __m512 t[16];
  KVLM_UNROLL
  for (int i = 0; i < 16; i += 2) {  // t[i], t[i + 1]: rows i and i + 1 interleaved by element
    t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  KVLM_UNROLL
  for (int i = 0; i < 16; i += 4) {  // then by pairs: each 128-bit lane holds a 4 x 4 block
    v[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    v[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    v[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    v[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  KVLM_UNROLL
  for (int i = 0; i < 4; ++i) {  // then the 128-bit lanes, in two rounds
    t[i] = _mm512_shuffle_f32x4(v[i], v[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(v[i], v[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(v[i + 8], v[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(v[i + 8], v[i + 12], 0xdd);
  }
  KVLM_UNROLL
  for (int i = 0; i < 8; ++i) {
    v[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    v[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

/// kernels::pack_panel, 16 x 16 floats at a time; with T = std::uint32_t, the same for
/// 32-bit words (pack_pair_panel's pairs).
template <typename T>
KVLM_TARGET_AVX512 inline void pack_panel(const T* rows, std::int64_t ld, std::int64_t n_rows,
                                          std::int64_t cols, T* panel) {
  static_assert(sizeof(T) == 4);
  for (int half = 0; half < kPanelRows / 16; ++half) {
    for (std::int64_t k = 0; k < cols; k += 16) {
      const std::int64_t n_cols = std::min<std::int64_t>(16, cols - k);
      const __mmask16 m = first_lanes(n_cols);
      __m512 v[16];
      KVLM_UNROLL
      for (int i = 0; i < 16; ++i) {
        const std::int64_t r = half * 16 + i;
        v[i] = r < n_rows ? _mm512_maskz_loadu_ps(m, rows + r * ld + k) : _mm512_setzero_ps();
      }
      transpose16(v);
      for (std::int64_t i = 0; i < n_cols; ++i) {
        _mm512_storeu_ps(panel + (k + i) * kPanelRows + half * 16, v[i]);
      }
    }
  }
}

constexpr int kPanelTokens = 8;

// The panel's rows times kTokens tokens, token t at x + t * ldx; rows `lanes[h]` of half h
// stored.
template <int kTokens>
KVLM_TARGET_AVX512 inline void gemm_panel_tokens(int tokens, const float* panel,
                                                 std::int64_t cols, const float* x,
                                                 std::int64_t ldx, const __mmask16 (&lanes)[2],
                                                 float* y, std::int64_t ldy) {
  if constexpr (kTokens > 1) {
    if (tokens < kTokens) {
      return gemm_panel_tokens<kTokens - 1>(tokens, panel, cols, x, ldx, lanes, y, ldy);
    }
  }
  __m512 acc[kTokens][2];
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (std::int64_t k = 0; k < cols; ++k) {
    const __m512 w0 = _mm512_loadu_ps(panel + k * kPanelRows);
    const __m512 w1 = _mm512_loadu_ps(panel + k * kPanelRows + 16);
    KVLM_UNROLL
    for (int t = 0; t < kTokens; ++t) {
      const __m512 xt = _mm512_set1_ps(x[t * ldx + k]);
      acc[t][0] = _mm512_fmadd_ps(w0, xt, acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(w1, xt, acc[t][1]);
    }
  }
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, lanes[0], acc[t][0]);
    _mm512_mask_storeu_ps(y + t * ldy + 16, lanes[1], acc[t][1]);
  }
}

/// scalar::gemm_panel, bit for bit.
KVLM_TARGET_AVX512 inline void gemm_panel(const float* panel, std::int64_t n_rows,
                                          std::int64_t cols, const float* x, std::int64_t ldx,
                                          std::int64_t n_tokens, float* y, std::int64_t ldy) {
  const __mmask16 lanes[2] = {first_lanes(std::min<std::int64_t>(n_rows, 16)),
                              first_lanes(std::max<std::int64_t>(n_rows - 16, 0))};
  for (std::int64_t t = 0; t < n_tokens; t += kPanelTokens) {
    const int tokens = static_cast<int>(std::min<std::int64_t>(kPanelTokens, n_tokens - t));
    gemm_panel_tokens<kPanelTokens>(tokens, panel, cols, x + t * ldx, ldx, lanes, y + t * ldy,
                                    ldy);
  }
}

// --- The BF16 GEMM over pair panels (layout in kernels/panel.hpp) ------------------------------
// As the float GEMM, with vdpbf16ps in place of the FMA: each token broadcasts a pair of its
// bfloat16 values, and one instruction adds two columns' products to 16 rows' sums.

#define KVLM_TARGET_AVX512_BF16                                                             \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")))

/// scalar::to_bf16, bit for bit.
KVLM_TARGET_AVX512_BF16 inline void to_bf16(const float* x, std::uint16_t* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(std::min<std::int64_t>(16, n - i));
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(out + i, m, reinterpret_cast<const __m256i&>(v));
  }
}

/// kernels::pack_pair_panel: the rows' 32-bit words packed as a float panel's floats.
KVLM_TARGET_AVX512_BF16 inline void pack_pair_panel(const std::uint16_t* rows, std::int64_t ld,
                                                    std::int64_t n_rows, std::int64_t cols,
                                                    std::uint32_t* panel) {
  // Only the intrinsics' loads read through this pointer, and they may alias anything.
  pack_panel(reinterpret_cast<const std::uint32_t*>(rows), ld / 2, n_rows, cols / 2, panel);
}

// The pair panel's rows times kTokens tokens, token t's bfloat16 values at x + t * ldx; rows
// `lanes[h]` of half h stored.
template <int kTokens>
KVLM_TARGET_AVX512_BF16 inline void gemm_pair_panel_tokens(int tokens, const std::uint32_t* panel,
                                                           std::int64_t pairs,
                                                           const std::uint16_t* x,
                                                           std::int64_t ldx,
                                                           const __mmask16 (&lanes)[2], float* y,
                                                           std::int64_t ldy) {
  if constexpr (kTokens > 1) {
    if (tokens < kTokens) {
      return gemm_pair_panel_tokens<kTokens - 1>(tokens, panel, pairs, x, ldx, lanes, y, ldy);
    }
  }
  __m512 acc[kTokens][2];
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (std::int64_t p = 0; p < pairs; ++p) {
    const __m512i w0 = _mm512_loadu_si512(panel + p * kPanelRows);
    const __m512i w1 = _mm512_loadu_si512(panel + p * kPanelRows + 16);
    KVLM_UNROLL
    for (int t = 0; t < kTokens; ++t) {
      std::uint32_t pair;
      std::memcpy(&pair, x + t * ldx + 2 * p, sizeof pair);
      const __m512i xt = _mm512_set1_epi32(static_cast<int>(pair));
      acc[t][0] = _mm512_dpbf16_ps(acc[t][0], reinterpret_cast<const __m512bh&>(w0),
                                   reinterpret_cast<const __m512bh&>(xt));
      acc[t][1] = _mm512_dpbf16_ps(acc[t][1], reinterpret_cast<const __m512bh&>(w1),
                                   reinterpret_cast<const __m512bh&>(xt));
    }
  }
  KVLM_UNROLL
  for (int t = 0; t < kTokens; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, lanes[0], acc[t][0]);
    _mm512_mask_storeu_ps(y + t * ldy + 16, lanes[1], acc[t][1]);
  }
}

/// scalar::gemm_pair_panel, bit for bit.
KVLM_TARGET_AVX512_BF16 inline void gemm_pair_panel(const std::uint32_t* panel,
                                                    std::int64_t n_rows, std::int64_t cols,
                                                    const std::uint16_t* x, std::int64_t ldx,
                                                    std::int64_t n_tokens, float* y,
                                                    std::int64_t ldy) {
  const __mmask16 lanes[2] = {first_lanes(std::min<std::int64_t>(n_rows, 16)),
                              first_lanes(std::max<std::int64_t>(n_rows - 16, 0))};
  for (std::int64_t t = 0; t < n_tokens; t += kPanelTokens) {
    const int tokens = static_cast<int>(std::min<std::int64_t>(kPanelTokens, n_tokens - t));
    gemm_pair_panel_tokens<kPanelTokens>(tokens, panel, cols / 2, x + t * ldx, ldx, lanes,
                                         y + t * ldy, ldy);
  }
}

// --- Elementwise math (scalar::exp and what uses it), 16 lanes at a time --------------------------

// 2^k on each lane, for k in [-126, 127] (scalar::pow2). A function, not a lambda: a lambda
// does not inherit its enclosing function's target attribute.
KVLM_TARGET_AVX512 inline __m512 pow2(__m512i k) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k, _mm512_set1_epi32(127)), 23));
}

/// scalar::exp on each lane, bit for bit.
KVLM_TARGET_AVX512 inline __m512 exp(__m512 x) {
  using C = scalar::ExpConstants;
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(C::kExpMin)), _mm512_set1_ps(C::kExpMax));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(C::kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-C::kLn2Hi), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-C::kLn2Lo), r);
  __m512 p = _mm512_set1_ps(C::kP[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C::kP[i]));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512i k = _mm512_cvtps_epi32(n);
  const __m512i half = _mm512_srai_epi32(k, 1);
  return _mm512_mul_ps(_mm512_mul_ps(p, pow2(half)), pow2(_mm512_sub_epi32(k, half)));
}

/// scalar::exp_shifted, bit for bit.
KVLM_TARGET_AVX512 inline void exp_shifted(float* x, std::int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  for (std::int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(std::min<std::int64_t>(16, n - i));
    _mm512_mask_storeu_ps(x + i, m, exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s)));
  }
}

/// scalar::silu_mul, bit for bit.
KVLM_TARGET_AVX512 inline void silu_mul(float* gate, const float* up, std::int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (std::int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(std::min<std::int64_t>(16, n - i));
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

// --- One token's attention: a KV head's query heads against its cached rows ---------------------
// attention() calls these on a tile of rows it has just copied (or converted) into cache, so they
// read L1/L2. Scores take four rows at a time, one accumulator each, summed together at the end;
// weighted rows keep kWeightedQueries query heads x 64 columns of outputs in registers while the
// rows stream past, each row's vector loaded once for all of them.

constexpr int kWeightedQueries = 4;

// The lanes of [c, c + 16) that fall below cols.
inline __mmask16 lanes_below(std::int64_t cols, std::int64_t c) {
  return first_lanes(std::clamp<std::int64_t>(cols - c, 0, 16));
}

// The sums of a's, b's, c's and d's lanes, in that order.
KVLM_TARGET_AVX512 inline __m128 horizontal_sums(__m512 a, __m512 b, __m512 c, __m512 d) {
  // Within each 128-bit lane: ab = [a0 + a2, b0 + b2, a1 + a3, b1 + b3], likewise cd; then the
  // partial sums of a, b, c and d in turn; then the four 128-bit lanes added together.
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512 v = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(v);
}

/// scalar::scores, within a dot product's rounding.
KVLM_TARGET_AVX512 inline void scores(const float* q, std::int64_t ldq, std::int64_t n_q,
                                      const float* rows, std::int64_t ld, std::int64_t n_rows,
                                      std::int64_t cols, float scale, float* s, std::int64_t lds) {
  const __m128 scale_v = _mm_set1_ps(scale);
  const __mmask16 tail = first_lanes(cols % 16);
  for (std::int64_t t = 0; t < n_rows; t += 4) {
    // Rows t .. t + 3; past the last row, the last row again, its sums not stored.
    const std::int64_t n = std::min<std::int64_t>(4, n_rows - t);
    const float* row[4];
    for (int i = 0; i < 4; ++i) row[i] = rows + (t + std::min<std::int64_t>(i, n - 1)) * ld;
    for (std::int64_t g = 0; g < n_q; ++g) {
      const float* x = q + g * ldq;
      __m512 acc[4];
      KVLM_UNROLL for (int i = 0; i < 4; ++i) acc[i] = _mm512_setzero_ps();
      std::int64_t c = 0;
      for (; c + 16 <= cols; c += 16) {
        const __m512 xc = _mm512_loadu_ps(x + c);
        KVLM_UNROLL for (int i = 0; i < 4; ++i) {
          acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(row[i] + c), xc, acc[i]);
        }
      }
      if (c < cols) {
        const __m512 xc = _mm512_maskz_loadu_ps(tail, x + c);
        KVLM_UNROLL for (int i = 0; i < 4; ++i) {
          acc[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, row[i] + c), xc, acc[i]);
        }
      }
      const __m128 sums = _mm_mul_ps(horizontal_sums(acc[0], acc[1], acc[2], acc[3]), scale_v);
      _mm_mask_storeu_ps(s + g * lds + t, static_cast<__mmask8>(first_lanes(n)), sums);
    }
  }
}

// Query heads [0, kQueries) of add_weighted_rows, over columns [c, c + 64).
template <int kQueries>
KVLM_TARGET_AVX512 inline void add_weighted_rows_tile(const float* p, std::int64_t ldp,
                                                      const float* rows, std::int64_t ld,
                                                      std::int64_t n_rows, std::int64_t cols,
                                                      std::int64_t c, float* out,
                                                      std::int64_t ldo) {
  __mmask16 m[4];
  __m512 acc[kQueries][4];
  KVLM_UNROLL for (int j = 0; j < 4; ++j) {
    m[j] = lanes_below(cols, c + 16 * j);
    KVLM_UNROLL for (int g = 0; g < kQueries; ++g) {
      acc[g][j] = _mm512_maskz_loadu_ps(m[j], out + g * ldo + c + 16 * j);
    }
  }
  for (std::int64_t t = 0; t < n_rows; ++t) {
    KVLM_UNROLL for (int j = 0; j < 4; ++j) {
      const __m512 v = _mm512_maskz_loadu_ps(m[j], rows + t * ld + c + 16 * j);
      KVLM_UNROLL for (int g = 0; g < kQueries; ++g) {
        acc[g][j] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * ldp + t]), v, acc[g][j]);
      }
    }
  }
  KVLM_UNROLL for (int j = 0; j < 4; ++j) {
    KVLM_UNROLL for (int g = 0; g < kQueries; ++g) {
      _mm512_mask_storeu_ps(out + g * ldo + c + 16 * j, m[j], acc[g][j]);
    }
  }
}

/// scalar::add_weighted_rows, bit for bit.
KVLM_TARGET_AVX512 inline void add_weighted_rows(const float* p, std::int64_t ldp,
                                                 std::int64_t n_q, const float* rows,
                                                 std::int64_t ld, std::int64_t n_rows,
                                                 std::int64_t cols, float* out,
                                                 std::int64_t ldo) {
  for (std::int64_t g = 0; g < n_q; g += kWeightedQueries) {
    const float* pg = p + g * ldp;
    float* og = out + g * ldo;
    for (std::int64_t c = 0; c < cols; c += 64) {
      switch (std::min<std::int64_t>(kWeightedQueries, n_q - g)) {
        case 1: add_weighted_rows_tile<1>(pg, ldp, rows, ld, n_rows, cols, c, og, ldo); break;
        case 2: add_weighted_rows_tile<2>(pg, ldp, rows, ld, n_rows, cols, c, og, ldo); break;
        case 3: add_weighted_rows_tile<3>(pg, ldp, rows, ld, n_rows, cols, c, og, ldo); break;
        default: add_weighted_rows_tile<4>(pg, ldp, rows, ld, n_rows, cols, c, og, ldo); break;
      }
    }
  }
}
}  // namespace kvlm::kernels::avx512

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#undef KVLM_TARGET_AVX512  // the attributes belong to these definitions, not to the host
#undef KVLM_TARGET_AVX512_BF16
#undef KVLM_UNROLL
#undef KVLM_ALWAYS_INLINE
