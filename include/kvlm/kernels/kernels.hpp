#pragma once
// The one dispatch point between the forward pass and the per-type kernels. A path (Simd) is an
// instruction set: the scalar reference (kernels/scalar.hpp), AVX2 (kernels/avx2.hpp) or AVX-512
// (kernels/avx512.hpp). The process chooses one path once, from CPUID and the KVLM_SIMD
// environment variable (active_simd), and kernels(t) hands out that path's kernels for type t.
// Nothing else in kvlm looks at the CPU's features.
//
// Each path has one table with one entry per type: a new type is one new entry per table.

#include <cpuid.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kvlm/dtype.hpp"
#include "kvlm/error.hpp"
#include "kvlm/kernels/avx2.hpp"
#include "kvlm/kernels/avx512.hpp"
#include "kvlm/kernels/interleaved.hpp"
#include "kvlm/kernels/panel.hpp"
#include "kvlm/kernels/scalar.hpp"

namespace kvlm::kernels {

/// Instruction-set paths, each needing everything the one before it needs.
enum class Simd { kScalar, kAvx2, kAvx512 };

inline const char* to_string(Simd simd) {
  switch (simd) {
    case Simd::kScalar: return "scalar";
    case Simd::kAvx2: return "avx2";
    case Simd::kAvx512: return "avx512";
  }
  return "unknown";
}

namespace detail {

struct CpuFeatures {
  bool avx2 = false;         // AVX2, FMA, F16C
  bool avx512 = false;       // the above and AVX-512 F, BW, VL, VNNI
  bool avx512_bf16 = false;  // the above and AVX512-BF16 (Zen 4, Sapphire Rapids and later)
};

// __builtin_cpu_supports also checks that the OS saves the vector registers. Clang 14 does not
// know "f16c" or "avx512bf16" there, so F16C comes from CPUID leaf 1 (ECX bit 29) and
// AVX512-BF16 from leaf 7, subleaf 1 (EAX bit 5); the OS side of each is AVX's or AVX-512's.
inline CpuFeatures detect_cpu() {
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  CpuFeatures cpu;
  cpu.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  cpu.avx512 = cpu.avx2 && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
  const bool bf16 =
      __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & bit_AVX512BF16) != 0;
  cpu.avx512_bf16 = cpu.avx512 && bf16;
  return cpu;
}

// This CPU's features. Thread-safe; CPUID runs once per process.
inline const CpuFeatures& cpu_features() {
  static const CpuFeatures cpu = detect_cpu();
  return cpu;
}

}  // namespace detail

/// Whether this CPU can run `simd`'s kernels.
inline bool simd_supported(Simd simd) {
  const detail::CpuFeatures& cpu = detail::cpu_features();
  switch (simd) {
    case Simd::kScalar: return true;
    case Simd::kAvx2: return cpu.avx2;
    case Simd::kAvx512: return cpu.avx512;
  }
  return false;
}

/// The fastest path this CPU supports.
inline Simd detected_simd() {
  if (simd_supported(Simd::kAvx512)) return Simd::kAvx512;
  if (simd_supported(Simd::kAvx2)) return Simd::kAvx2;
  return Simd::kScalar;
}

/// The path a KVLM_SIMD value asks for ("scalar", "avx2" or "avx512"), capped at `detected`;
/// `detected` itself when env is null or names no path.
inline Simd choose_simd(const char* env, Simd detected) {
  if (env == nullptr) return detected;
  for (Simd simd : {Simd::kScalar, Simd::kAvx2, Simd::kAvx512}) {
    if (std::strcmp(env, to_string(simd)) == 0) return std::min(simd, detected);
  }
  return detected;
}

/// The path this process uses: chosen on the first call, from detected_simd() and KVLM_SIMD.
inline Simd active_simd() {
  static const Simd simd = choose_simd(std::getenv("KVLM_SIMD"), detected_simd());
  return simd;
}

/// One type's kernels on one path. gemv computes y = W x with w: [rows, cols] stored as
/// consecutive rows of row_bytes(type, cols) bytes and y: [rows].
struct TypeKernels {
  /// Which gemv decoding uses, measured per type (README, "Weight types"): kF32, gemv_f32 on the
  /// float activations; kQ8_0, gemv on quantize_activation's BlockQ8_0; kQ8_K, gemv on
  /// quantize_activation_k's BlockQ8_K. On tinyllama-1.1b's shape with 2 threads, Q4_0 decodes
  /// about 15% faster with 8-bit activations. Q8_0 decodes at the same speed with either
  /// (memory-bound), and takes 8-bit ones because its gemm does: sessions decoding together then
  /// share each weight block, 3.8x one session's tokens/s at 8 sessions (1.0x with float
  /// activations and a gemv per token), and each still gets what it gets alone. The K types
  /// decode with BlockQ8_K: on a 4096 x 4096 matrix from DRAM, one Zen 5 core, their integer
  /// gemv runs at 28-32 GB/s with AVX-512 (22-32 with AVX2), their float one at 7-12 GB/s (it
  /// dequantizes each block first), and tinygqa's logits stay as close to the exact ones as
  /// llama.cpp's.
  DType decode_activation;
  /// The integer-activation kernel. For Q8_0 and Q4_0 x is const BlockQ8_0* [cols / 32] from
  /// quantize_activation; for Q4_K, Q5_K and Q6_K it is const BlockQ8_K* [cols / 256] from
  /// quantize_activation_k; for the float types x is
  /// const float* [cols] and gemv is gemv_f32.
  void (*gemv)(const void* w, std::int64_t rows, std::int64_t cols, const void* x, float* y);
  /// x is const float* [cols].
  void (*gemv_f32)(const void* w, std::int64_t rows, std::int64_t cols, const void* x, float* y);
  /// Dequantizes one row: row: [n] of the type, out: [n] floats. Exact: d * q in float.
  void (*to_float)(const void* row, float* out, std::int64_t n);
  /// Several tokens at once, each weight block unpacked once for all of them, where the path has
  /// such a kernel (null otherwise: matmul then runs gemv for each token).
  /// y[t * ldy + r] = row r · token t, bit for bit what gemv gives token t alone; x: n_tokens
  /// activations from prepare, prepared_bytes(cols) bytes apart.
  void (*gemm)(const void* w, std::int64_t rows, std::int64_t cols, const void* x,
               std::int64_t n_tokens, float* y, std::int64_t ldy) = nullptr;
  /// gemm's activation (prepared_bytes(cols) bytes) from one token's decode_activation blocks
  /// (x as gemv's). Types whose gemm takes the same activation share this function: the K types
  /// all take prepare_k's.
  void (*prepare)(const void* x, std::int64_t cols, void* out) = nullptr;
  /// The kernel for the type's interleaved copy (kernels/interleaved.hpp), where the path has
  /// one (null otherwise): y[t * ldy + r] = row r · token t for r in [row_begin, row_end); w:
  /// the whole copy; x: [n_tokens, cols / 32] from prepare_interleaved. Each output is the same
  /// whatever the number of tokens.
  void (*gemm_interleaved)(const void* w, std::int64_t row_begin, std::int64_t row_end,
                           std::int64_t cols, const ActivationBlock* x, std::int64_t n_tokens,
                           float* y, std::int64_t ldy) = nullptr;
};

using avx512::prepared_bytes;

namespace detail {

// The scalar reference in the signatures of TypeKernels.
template <DType kType>
void scalar_gemv(const void* w, std::int64_t rows, std::int64_t cols, const void* x, float* y) {
  const std::size_t stride = row_bytes(kType, cols);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::byte* row = static_cast<const std::byte*>(w) + static_cast<std::size_t>(r) * stride;
    y[r] = scalar::dot(kType, row, static_cast<const float*>(x), cols);
  }
}

template <DType kType>
void scalar_gemv_q8(const void* w, std::int64_t rows, std::int64_t cols, const void* x, float* y) {
  const std::size_t stride = row_bytes(kType, cols);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::byte* row = static_cast<const std::byte*>(w) + static_cast<std::size_t>(r) * stride;
    y[r] = scalar::dot_q8(kType, row, static_cast<const BlockQ8_0*>(x), cols);
  }
}

template <DType kType>
void scalar_gemv_q8k(const void* w, std::int64_t rows, std::int64_t cols, const void* x, float* y) {
  const std::size_t stride = row_bytes(kType, cols);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::byte* row = static_cast<const std::byte*>(w) + static_cast<std::size_t>(r) * stride;
    y[r] = scalar::dot_q8k(kType, row, static_cast<const BlockQ8_K*>(x), cols);
  }
}

template <DType kType>
void scalar_to_float(const void* row, float* out, std::int64_t n) {
  scalar::to_float(kType, row, out, n);
}

struct TableEntry {
  DType dtype;
  TypeKernels kernels;
};

// The decode_activation column of the tables: decoding multiplies by the float activations
// (gemv_f32), or by quantize_activation's blocks (gemv), or by quantize_activation_k's (gemv).
constexpr DType kFloatX = DType::kF32;
constexpr DType kQuantizedX = DType::kQ8_0;
constexpr DType kQuantizedKX = DType::kQ8_K;

inline constexpr TableEntry kScalarTable[] = {
    {DType::kF32, {kFloatX, scalar_gemv<DType::kF32>, scalar_gemv<DType::kF32>,
                   scalar_to_float<DType::kF32>}},
    {DType::kF16, {kFloatX, scalar_gemv<DType::kF16>, scalar_gemv<DType::kF16>,
                   scalar_to_float<DType::kF16>}},
    {DType::kBF16, {kFloatX, scalar_gemv<DType::kBF16>, scalar_gemv<DType::kBF16>,
                    scalar_to_float<DType::kBF16>}},
    {DType::kQ8_0, {kQuantizedX, scalar_gemv_q8<DType::kQ8_0>, scalar_gemv<DType::kQ8_0>,
                    scalar_to_float<DType::kQ8_0>}},
    {DType::kQ4_0, {kQuantizedX, scalar_gemv_q8<DType::kQ4_0>, scalar_gemv<DType::kQ4_0>,
                    scalar_to_float<DType::kQ4_0>}},
    {DType::kQ4_K, {kQuantizedKX, scalar_gemv_q8k<DType::kQ4_K>, scalar_gemv<DType::kQ4_K>,
                    scalar_to_float<DType::kQ4_K>}},
    {DType::kQ5_K, {kQuantizedKX, scalar_gemv_q8k<DType::kQ5_K>, scalar_gemv<DType::kQ5_K>,
                    scalar_to_float<DType::kQ5_K>}},
    {DType::kQ6_K, {kQuantizedKX, scalar_gemv_q8k<DType::kQ6_K>, scalar_gemv<DType::kQ6_K>,
                    scalar_to_float<DType::kQ6_K>}},
};

// F32's to_float is a copy on every path.
inline constexpr TableEntry kAvx2Table[] = {
    {DType::kF32, {kFloatX, avx2::gemv_f32, avx2::gemv_f32, scalar_to_float<DType::kF32>}},
    {DType::kF16, {kFloatX, avx2::gemv_f16, avx2::gemv_f16, avx2::to_float_f16}},
    {DType::kBF16, {kFloatX, avx2::gemv_bf16, avx2::gemv_bf16, avx2::to_float_bf16}},
    {DType::kQ8_0, {kQuantizedX, avx2::gemv_q8_0, avx2::gemv_q8_0_f32, avx2::to_float_q8_0}},
    {DType::kQ4_0, {kQuantizedX, avx2::gemv_q4_0, avx2::gemv_q4_0_f32, avx2::to_float_q4_0}},
    {DType::kQ4_K, {kQuantizedKX, avx2::gemv_q4_k, avx2::gemv_q4_k_f32, avx2::to_float_q4_k}},
    {DType::kQ5_K, {kQuantizedKX, avx2::gemv_q5_k, avx2::gemv_q5_k_f32, avx2::to_float_q5_k}},
    {DType::kQ6_K, {kQuantizedKX, avx2::gemv_q6_k, avx2::gemv_q6_k_f32, avx2::to_float_q6_k}},
};

inline constexpr TableEntry kAvx512Table[] = {
    {DType::kF32, {kFloatX, avx512::gemv_f32, avx512::gemv_f32, scalar_to_float<DType::kF32>}},
    {DType::kF16, {kFloatX, avx512::gemv_f16, avx512::gemv_f16, avx512::to_float_f16}},
    {DType::kBF16, {kFloatX, avx512::gemv_bf16, avx512::gemv_bf16, avx512::to_float_bf16}},
    {DType::kQ8_0, {kQuantizedX, avx512::gemv_q8_0, avx512::gemv_q8_0_f32, avx512::to_float_q8_0,
                    avx512::gemm_q8_0, avx512::prepare_q8_0,
                    avx512::gemm_interleaved<BlockQ8_0x16>}},
    {DType::kQ4_0, {kQuantizedX, avx512::gemv_q4_0, avx512::gemv_q4_0_f32, avx512::to_float_q4_0,
                    avx512::gemm_q4_0, avx512::prepare_q4_0,
                    avx512::gemm_interleaved<BlockQ4_0x16>}},
    {DType::kQ4_K, {kQuantizedKX, avx512::gemv_q4_k, avx512::gemv_q4_k_f32, avx512::to_float_q4_k,
                    avx512::gemm<avx512::K4Rows<BlockQ4_K>>, avx512::prepare_k,
                    avx512::gemm_interleaved<BlockQ4_Kx16>}},
    {DType::kQ5_K, {kQuantizedKX, avx512::gemv_q5_k, avx512::gemv_q5_k_f32, avx512::to_float_q5_k,
                    avx512::gemm<avx512::K4Rows<BlockQ5_K>>, avx512::prepare_k,
                    avx512::gemm_interleaved<BlockQ5_Kx16>}},
    {DType::kQ6_K, {kQuantizedKX, avx512::gemv_q6_k, avx512::gemv_q6_k_f32, avx512::to_float_q6_k,
                    avx512::gemm<avx512::Q6_KRows>, avx512::prepare_k,
                    avx512::gemm_interleaved<BlockQ6_Kx16>}},
};

template <std::size_t kCount>
const TypeKernels* find(const TableEntry (&table)[kCount], DType t) {
  for (const TableEntry& entry : table) {
    if (entry.dtype == t) return &entry.kernels;
  }
  return nullptr;
}

inline void check_supported(Simd simd) {
  if (!simd_supported(simd)) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("kernels: this CPU cannot run the ") + to_string(simd) + " path");
  }
}

// A set of kernels the SIMD paths have and the scalar path leaves to Eigen: path simd's, or null.
template <typename Kernels>
const Kernels* vector_only(Simd simd, const Kernels& avx2, const Kernels& avx512) {
  check_supported(simd);
  switch (simd) {
    case Simd::kScalar: return nullptr;
    case Simd::kAvx2: return &avx2;
    case Simd::kAvx512: return &avx512;
  }
  return nullptr;
}

}  // namespace detail

/// The kernels of type t on path simd (tests use every path).
/// @throws Error(kInvalidArgument) if the CPU cannot run simd or t has no kernels.
inline const TypeKernels& kernels(DType t, Simd simd) {
  detail::check_supported(simd);
  const TypeKernels* found = nullptr;
  switch (simd) {
    case Simd::kScalar: found = detail::find(detail::kScalarTable, t); break;
    case Simd::kAvx2: found = detail::find(detail::kAvx2Table, t); break;
    case Simd::kAvx512: found = detail::find(detail::kAvx512Table, t); break;
  }
  if (found == nullptr) {
    throw Error(ErrorCode::kInvalidArgument,
                "kernels: no kernels for ggml type " + std::to_string(static_cast<std::uint32_t>(t)));
  }
  return *found;
}

/// The kernels of type t on the process's path.
inline const TypeKernels& kernels(DType t) { return kernels(t, active_simd()); }

/// A path's float GEMM (kernels/panel.hpp): pack copies up to kPanelRows float rows (ld apart)
/// into a panel, gemm multiplies n_tokens tokens (ldx apart) by it: y[t * ldy + r] = row r ·
/// token t, bit for bit scalar::gemm_panel.
struct PanelKernels {
  void (*pack)(const float* rows, std::int64_t ld, std::int64_t n_rows, std::int64_t cols,
               float* panel);
  void (*gemm)(const float* panel, std::int64_t n_rows, std::int64_t cols, const float* x,
               std::int64_t ldx, std::int64_t n_tokens, float* y, std::int64_t ldy);
};

/// The float GEMM of path simd, or null on the scalar path, whose float products of many tokens
/// run on Eigen compiled for the host: scalar::gemm_panel is the SIMD kernels' reference, and
/// without -mfma each of its multiply-adds is a call to libm's fma.
/// @throws Error(kInvalidArgument) if the CPU cannot run simd.
inline const PanelKernels* panel_kernels(Simd simd = active_simd()) {
  static constexpr PanelKernels kAvx2{pack_panel, avx2::gemm_panel};
  static constexpr PanelKernels kAvx512{avx512::pack_panel<float>, avx512::gemm_panel};
  return detail::vector_only(simd, kAvx2, kAvx512);
}

/// A path's BF16 GEMM (kernels/panel.hpp, pair panels): to_bf16 rounds a token's values to
/// bfloat16, pack copies up to kPanelRows BF16 rows (ld apart) into a pair panel, gemm multiplies
/// n_tokens rounded tokens (ldx apart) by it: y[t * ldy + r] = row r · token t, bit for bit
/// scalar::to_bf16 and scalar::gemm_pair_panel. cols is even.
struct PairPanelKernels {
  void (*to_bf16)(const float* x, std::uint16_t* out, std::int64_t n);
  void (*pack)(const std::uint16_t* rows, std::int64_t ld, std::int64_t n_rows, std::int64_t cols,
               std::uint32_t* panel);
  void (*gemm)(const std::uint32_t* panel, std::int64_t n_rows, std::int64_t cols,
               const std::uint16_t* x, std::int64_t ldx, std::int64_t n_tokens, float* y,
               std::int64_t ldy);
};

/// The BF16 GEMM of path simd: the AVX-512 path's on a CPU with AVX512-BF16, else null (BF16
/// products then dequantize their rows and run the float GEMM).
/// @throws Error(kInvalidArgument) if the CPU cannot run simd.
inline const PairPanelKernels* pair_panel_kernels(Simd simd = active_simd()) {
  static constexpr PairPanelKernels kAvx512{avx512::to_bf16, avx512::pack_pair_panel,
                                            avx512::gemm_pair_panel};
  detail::check_supported(simd);
  return simd == Simd::kAvx512 && detail::cpu_features().avx512_bf16 ? &kAvx512 : nullptr;
}

/// A path's products for one token's attention (scalar::scores, scalar::add_weighted_rows): a
/// KV head's query heads (q: [n_q, cols], ldq apart) against a tile of its cached rows (n_rows
/// rows of cols floats, ld apart). scores matches its twin within a dot product's rounding,
/// add_weighted_rows bit for bit. Null on the scalar path, whose products run on Eigen compiled
/// for the host, as for panel_kernels.
struct AttentionKernels {
  void (*scores)(const float* q, std::int64_t ldq, std::int64_t n_q, const float* rows,
                 std::int64_t ld, std::int64_t n_rows, std::int64_t cols, float scale, float* s,
                 std::int64_t lds);
  void (*add_weighted_rows)(const float* p, std::int64_t ldp, std::int64_t n_q, const float* rows,
                            std::int64_t ld, std::int64_t n_rows, std::int64_t cols, float* out,
                            std::int64_t ldo);
};

/// @throws Error(kInvalidArgument) if the CPU cannot run simd.
inline const AttentionKernels* attention_kernels(Simd simd = active_simd()) {
  static constexpr AttentionKernels kAvx2{avx2::scores, avx2::add_weighted_rows};
  static constexpr AttentionKernels kAvx512{avx512::scores, avx512::add_weighted_rows};
  return detail::vector_only(simd, kAvx2, kAvx512);
}

/// A path's elementwise math: exp_shifted and silu_mul, bit for bit scalar::exp_shifted and
/// scalar::silu_mul (whose exp is within 1 ulp of e^x). Null on the scalar path, whose ops run
/// on Eigen compiled for the host, as for panel_kernels.
struct VectorKernels {
  void (*exp_shifted)(float* x, std::int64_t n, float shift);
  void (*silu_mul)(float* gate, const float* up, std::int64_t n);
};

/// @throws Error(kInvalidArgument) if the CPU cannot run simd.
inline const VectorKernels* vector_kernels(Simd simd = active_simd()) {
  static constexpr VectorKernels kAvx2{avx2::exp_shifted, avx2::silu_mul};
  static constexpr VectorKernels kAvx512{avx512::exp_shifted, avx512::silu_mul};
  return detail::vector_only(simd, kAvx2, kAvx512);
}

/// Quantizes an activation for the integer gemv (scalar::quantize_activation, bit for bit on
/// every path): x: [n], out: [n / 32], n a multiple of 32.
/// @throws Error(kInvalidArgument) if the CPU cannot run simd.
inline void quantize_activation(const float* x, BlockQ8_0* out, std::int64_t n,
                                Simd simd = active_simd()) {
  detail::check_supported(simd);
  switch (simd) {
    case Simd::kScalar: return scalar::quantize_activation(x, out, n);
    case Simd::kAvx2: return avx2::quantize_activation(x, out, n);
    case Simd::kAvx512: return avx512::quantize_activation(x, out, n);
  }
}

/// Quantizes an activation for the K types' integer gemv (scalar::quantize_activation_k, bit for
/// bit on every path): x: [n], out: [n / 256], n a multiple of 256.
/// @throws Error(kInvalidArgument) if the CPU cannot run simd.
inline void quantize_activation_k(const float* x, BlockQ8_K* out, std::int64_t n,
                                  Simd simd = active_simd()) {
  detail::check_supported(simd);
  switch (simd) {
    case Simd::kScalar: return scalar::quantize_activation_k(x, out, n);
    case Simd::kAvx2: return avx2::quantize_activation_k(x, out, n);
    case Simd::kAvx512: return avx512::quantize_activation_k(x, out, n);
  }
}

}  // namespace kvlm::kernels
