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

// 1 / d: with AVX-512 a 14-bit reciprocal estimate plus one Newton step (~1 ulp), several times
// cheaper than a full-precision divide.
inline fVec reciprocal(const fVec& d) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 r = _mm512_rcp14_ps(d);
  return fVec(_mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f))));
#else
  return fVec(1.f) / d;
#endif
}

// erf(x) as a rational function x * P(x^2) / Q(x^2) on [-4, 4] (erf is +-1 in fp32 beyond):
// a 13th/8th-degree minimax fit, a few ulp in fp32, with no exp (the coefficients are the widely
// used ones of XLA's and Eigen's float erf). About half the instructions of at::vec's erf.
inline fVec fast_erf(const fVec& x_in) {
  const fVec x = at::vec::minimum(at::vec::maximum(x_in, fVec(-4.f)), fVec(4.f));
  const fVec x2 = x * x;
  fVec p = at::vec::fmadd(x2, fVec(-2.72614225801306e-10f), fVec(2.77068142495902e-08f));
  p = at::vec::fmadd(x2, p, fVec(-2.10102402082508e-06f));
  p = at::vec::fmadd(x2, p, fVec(-5.69250639462346e-05f));
  p = at::vec::fmadd(x2, p, fVec(-7.34990630326855e-04f));
  p = at::vec::fmadd(x2, p, fVec(-2.95459980854025e-03f));
  p = at::vec::fmadd(x2, p, fVec(-1.60960333262415e-02f));
  fVec q = at::vec::fmadd(x2, fVec(-1.45660718464996e-05f), fVec(-2.13374055278905e-04f));
  q = at::vec::fmadd(x2, q, fVec(-1.68282697438203e-03f));
  q = at::vec::fmadd(x2, q, fVec(-7.37332916720468e-03f));
  q = at::vec::fmadd(x2, q, fVec(-1.42647390514189e-02f));
  return x * p * reciprocal(q);
}

// 1 / (1 + exp(-z)). -z is capped at 88 so exp stays finite (sigmoid(-88) ~ 6e-39 rounds to 0
// either way).
inline fVec sigmoid(const fVec& z) {
  const fVec one(1.f);
  return reciprocal(one + at::vec::minimum(z.neg(), fVec(88.f)).exp_u20());
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
