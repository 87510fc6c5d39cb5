// Small helpers shared by the svd_fast._C kernels: fp32 vector loads/stores from any of the
// activation dtypes (float, bfloat16, half), and the dtype switch every op uses.
//
// All math runs on at::vec::Vectorized<float> (16 lanes with AVX-512, 8 with AVX2): inputs are
// widened to fp32 on load and rounded back on store, so accumulation is always fp32 or wider.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace svd_fast {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = fVec::size();

// Load n <= kLanes elements (lanes past n are zero) and widen them to fp32.
template <typename T>
inline fVec load_float(const T* p, int64_t n = kLanes) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p, n);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    // 16 half-width values = one 256-bit load widened in registers (at::vec's generic path would
    // load and convert 32 lanes to use 16).
    const __m256i raw = n == kLanes ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                    : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
    __m512 out;
    if constexpr (std::is_same_v<T, at::BFloat16>) at::vec::cvtbf16_fp32(raw, out);
    else at::vec::cvtfp16_fp32(raw, out);
    return out;
#else
    auto wide = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, static_cast<int16_t>(n)));
    return std::get<0>(wide);
#endif
  }
}

// Round v to T (round-to-nearest-even) and store its first n <= kLanes lanes.
template <typename T>
inline void store_float(T* p, const fVec& v, int64_t n = kLanes) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, n);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    const __m256i raw = std::is_same_v<T, at::BFloat16> ? at::vec::cvtfp32_bf16(v) : at::vec::cvtfp32_fp16(v);
    if (n == kLanes) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), raw);
    else _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), raw);
#else
    at::vec::convert_from_float<T>(v, v).store(p, static_cast<int>(n));
#endif
  }
}

// Keep the first n lanes of v, zero the rest (so tail lanes never pollute a reduction).
inline fVec first_lanes(const fVec& v, int64_t n) {
  return n == kLanes ? v : fVec::set(fVec(0.f), v, n);
}

// 1 / (1 + exp(-z)). -z is capped at 88 so exp stays finite (sigmoid(-88) ~ 6e-39 rounds to 0
// either way); with AVX-512 the division is a 14-bit reciprocal plus one Newton step (~1 ulp),
// cheaper than a full-precision divide.
inline fVec sigmoid(const fVec& z) {
  const fVec one(1.f);
  const fVec d = one + at::vec::minimum(z.neg(), fVec(88.f)).exp_u20();
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 r = _mm512_rcp14_ps(d);
  return fVec(_mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f))));
#else
  return one / d;
#endif
}

inline void check_activation_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
              "svd_fast._C.", op, ": ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "svd_fast._C.", op, ": ", name, " must be a CPU tensor, got ", t.device());
}

}  // namespace svd_fast

// Runs the lambda with scalar_t bound to the activation dtype (float, bfloat16 or half).
#define SVD_FAST_DISPATCH_ACTIVATION(TYPE, NAME, ...)                              \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)         \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)  \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))
