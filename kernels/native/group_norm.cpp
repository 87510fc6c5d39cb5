// Fused GroupNorm (+ SiLU) over frame-major video tensors, forward and backward.
//
// x is (N, C, *spatial) with N = units * frames: statistics are pooled per (unit, group), where a
// unit is one frame (spatial ResBlock norm) or the T frames of one clip (temporal ResBlock norm).
// Both memory layouts are read in place: NCHW (contiguous) and channels-last (C fastest).
//
// Forward is two passes over x: per-(unit, channel) shifted moments, then one fused
// normalise * weight + bias (+ SiLU) pass. Backward is likewise two passes over (x, dy).
#include "vec_utils.h"

#include <array>
#include <cmath>
#include <utility>
#include <vector>

namespace svd_fast {
namespace {

// Rows of one unit handled by one task in the channels-last loops: small enough that the fp32
// per-lane partial sums stay exact to ~1e-6, large enough to amortise loading per-channel params.
constexpr int64_t kRowsPerTask = 64;
// Elements summed in fp32 before flushing into double (NCHW reductions).
constexpr int64_t kFlushEvery = 4096;

struct Geometry {
  int64_t units;     // statistics units (clips or frames)
  int64_t frames;    // frames per unit
  int64_t channels;  // C
  int64_t spatial;   // product of the spatial sizes
  int64_t groups;
  bool channels_last;
  int64_t group_size() const { return channels / groups; }
  int64_t unit_rows() const { return frames * spatial; }  // spatial positions per unit
};

template <int P>
using ParamPtrs = std::array<const float*, P>;  // P per-(unit, channel) arrays, each units*C
template <int P>
using ParamVecs = std::array<fVec, P>;

// True when x stores its channels fastest with dense spatial and batch strides ((N, *spatial, C)).
bool is_channels_last_dense(const at::Tensor& x) {
  if (x.dim() < 3 || x.stride(1) != 1) return false;
  int64_t expected = x.size(1);
  for (int64_t d = x.dim() - 1; d >= 2; --d) {
    if (x.size(d) != 1 && x.stride(d) != expected) return false;
    expected *= x.size(d);
  }
  return x.size(0) == 1 || x.stride(0) == expected;
}

// x in a layout the kernels read directly (NCHW-contiguous or channels-last), without copying
// when it already is one.
at::Tensor dense_layout(const at::Tensor& x) {
  if (x.is_contiguous() || is_channels_last_dense(x)) return x;
  return x.contiguous();
}

// t in the same layout as `like` (so x and dy can share one index computation).
at::Tensor same_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_like(like, t.options());
  out.copy_(t);
  return out;
}

Geometry make_geometry(const at::Tensor& x, int64_t groups, int64_t frames) {
  TORCH_CHECK(x.dim() >= 2, "svd_fast._C.group_norm: x must be (N, C, *spatial), got ", x.sizes());
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "svd_fast._C.group_norm: ", x.size(1),
              " channels are not divisible into ", groups, " groups");
  TORCH_CHECK(frames > 0 && x.size(0) % frames == 0, "svd_fast._C.group_norm: batch ", x.size(0),
              " is not a multiple of frames_per_unit=", frames);
  const int64_t spatial = x.numel() / std::max<int64_t>(1, x.size(0) * x.size(1));
  return Geometry{x.size(0) / frames, frames, x.size(1), spatial, groups, !x.is_contiguous()};
}

// Vectorised sum of n doubles (independent partial sums instead of one dependent add chain).
inline double sum_of(const double* p, int64_t n) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += p[i];
  return acc;
}

inline float hsum(const fVec& v) {
  return at::vec::vec_reduce_all<float>([](fVec a, fVec b) { return a + b; }, v);
}

template <typename T>
inline fVec load_or_zero(const T* p, int64_t offset, int64_t n) {
  return p ? load_float(p + offset, n) : fVec(0.f);
}

// The P parameters of one (unit, channel) broadcast to all lanes (NCHW: a run shares its channel).
template <int P>
inline ParamVecs<P> broadcast_params(const ParamPtrs<P>& params, int64_t index) {
  ParamVecs<P> p;
  for (int i = 0; i < P; ++i) p[i] = fVec(params[i][index]);
  return p;
}

// The P parameters of n <= kLanes adjacent channels (channels-last: lanes are channels).
template <int P>
inline ParamVecs<P> load_params(const ParamPtrs<P>& params, int64_t index, int64_t n) {
  ParamVecs<P> p;
  for (int i = 0; i < P; ++i) p[i] = fVec::loadu(params[i] + index, n);
  return p;
}

// f(u) for every statistics unit, in parallel: the per-unit bookkeeping (shifts, group
// statistics, per-channel parameters) is O(units * C), which for small frames (2x2 or 4x4
// latents) rivals the data itself.
template <typename F>
void for_each_unit(const Geometry& g, const F& f) {
  at::parallel_for(0, g.units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) f(u);
  });
}

int64_t row_blocks(const Geometry& g) { return (g.unit_rows() + kRowsPerTask - 1) / kRowsPerTask; }

// Channels-last work split: body(task, u, r0, r1) for every block of kRowsPerTask rows of every
// unit, in parallel (a unit is unit_rows() rows of C contiguous channels).
template <typename F>
void for_each_row_block(const Geometry& g, const F& body) {
  const int64_t blocks = row_blocks(g), rows = g.unit_rows();
  at::parallel_for(0, g.units * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = (task % blocks) * kRowsPerTask;
      body(task, task / blocks, r0, std::min(rows, r0 + kRowsPerTask));
    }
  });
}

// sum1[u*C + c] / sum2[u*C + c] = sums over the frames and positions of unit u, channel c, of the
// two values f(x, dy, params at (u, c)) returns. dy may be null (forward).
template <typename T, int P, typename F>
void reduce_per_channel(const Geometry& g, const T* x, const T* dy, const ParamPtrs<P>& params,
                        double* sum1, double* sum2, const F& f) {
  const int64_t C = g.channels, HW = g.spatial;
  if (!g.channels_last) {
    // NCHW: each (frame, channel) is one contiguous run of HW values.
    at::parallel_for(0, g.units * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t uc = begin; uc < end; ++uc) {
        const ParamVecs<P> p = broadcast_params<P>(params, uc);
        double s1 = 0, s2 = 0;
        for (int64_t t = 0; t < g.frames; ++t) {
          const int64_t base = (((uc / C) * g.frames + t) * C + uc % C) * HW;
          for (int64_t s0 = 0; s0 < HW; s0 += kFlushEvery) {
            fVec a1(0.f), a2(0.f);
            for (int64_t s = s0; s < std::min(HW, s0 + kFlushEvery); s += kLanes) {
              const int64_t n = std::min(kLanes, HW - s);
              auto [f1, f2] = f(load_float(x + base + s, n), load_or_zero(dy, base + s, n), p);
              a1 += first_lanes(f1, n);
              a2 += first_lanes(f2, n);
            }
            s1 += hsum(a1);
            s2 += hsum(a2);
          }
        }
        sum1[uc] = s1;
        sum2[uc] = s2;
      }
    });
    return;
  }
  // Channels-last: tasks write per-channel fp32 partial sums of their row block (at most
  // kRowsPerTask terms), added up in double per unit after.
  const int64_t blocks = row_blocks(g);
  std::vector<float> part1(g.units * blocks * C), part2(g.units * blocks * C);
  for_each_row_block(g, [&](int64_t task, int64_t u, int64_t r0, int64_t r1) {
    for (int64_t c = 0; c < C; c += kLanes) {
      const int64_t n = std::min(kLanes, C - c);
      const ParamVecs<P> p = load_params<P>(params, u * C + c, n);
      fVec a1(0.f), a2(0.f);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = (u * g.unit_rows() + r) * C + c;
        auto [f1, f2] = f(load_float(x + off, n), load_or_zero(dy, off, n), p);
        a1 += f1;
        a2 += f2;
      }
      a1.store(part1.data() + task * C + c, n);
      a2.store(part2.data() + task * C + c, n);
    }
  });
  for_each_unit(g, [&](int64_t u) {
    for (int64_t c = 0; c < C; ++c) {
      double s1 = 0, s2 = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        s1 += part1[(u * blocks + b) * C + c];
        s2 += part2[(u * blocks + b) * C + c];
      }
      sum1[u * C + c] = s1;
      sum2[u * C + c] = s2;
    }
  });
}

// out = f(x, dy, params at (u, c)) for every element, in x's layout. dy may be null (forward).
template <typename T, int P, typename F>
void map_per_channel(const Geometry& g, const T* x, const T* dy, const ParamPtrs<P>& params, T* out,
                     const F& f) {
  const int64_t C = g.channels, HW = g.spatial;
  if (!g.channels_last) {
    at::parallel_for(0, g.units * g.frames * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t fc = begin; fc < end; ++fc) {  // fc = frame * C + channel
        const ParamVecs<P> p = broadcast_params<P>(params, (fc / C / g.frames) * C + fc % C);
        for (int64_t s = 0; s < HW; s += kLanes) {
          const int64_t n = std::min(kLanes, HW - s), off = fc * HW + s;
          store_float(out + off, f(load_float(x + off, n), load_or_zero(dy, off, n), p), n);
        }
      }
    });
    return;
  }
  for_each_row_block(g, [&](int64_t, int64_t u, int64_t r0, int64_t r1) {
    for (int64_t c = 0; c < C; c += kLanes) {
      const int64_t n = std::min(kLanes, C - c);
      const ParamVecs<P> p = load_params<P>(params, u * C + c, n);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = (u * g.unit_rows() + r) * C + c;
        store_float(out + off, f(load_float(x + off, n), load_or_zero(dy, off, n), p), n);
      }
    }
  });
}

// Per-channel weight/bias as fp32 (ones/zeros when the norm has no affine part).
std::vector<float> affine_or(const std::optional<at::Tensor>& t, int64_t channels, float fill,
                             const char* name) {
  std::vector<float> out(channels, fill);
  if (t.has_value() && t->defined()) {
    TORCH_CHECK(t->numel() == channels, "svd_fast._C.group_norm: ", name, " has ", t->numel(),
                " elements, expected ", channels);
    at::Tensor f = t->detach().to(at::kCPU, at::kFloat).contiguous();
    std::copy(f.data_ptr<float>(), f.data_ptr<float>() + channels, out.begin());
  }
  return out;
}

// Per-(unit, channel) parameters of the normalisation z = (x - m) * a + b, with a = rstd * w, m the
// group mean and b the bias. Subtracting the mean before scaling keeps z exact when |mean| >> std
// (x * a + (b - m * a) would cancel two large terms).
struct ChannelAffine {
  std::vector<float> a, m, b;
};

ChannelAffine channel_affine(const Geometry& g, const float* mean, const float* rstd, const std::vector<float>& w,
                             const std::vector<float>& bias) {
  const int64_t C = g.channels, Cg = g.group_size();
  ChannelAffine p{std::vector<float>(g.units * C), std::vector<float>(g.units * C), std::vector<float>(g.units * C)};
  // Channel grp*Cg + j of unit u sits at u*C + c = ug*Cg + j (ug = u*groups + grp).
  for_each_unit(g, [&](int64_t u) {
    for (int64_t grp = 0, ug = u * g.groups; grp < g.groups; ++grp, ++ug) {
      for (int64_t j = 0; j < Cg; ++j) {
        p.a[ug * Cg + j] = rstd[ug] * w[grp * Cg + j];
        p.m[ug * Cg + j] = mean[ug];
        p.b[ug * Cg + j] = bias[grp * Cg + j];
      }
    }
  });
  return p;
}

template <typename T>
void forward_impl(const Geometry& g, const T* x, const std::vector<float>& w, const std::vector<float>& bias,
                  double eps, bool silu, T* y, float* mean, float* rstd) {
  const int64_t C = g.channels, Cg = g.group_size(), HW = g.spatial;
  // Shifted moments: subtracting one sample of each (unit, group) from all its values keeps the sum
  // of squares free of cancellation when |mean| >> std (the sample is within a few std of the mean).
  std::vector<float> shift(g.units * C);
  for_each_unit(g, [&](int64_t u) {
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const int64_t c0 = grp * Cg;
      const T first = g.channels_last ? x[u * g.frames * HW * C + c0] : x[(u * g.frames * C + c0) * HW];
      std::fill(shift.begin() + u * C + c0, shift.begin() + u * C + c0 + Cg, static_cast<float>(first));
    }
  });
  std::vector<double> s1(g.units * C), s2(g.units * C);
  reduce_per_channel<T, 1>(g, x, nullptr, {shift.data()}, s1.data(), s2.data(),
                           [](const fVec& xv, const fVec&, const ParamVecs<1>& p) {
                             const fVec d = xv - p[0];
                             return std::make_pair(d, d * d);
                           });
  const double n = static_cast<double>(g.unit_rows() * Cg);
  for_each_unit(g, [&](int64_t u) {
    for (int64_t grp = 0, i = u * C; grp < g.groups; ++grp, i += Cg) {
      const double d_mean = sum_of(&s1[i], Cg) / n;  // mean - shift
      const double var = std::max(0.0, sum_of(&s2[i], Cg) / n - d_mean * d_mean);
      mean[u * g.groups + grp] = static_cast<float>(shift[i] + d_mean);
      rstd[u * g.groups + grp] = static_cast<float>(1.0 / std::sqrt(var + eps));
    }
  });
  const ChannelAffine p = channel_affine(g, mean, rstd, w, bias);
  map_per_channel<T, 3>(g, x, nullptr, {p.a.data(), p.m.data(), p.b.data()}, y,
                        [silu](const fVec& xv, const fVec&, const ParamVecs<3>& p) {
                          const fVec z = (xv - p[1]) * p[0] + p[2];
                          return silu ? z * sigmoid(z) : z;
                        });
}

// d(loss)/dz from d(loss)/dy where y = silu(z) (or y = z).
inline fVec grad_pre_activation(const fVec& dy, const fVec& z, bool silu) {
  if (!silu) return dy;
  const fVec s = sigmoid(z);
  return dy * s * (fVec(1.f) + z * (fVec(1.f) - s));
}

template <typename T>
void backward_impl(const Geometry& g, const T* dy, const T* x, const float* mean, const float* rstd,
                   const std::vector<float>& w, const std::vector<float>& bias, bool silu, T* dx,
                   float* dweight, float* dbias) {
  const int64_t C = g.channels, Cg = g.group_size();
  const ChannelAffine p = channel_affine(g, mean, rstd, w, bias);
  // ds[u, c] = sum dz * (x - mean), db[u, c] = sum dz over the unit's frames and positions.
  std::vector<double> ds(g.units * C), db(g.units * C);
  reduce_per_channel<T, 3>(g, x, dy, {p.a.data(), p.m.data(), p.b.data()}, ds.data(), db.data(),
                           [silu](const fVec& xv, const fVec& dv, const ParamVecs<3>& p) {
                             const fVec xc = xv - p[1];
                             const fVec dz = grad_pre_activation(dv, xc * p[0] + p[2], silu);
                             return std::make_pair(dz * xc, dz);
                           });
  // dx = dz * a + c2 * (x - mean) + c3 with c2, c3 constant per (unit, group).
  std::vector<float> c2(g.units * C), c3(g.units * C);
  const double n = static_cast<double>(Cg * g.unit_rows());
  for_each_unit(g, [&](int64_t u) {
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const int64_t ug = u * g.groups + grp, c0 = grp * Cg;
      double sum_ds = 0, sum_db = 0;
#pragma omp simd reduction(+ : sum_ds, sum_db)
      for (int64_t c = c0; c < c0 + Cg; ++c) {
        sum_ds += w[c] * ds[u * C + c];
        sum_db += w[c] * db[u * C + c];
      }
      const double r = rstd[ug];
      const double k2 = -sum_ds * r * r * r / n;
      const double k3 = -sum_db * r / n;
      std::fill(c2.begin() + u * C + c0, c2.begin() + u * C + c0 + Cg, static_cast<float>(k2));
      std::fill(c3.begin() + u * C + c0, c3.begin() + u * C + c0 + Cg, static_cast<float>(k3));
    }
  });
  map_per_channel<T, 5>(g, x, dy, {p.a.data(), p.m.data(), p.b.data(), c2.data(), c3.data()}, dx,
                        [silu](const fVec& xv, const fVec& dv, const ParamVecs<5>& p) {
                          const fVec xc = xv - p[1];
                          const fVec dz = grad_pre_activation(dv, xc * p[0] + p[2], silu);
                          return dz * p[0] + p[3] * xc + p[4];
                        });
  std::vector<double> gw(C, 0.0), gb(C, 0.0);
  for (int64_t ug = 0; ug < g.units * g.groups; ++ug) {  // (unit, channel) index ug*Cg + j as above
    const int64_t c0 = (ug % g.groups) * Cg;
    for (int64_t j = 0; j < Cg; ++j) {
      gw[c0 + j] += ds[ug * Cg + j] * rstd[ug];
      gb[c0 + j] += db[ug * Cg + j];
    }
  }
  std::copy(gw.begin(), gw.end(), dweight);
  std::copy(gb.begin(), gb.end(), dbias);
}

}  // namespace

// Returns (y, mean, rstd); mean/rstd are fp32 (units, groups), saved for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd(const at::Tensor& x_in, int64_t groups,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              double eps, bool silu, int64_t frames_per_unit) {
  check_activation_dtype(x_in, "group_norm", "x");
  const at::Tensor x = dense_layout(x_in);
  const Geometry g = make_geometry(x, groups, frames_per_unit);
  const auto w = affine_or(weight, g.channels, 1.f, "weight");
  const auto b = affine_or(bias, g.channels, 0.f, "bias");
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({g.units, groups}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({g.units, groups}, x.options().dtype(at::kFloat));
  SVD_FAST_DISPATCH_ACTIVATION(x.scalar_type(), "group_norm_fwd", [&] {
    forward_impl<scalar_t>(g, x.const_data_ptr<scalar_t>(), w, b, eps, silu, y.mutable_data_ptr<scalar_t>(),
                           mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>());
  });
  return {y, mean, rstd};
}

// Returns (dx, dweight, dbias); dweight/dbias are fp32 (C,) (meaningless when the norm has no
// weight/bias: the caller drops them).
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, bool silu,
                                                              int64_t groups, int64_t frames_per_unit) {
  check_activation_dtype(x_in, "group_norm_bwd", "x");
  TORCH_CHECK(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type(),
              "svd_fast._C.group_norm_bwd: grad ", dy_in.sizes(), " ", dy_in.scalar_type(),
              " does not match x ", x_in.sizes(), " ", x_in.scalar_type());
  const at::Tensor x = dense_layout(x_in);
  const at::Tensor dy = same_layout(dy_in, x);
  const Geometry g = make_geometry(x, groups, frames_per_unit);
  TORCH_CHECK(mean.numel() == g.units * groups && rstd.numel() == mean.numel(),
              "svd_fast._C.group_norm_bwd: saved statistics have the wrong size");
  const at::Tensor mean_f = mean.to(at::kFloat).contiguous(), rstd_f = rstd.to(at::kFloat).contiguous();
  const auto w = affine_or(weight, g.channels, 1.f, "weight");
  const auto b = affine_or(bias, g.channels, 0.f, "bias");
  at::Tensor dx = at::empty_like(x);
  at::Tensor dweight = at::empty({g.channels}, x.options().dtype(at::kFloat));
  at::Tensor dbias = at::empty({g.channels}, x.options().dtype(at::kFloat));
  SVD_FAST_DISPATCH_ACTIVATION(x.scalar_type(), "group_norm_bwd", [&] {
    backward_impl<scalar_t>(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                            mean_f.const_data_ptr<float>(), rstd_f.const_data_ptr<float>(), w, b, silu,
                            dx.mutable_data_ptr<scalar_t>(), dweight.mutable_data_ptr<float>(),
                            dbias.mutable_data_ptr<float>());
  });
  return {dx, dweight, dbias};
}

}  // namespace svd_fast
