// Temporal self-attention read straight from the frame-major token layout, forward and backward.
//
// q, k, v are (B*T, S, C) (views into a fused projection are fine: only the channel stride must be
// 1). For every clip b, position s and head h the T x T problem softmax(Q K^T / sqrt(D)) V runs
// in fp32 in a per-thread workspace: no permuted copies of the activations are made, and the
// output is written back in the (B*T, S, C) layout. Backward recomputes the probabilities.
#include "vec_utils.h"

#include <cmath>
#include <limits>
#include <vector>

namespace svd_fast {
namespace {

// Rows of the small matmuls computed together: 8 independent FMA chains hide the FMA latency.
constexpr int64_t kRowBlock = 8;
// Longest clip supported (the workspace holds T x T scores per head).
constexpr int64_t kMaxFrames = 64;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[r][0:cols] = sum_{k < inner} A(r, k) * B[k][0:cols] for r < rows, where A(r, k) =
// A[r * a_rs + k * a_cs] (so transposed operands need no copy). rows is a multiple of
// kRowBlock and cols of kLanes; the padded rows/columns of the buffers are computed and ignored.
void small_matmul(const float* A, int64_t a_rs, int64_t a_cs, int64_t rows, int64_t inner, const float* B,
                  int64_t b_rs, int64_t cols, float* C, int64_t c_rs) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    for (int64_t c = 0; c < cols; c += kLanes) {
      fVec acc[kRowBlock];
      for (auto& a : acc) a = fVec(0.f);
      for (int64_t k = 0; k < inner; ++k) {
        const fVec b = fVec::loadu(B + k * b_rs + c);
        const float* a_col = A + r0 * a_rs + k * a_cs;
        for (int64_t r = 0; r < kRowBlock; ++r) acc[r] = at::vec::fmadd(fVec(a_col[r * a_rs]), b, acc[r]);
      }
      for (int64_t r = 0; r < kRowBlock; ++r) acc[r].store(C + (r0 + r) * c_rs + c);
    }
  }
}

// Sizes of one problem and its padded buffers.
struct Problem {
  int64_t frames, head_dim;
  int64_t rows;     // frames padded to kRowBlock and kLanes (rows and score columns)
  int64_t dim_pad;  // head_dim padded to kLanes
  Problem(int64_t T, int64_t D) : frames(T), head_dim(D) {
    rows = round_up(T, std::max(kRowBlock, kLanes));
    dim_pad = round_up(D, kLanes);
  }
  int64_t mat() const { return rows * dim_pad; }  // one (rows x dim_pad) or (dim_pad x rows) buffer
  int64_t square() const { return rows * rows; }
};

// Pointer to the first channel of head h at frame t, position s of clip b.
template <typename T>
struct TokenView {
  const T* data;
  int64_t frame_stride, token_stride;
  const T* row(int64_t frame, int64_t s, int64_t h, int64_t D) const {
    return data + frame * frame_stride + s * token_stride + h * D;
  }
};

#if defined(CPU_CAPABILITY_AVX512)
// In-register transpose of a 16 x 16 fp32 block: r[i] = row i in, r[j] = column j out. Pairs of
// rows are interleaved by 32-bit, then 64-bit elements, then 128-bit lanes are regrouped twice.
inline void transpose16x16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // u[g + k], lane L: column 4L + k of rows g..g+3
    const __m512d lo0 = _mm512_castps_pd(t[g]), lo1 = _mm512_castps_pd(t[g + 2]);
    const __m512d hi0 = _mm512_castps_pd(t[g + 1]), hi1 = _mm512_castps_pd(t[g + 3]);
    u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1));
    u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
    u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1));
    u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
  }
  for (int k = 0; k < 4; ++k) {  // regroup lanes: even/odd lanes of rows 0-7 and of rows 8-15
    t[k] = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xdd);
    t[8 + k] = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xdd);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd);
  }
}
#endif

// dst_t[d][t] = src[t][d] over the padded (rows x dim_pad) buffer (src's padding is zero).
void transpose_rows(const Problem& p, const float* src, float* dst_t) {
#if defined(CPU_CAPABILITY_AVX512)
  for (int64_t r0 = 0; r0 < p.rows; r0 += 16) {
    for (int64_t d0 = 0; d0 < p.dim_pad; d0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (r0 + i) * p.dim_pad + d0);
      transpose16x16(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst_t + (d0 + j) * p.rows + r0, r[j]);
    }
  }
#else
  for (int64_t t = 0; t < p.frames; ++t)
    for (int64_t d = 0; d < p.head_dim; ++d) dst_t[d * p.rows + t] = src[t * p.dim_pad + d];
#endif
}

// dst[t][0:dim_pad] = scale * src(t) (zero past head_dim); when dst_t is given also
// dst_t[d][t] (the transpose, for use as the B operand of small_matmul).
template <typename T>
void load_rows(const Problem& p, const TokenView<T>& src, int64_t first_frame, int64_t s, int64_t h, float scale,
               float* dst, float* dst_t) {
  const fVec vscale(scale);
  for (int64_t t = 0; t < p.frames; ++t) {
    const T* in = src.row(first_frame + t, s, h, p.head_dim);
    float* out = dst + t * p.dim_pad;
    for (int64_t d = 0; d < p.dim_pad; d += kLanes) {
      const int64_t n = std::max<int64_t>(0, std::min(kLanes, p.head_dim - d));
      (load_float(in + d, n) * vscale).store(out + d);
    }
  }
  if (dst_t) transpose_rows(p, dst, dst_t);
}

template <typename T>
void store_rows(const Problem& p, const float* src, T* out, int64_t first_frame, int64_t s, int64_t h,
                int64_t frame_stride, int64_t token_stride) {
  for (int64_t t = 0; t < p.frames; ++t) {
    T* row = out + (first_frame + t) * frame_stride + s * token_stride + h * p.head_dim;
    for (int64_t d = 0; d < p.head_dim; d += kLanes)
      store_float(row + d, fVec::loadu(src + t * p.dim_pad + d), std::min(kLanes, p.head_dim - d));
  }
}

// In place: scores (rows x rows) -> softmax probabilities over the first `frames` columns;
// masked columns become exactly 0.
void softmax_rows(const Problem& p, float* scores) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < p.frames; ++i) {
    float* row = scores + i * p.rows;
    for (int64_t j = p.frames; j < p.rows; ++j) row[j] = neg_inf;
    fVec vmax(neg_inf);
    for (int64_t j = 0; j < p.rows; j += kLanes) vmax = at::vec::maximum(vmax, fVec::loadu(row + j));
    const float m = at::vec::vec_reduce_all<float>([](fVec a, fVec b) { return at::vec::maximum(a, b); }, vmax);
    fVec vsum(0.f);
    for (int64_t j = 0; j < p.rows; j += kLanes) {
      const fVec e = (fVec::loadu(row + j) - fVec(m)).exp_u20();
      e.store(row + j);
      vsum += e;
    }
    const fVec inv(1.f / at::vec::vec_reduce_all<float>([](fVec a, fVec b) { return a + b; }, vsum));
    for (int64_t j = 0; j < p.rows; j += kLanes) (fVec::loadu(row + j) * inv).store(row + j);
  }
}

// Loads Q (scaled) and K of one (clip, position, head) and leaves softmax(Q K^T) in P.
template <typename T>
void probabilities(const Problem& p, const TokenView<T>& q, const TokenView<T>& k, int64_t frame0, int64_t s,
                   int64_t h, float scale, float* Q, float* K, float* Kt, float* P) {
  load_rows(p, q, frame0, s, h, scale, Q, nullptr);
  load_rows(p, k, frame0, s, h, 1.f, K, Kt);
  small_matmul(Q, p.dim_pad, 1, p.rows, p.head_dim, Kt, p.rows, p.rows, P, p.rows);
  softmax_rows(p, P);
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t T, int64_t heads) {
  for (const auto* t : {&q, &k, &v}) {
    check_activation_dtype(*t, "temporal_attention", "q/k/v");
    TORCH_CHECK(t->dim() == 3 && t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type(),
                "svd_fast._C.temporal_attention: q/k/v must share one (B*T, S, C) shape and dtype, got ",
                q.sizes(), k.sizes(), v.sizes());
  }
  TORCH_CHECK(T >= 1 && T <= kMaxFrames && q.size(0) % T == 0, "svd_fast._C.temporal_attention: num_frames=",
              T, " must be in [1, ", kMaxFrames, "] and divide the batch ", q.size(0));
  TORCH_CHECK(heads >= 1 && q.size(2) % heads == 0, "svd_fast._C.temporal_attention: ", q.size(2),
              " channels do not split into ", heads, " heads");
}

// Channel stride 1 is all the kernels need; anything else is copied once.
at::Tensor channels_dense(const at::Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

template <typename T>
TokenView<T> view_of(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1)};
}

}  // namespace

at::Tensor temporal_attention_fwd(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                  int64_t num_frames, int64_t heads) {
  check_inputs(q_in, k_in, v_in, num_frames, heads);
  const at::Tensor q = channels_dense(q_in), k = channels_dense(k_in), v = channels_dense(v_in);
  const int64_t clips = q.size(0) / num_frames, S = q.size(1), C = q.size(2);
  const Problem p(num_frames, C / heads);
  const float scale = 1.f / std::sqrt(static_cast<float>(p.head_dim));
  at::Tensor out = at::empty({q.size(0), S, C}, q.options());
  SVD_FAST_DISPATCH_ACTIVATION(q.scalar_type(), "temporal_attention_fwd", [&] {
    const auto qv = view_of<scalar_t>(q), kv = view_of<scalar_t>(k), vv = view_of<scalar_t>(v);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, clips * S, 16, [&](int64_t begin, int64_t end) {
      // Workspace: Q (scaled), K, K^T, V, output, scores/probabilities. Rows past T stay zero.
      std::vector<float> ws(5 * p.mat() + p.square(), 0.f);
      float *Q = ws.data(), *K = Q + p.mat(), *Kt = K + p.mat(), *V = Kt + p.mat(), *O = V + p.mat();
      float* P = O + p.mat();
      for (int64_t bs = begin; bs < end; ++bs) {
        const int64_t frame0 = (bs / S) * num_frames, s = bs % S;
        for (int64_t h = 0; h < heads; ++h) {
          probabilities(p, qv, kv, frame0, s, h, scale, Q, K, Kt, P);
          load_rows(p, vv, frame0, s, h, 1.f, V, nullptr);
          small_matmul(P, p.rows, 1, p.rows, p.frames, V, p.dim_pad, p.dim_pad, O, p.dim_pad);
          store_rows(p, O, o, frame0, s, h, S * C, C);
        }
      }
    });
  });
  return out;
}

// Returns (dq, dk, dv), each (B*T, S, C) contiguous.
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_bwd(const at::Tensor& grad_in,
                                                                      const at::Tensor& q_in,
                                                                      const at::Tensor& k_in,
                                                                      const at::Tensor& v_in, int64_t num_frames,
                                                                      int64_t heads) {
  check_inputs(q_in, k_in, v_in, num_frames, heads);
  TORCH_CHECK(grad_in.sizes() == q_in.sizes(), "svd_fast._C.temporal_attention_bwd: grad ", grad_in.sizes(),
              " does not match q ", q_in.sizes());
  const at::Tensor q = channels_dense(q_in), k = channels_dense(k_in), v = channels_dense(v_in);
  const at::Tensor grad = channels_dense(grad_in.to(q.scalar_type()));
  const int64_t clips = q.size(0) / num_frames, S = q.size(1), C = q.size(2);
  const Problem p(num_frames, C / heads);
  const float scale = 1.f / std::sqrt(static_cast<float>(p.head_dim));
  at::Tensor dq = at::empty({q.size(0), S, C}, q.options());
  at::Tensor dk = at::empty_like(dq), dv = at::empty_like(dq);
  SVD_FAST_DISPATCH_ACTIVATION(q.scalar_type(), "temporal_attention_bwd", [&] {
    const auto qv = view_of<scalar_t>(q), kv = view_of<scalar_t>(k), vv = view_of<scalar_t>(v);
    const auto gv = view_of<scalar_t>(grad);
    at::parallel_for(0, clips * S, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> ws(8 * p.mat() + 2 * p.square(), 0.f);
      float *Q = ws.data(), *K = Q + p.mat(), *Kt = K + p.mat(), *V = Kt + p.mat(), *Vt = V + p.mat();
      float *dO = Vt + p.mat(), *dX = dO + p.mat(), *scratch = dX + p.mat();
      float *P = scratch + p.mat(), *dS = P + p.square();
      for (int64_t bs = begin; bs < end; ++bs) {
        const int64_t frame0 = (bs / S) * num_frames, s = bs % S;
        for (int64_t h = 0; h < heads; ++h) {
          probabilities(p, qv, kv, frame0, s, h, scale, Q, K, Kt, P);
          load_rows(p, vv, frame0, s, h, 1.f, V, Vt);
          load_rows(p, gv, frame0, s, h, 1.f, dO, nullptr);
          // dP = dO V^T, then dS = P * (dP - rowsum(P * dP)).
          small_matmul(dO, p.dim_pad, 1, p.rows, p.head_dim, Vt, p.rows, p.rows, dS, p.rows);
          for (int64_t i = 0; i < p.frames; ++i) {
            float* ds = dS + i * p.rows;
            const float* pr = P + i * p.rows;
            float delta = 0.f;
            for (int64_t j = 0; j < p.frames; ++j) delta += pr[j] * ds[j];
            for (int64_t j = 0; j < p.rows; ++j) ds[j] = pr[j] * (ds[j] - delta);
          }
          // dV = P^T dO, dK = dS^T (scale Q), dQ = scale * dS K.
          small_matmul(P, 1, p.rows, p.rows, p.frames, dO, p.dim_pad, p.dim_pad, dX, p.dim_pad);
          store_rows(p, dX, dv.mutable_data_ptr<scalar_t>(), frame0, s, h, S * C, C);
          small_matmul(dS, 1, p.rows, p.rows, p.frames, Q, p.dim_pad, p.dim_pad, dX, p.dim_pad);
          store_rows(p, dX, dk.mutable_data_ptr<scalar_t>(), frame0, s, h, S * C, C);
          small_matmul(dS, p.rows, 1, p.rows, p.frames, K, p.dim_pad, p.dim_pad, scratch, p.dim_pad);
          for (int64_t i = 0; i < p.mat(); i += kLanes) (fVec::loadu(scratch + i) * fVec(scale)).store(dX + i);
          store_rows(p, dX, dq.mutable_data_ptr<scalar_t>(), frame0, s, h, S * C, C);
        }
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace svd_fast
