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
#if defined(__AVX512BF16__)
    // One instruction (round to nearest even; like all AVX512-BF16 it flushes fp32 denormals,
    // < 1.2e-38, to zero: irrelevant for activations).
    const __m256i raw = std::is_same_v<T, at::BFloat16> ? (__m256i)_mm512_cvtneps_pbh(v) : at::vec::cvtfp32_fp16(v);
#else
    const __m256i raw = std::is_same_v<T, at::BFloat16> ? at::vec::cvtfp32_bf16(v) : at::vec::cvtfp32_fp16(v);
#endif
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

// exp(x), ~2 ulp: x = n ln2 + f with n = round(x / ln2) and |f| <= ln2 / 2 (ln2 split in a high
// and a low part so f is exact), exp(f) by its degree-6 Taylor polynomial (truncation < 1.2e-7
// relative), and the 2^n scaling by vscalefps, which also handles overflow and underflow. About
// 11 instructions against at::vec's exp_u20's ~20: exp is most of SiLU's cost.
inline fVec fast_exp(const fVec& x_in) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 x = _mm512_min_ps(_mm512_max_ps(x_in, _mm512_set1_ps(-104.f)), _mm512_set1_ps(89.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);       // ln2 high part (exact in n * hi)
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);           // ln2 low part
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.f / 720), f, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return fVec(_mm512_scalef_ps(p, n));
#else
  return x_in.exp_u20();
#endif
}

// 1 / (1 + exp(-z)). -z is capped at 88 so exp stays finite (sigmoid(-88) ~ 6e-39 rounds to 0
// either way).
inline fVec sigmoid(const fVec& z) {
  const fVec one(1.f);
  return reciprocal(one + fast_exp(at::vec::minimum(z.neg(), fVec(88.f))));
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
