// 3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray,
// arXiv 1509.09308): each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A for its 4x4 input tile d,
// so the 9 multiply-adds per output pixel and channel pair become 4, done as 16 GEMMs
// (tiles x C_in) @ (C_in x C_out), one per position of the 4x4 transformed tile.
//
// The transforms are additions only and read/write channels-last activations along the contiguous
// channel axis; the GEMMs are at::bmm (MKL/oneDNN). The weight transform U = G g G^T is done once
// in Python (svd_fast.kernels.winograd.weight_transform) and cached there. Tiles are processed in
// chunks so the transformed tiles stay within kChunkBytes whatever the image size.
#include "vec_utils.h"

#include <vector>

namespace svd_fast {
namespace {

constexpr int64_t kChunkBytes = int64_t(32) << 20;  // transformed input or output tiles of one chunk
constexpr int64_t kTileGrain = 16;                  // tiles per parallel task

struct TileGrid {
  int64_t N, H, W, tiles_h, tiles_w;
  void locate(int64_t tile, int64_t& n, int64_t& ty, int64_t& tx) const {
    n = tile / (tiles_h * tiles_w);
    const int64_t r = tile % (tiles_h * tiles_w);
    ty = r / tiles_w;
    tx = r % tiles_w;
  }
};

// v[(4i + j) * plane + t * C + c] = (B^T d B)[i][j] for tile t0 + t, channel c, where d is the
// zero-padded 4x4 window at rows 2ty-1.., cols 2tx-1.. of x (channels-last, channel stride 1).
// B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]].
template <typename T>
void input_transform(const T* x, const int64_t* xs, T* v, int64_t plane, const TileGrid& g, int64_t C, int64_t t0,
                     int64_t count) {
  const std::vector<T> zeros(C, T(0));
  at::parallel_for(0, count, kTileGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t n, ty, tx;
      g.locate(t0 + t, n, ty, tx);
      const T* p[4][4];
      for (int a = 0; a < 4; ++a) {
        const int64_t y = 2 * ty - 1 + a;
        for (int b = 0; b < 4; ++b) {
          const int64_t xx = 2 * tx - 1 + b;
          const bool inside = y >= 0 && y < g.H && xx >= 0 && xx < g.W;
          p[a][b] = inside ? x + n * xs[0] + y * xs[2] + xx * xs[3] : zeros.data();
        }
      }
      T* out = v + t * C;
      for (int64_t c = 0; c < C; c += kLanes) {
        const int64_t len = std::min(kLanes, C - c);
        fVec r[4][4];
        for (int b = 0; b < 4; ++b) {
          const fVec d0 = load_float(p[0][b] + c, len), d1 = load_float(p[1][b] + c, len);
          const fVec d2 = load_float(p[2][b] + c, len), d3 = load_float(p[3][b] + c, len);
          r[0][b] = d0 - d2;
          r[1][b] = d1 + d2;
          r[2][b] = d2 - d1;
          r[3][b] = d1 - d3;
        }
        for (int i = 0; i < 4; ++i) {
          T* o = out + 4 * i * plane + c;
          store_float(o, r[i][0] - r[i][2], len);
          store_float(o + plane, r[i][1] + r[i][2], len);
          store_float(o + 2 * plane, r[i][2] - r[i][1], len);
          store_float(o + 3 * plane, r[i][1] - r[i][3], len);
        }
      }
    }
  });
}

// y[n, 2ty+i, 2tx+j, k] = (A^T M A)[i][j] + bias[k] for tile t0 + t (pixels past the image edge
// are dropped), M[4a + b] = m[(4a + b) * plane + t * K + k]. A^T = [[1,1,1,0],[0,1,-1,-1]].
template <typename T>
void output_transform(const T* m, int64_t plane, const T* bias, T* y, const int64_t* ys, const TileGrid& g, int64_t K,
                      int64_t t0, int64_t count) {
  at::parallel_for(0, count, kTileGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> discard(K);  // where the pixels past the image edge go (keeps the loop branch-free)
    for (int64_t t = begin; t < end; ++t) {
      int64_t n, ty, tx;
      g.locate(t0 + t, n, ty, tx);
      T* q[2][2];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
          const int64_t oy = 2 * ty + i, ox = 2 * tx + j;
          q[i][j] = oy < g.H && ox < g.W ? y + n * ys[0] + oy * ys[2] + ox * ys[3] : discard.data();
        }
      const T* in = m + t * K;
      for (int64_t k = 0; k < K; k += kLanes) {
        const int64_t len = std::min(kLanes, K - k);
        fVec s[2][4];
        for (int b = 0; b < 4; ++b) {
          const fVec m0 = load_float(in + b * plane + k, len), m1 = load_float(in + (4 + b) * plane + k, len);
          const fVec m2 = load_float(in + (8 + b) * plane + k, len), m3 = load_float(in + (12 + b) * plane + k, len);
          s[0][b] = m0 + m1 + m2;
          s[1][b] = m1 - m2 - m3;
        }
        const fVec bk = bias ? load_float(bias + k, len) : fVec(0.f);
        for (int i = 0; i < 2; ++i) {
          store_float(q[i][0] + k, s[i][0] + s[i][1] + s[i][2] + bk, len);
          store_float(q[i][1] + k, s[i][1] - s[i][2] - s[i][3] + bk, len);
        }
      }
    }
  });
}

}  // namespace

// x (N, C, H, W) channels-last; u (16, C, K) = the transformed weight; bias (K,) or None, x's dtype.
// Returns the convolution (N, K, H, W), channels-last, in x's dtype.
at::Tensor winograd_conv3x3_fwd(const at::Tensor& x, const at::Tensor& u_in, const std::optional<at::Tensor>& bias_in) {
  check_activation_dtype(x, "winograd_conv3x3", "x");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "svd_fast._C.winograd_conv3x3: x must be a channels-last (N, C, H, W) tensor, got sizes ", x.sizes(),
              " strides ", x.strides());
  TORCH_CHECK(u_in.dim() == 3 && u_in.size(0) == 16 && u_in.size(1) == x.size(1) && u_in.scalar_type() == x.scalar_type(),
              "svd_fast._C.winograd_conv3x3: u must be (16, ", x.size(1), ", C_out) in x's dtype, got ", u_in.sizes(),
              " ", u_in.scalar_type());
  const at::Tensor u = u_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = u.size(2);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->numel() == K && bias_in->scalar_type() == x.scalar_type(),
                "svd_fast._C.winograd_conv3x3: bias must have ", K, " elements in x's dtype");
    bias = bias_in->contiguous();
  }
  at::Tensor y = at::empty({N, K, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const TileGrid g{N, H, W, (H + 1) / 2, (W + 1) / 2};
  const int64_t tiles = N * g.tiles_h * g.tiles_w;
  if (tiles == 0 || K == 0) return y;
  const int64_t chunk =
      std::min(tiles, std::max<int64_t>(64, kChunkBytes / (16 * std::max(C, K) * int64_t(x.element_size()))));
  SVD_FAST_DISPATCH_ACTIVATION(x.scalar_type(), "winograd_conv3x3_fwd", [&] {
    const scalar_t* bias_ptr = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    at::Tensor v, mm;
    for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
      const int64_t count = std::min(chunk, tiles - t0);
      if (!v.defined() || v.size(1) != count) {
        v = at::empty({16, count, C}, x.options());
        mm = at::empty({16, count, K}, x.options());
      }
      input_transform(x.const_data_ptr<scalar_t>(), x.strides().data(), v.mutable_data_ptr<scalar_t>(), count * C, g,
                      C, t0, count);
      at::bmm_out(mm, v, u);
      output_transform(mm.const_data_ptr<scalar_t>(), count * K, bias_ptr, y.mutable_data_ptr<scalar_t>(),
                       y.strides().data(), g, K, t0, count);
    }
  });
  return y;
}

}  // namespace svd_fast
