// Fused elementwise ops: GEGLU (forward, backward) and the per-frame blend used by AlphaBlender.
// One pass over memory each, fp32 math, output in the input dtype.
#include "vec_utils.h"

#include <cmath>

namespace svd_fast {
namespace {

// Elements per parallel task: enough work to amortise the task start on 2-16 cores.
constexpr int64_t kGrain = 16384;
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// Standard normal CDF Phi(g) = 0.5 * (1 + erf(g / sqrt(2))), so exact GELU(g) = g * Phi(g).
inline fVec normal_cdf(const fVec& g) { return fVec(0.5f) * (fVec(1.f) + fast_erf(g * fVec(kInvSqrt2))); }

// N outermost and dense: sample n is the contiguous block [n * numel/N, (n+1) * numel/N).
bool sample_major_dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() && (t.size(0) <= 1 || t.stride(0) * t.size(0) == t.numel());
}

// Calls f(r, i, n) for every chunk [i, i + n) (n <= kLanes) of columns [0, width) of every row r
// of [0, rows), rows split over threads in tasks of about kGrain elements.
template <typename F>
void for_row_chunks(int64_t rows, int64_t width, const F& f) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, width)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r)
                       for (int64_t i = 0; i < width; i += kLanes) f(r, i, std::min(kLanes, width - i));
                   });
}

}  // namespace

// x (..., 2F) = [value | gate]  ->  value * GELU(gate), shape (..., F).
at::Tensor geglu_fwd(const at::Tensor& x_in) {
  check_activation_dtype(x_in, "geglu", "x");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) % 2 == 0, "svd_fast._C.geglu: last dimension ", x_in.size(-1),
              " must be even");
  const at::Tensor x = x_in.contiguous();
  const int64_t F = x.size(-1) / 2, rows = F ? x.numel() / (2 * F) : 0;
  auto out_shape = x.sizes().vec();
  out_shape.back() = F;
  at::Tensor out = at::empty(out_shape, x.options());
  SVD_FAST_DISPATCH_ACTIVATION(x.scalar_type(), "geglu_fwd", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_row_chunks(rows, F, [&](int64_t r, int64_t f, int64_t n) {
      const scalar_t *value = in + r * 2 * F, *gate = value + F;
      const fVec g = load_float(gate + f, n);
      store_float(o + r * F + f, load_float(value + f, n) * g * normal_cdf(g), n);
    });
  });
  return out;
}

// d/dx of geglu for upstream grad (..., F): returns (..., 2F) = [dvalue | dgate].
at::Tensor geglu_bwd(const at::Tensor& grad_in, const at::Tensor& x_in) {
  check_activation_dtype(x_in, "geglu_bwd", "x");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  const int64_t F = x.size(-1) / 2, rows = F ? x.numel() / (2 * F) : 0;
  TORCH_CHECK(grad.numel() == rows * F, "svd_fast._C.geglu_bwd: grad ", grad.sizes(), " does not match x ",
              x.sizes());
  at::Tensor dx = at::empty_like(x);
  SVD_FAST_DISPATCH_ACTIVATION(x.scalar_type(), "geglu_bwd", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const scalar_t* dy = grad.const_data_ptr<scalar_t>();
    scalar_t* d = dx.mutable_data_ptr<scalar_t>();
    for_row_chunks(rows, F, [&](int64_t r, int64_t f, int64_t n) {
      const scalar_t *value = in + r * 2 * F, *gate = value + F;
      const fVec g = load_float(gate + f, n), v = load_float(value + f, n), gy = load_float(dy + r * F + f, n);
      const fVec cdf = normal_cdf(g);
      const fVec pdf = (g * g * fVec(-0.5f)).exp_u20() * fVec(kInvSqrt2Pi);
      store_float(d + r * 2 * F + f, gy * g * cdf, n);
      store_float(d + r * 2 * F + F + f, gy * v * (cdf + g * pdf), n);
    });
  });
  return dx;
}

// out[n] = p[n] * a[n] + q[n] * b[n] for per-sample fp32 coefficients p, q of shape (N,).
// AlphaBlender: (p, q) = (alpha, 1 - alpha); its residual form: (1, 1 - alpha) with b = delta.
at::Tensor blend_fwd(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& p, const at::Tensor& q) {
  check_activation_dtype(a_in, "blend", "a");
  TORCH_CHECK(b_in.sizes() == a_in.sizes() && b_in.scalar_type() == a_in.scalar_type(), "svd_fast._C.blend: ",
              "inputs differ: ", a_in.sizes(), " ", a_in.scalar_type(), " vs ", b_in.sizes(), " ", b_in.scalar_type());
  TORCH_CHECK(a_in.dim() >= 1 && p.numel() == a_in.size(0) && q.numel() == a_in.size(0),
              "svd_fast._C.blend: coefficients need one value per sample (", a_in.size(0), ")");
  // Both inputs in one sample-major dense layout (channels-last stays channels-last).
  const bool keep = sample_major_dense(a_in) && b_in.strides() == a_in.strides();
  const at::Tensor a = keep ? a_in : a_in.contiguous(), b = keep ? b_in : b_in.contiguous();
  const at::Tensor pf = p.to(at::kFloat).contiguous(), qf = q.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(a);
  const int64_t N = a.size(0), per_sample = N ? a.numel() / N : 0;
  const int64_t blocks = (per_sample + kGrain - 1) / kGrain;
  SVD_FAST_DISPATCH_ACTIVATION(a.scalar_type(), "blend_fwd", [&] {
    const scalar_t *pa = a.const_data_ptr<scalar_t>(), *pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const float *cp = pf.const_data_ptr<float>(), *cq = qf.const_data_ptr<float>();
    at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, start = n * per_sample + (task % blocks) * kGrain;
        const int64_t stop = std::min((n + 1) * per_sample, start + kGrain);
        const fVec vp(cp[n]), vq(cq[n]);
        for (int64_t i = start; i < stop; i += kLanes) {
          const int64_t m = std::min(kLanes, stop - i);
          store_float(po + i, vp * load_float(pa + i, m) + vq * load_float(pb + i, m), m);
        }
      }
    });
  });
  return out;
}

}  // namespace svd_fast
