// (K,1,1) convolution over the frames of each clip as K shifted GEMMs on channels-last data.
//
// A channels-last (B*T, Cin, H, W) tensor is, in memory, the matrix X (B, T*HW, Cin). Output
// frame t of tap k reads input frame t + k - K/2, which is the same matrix shifted by whole frames
// (HW rows), so each tap is one GEMM on row ranges of X: no im2col buffer and no permuted copies.
// Zero padding in time is the tap simply skipping the frames that would read outside the clip.
#include "vec_utils.h"

namespace svd_fast {
namespace {

struct ConvShape {
  int64_t clips, frames, spatial, in_channels, out_channels, taps;
};

// (B, T*HW, C) view of a channels-last (B*T, C, H, W) tensor.
at::Tensor as_rows(const at::Tensor& t, const ConvShape& s) {
  return t.permute({0, 2, 3, 1}).reshape({s.clips, s.frames * s.spatial, t.size(1)});
}

at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

ConvShape check_and_shape(const at::Tensor& x, const at::Tensor& weight, int64_t T) {
  check_activation_dtype(x, "temporal_conv", "x");
  TORCH_CHECK(x.dim() == 4, "svd_fast._C.temporal_conv: x must be (B*T, C, H, W), got ", x.sizes());
  TORCH_CHECK(T >= 1 && x.size(0) % T == 0, "svd_fast._C.temporal_conv: batch ", x.size(0),
              " is not a multiple of num_frames=", T);
  TORCH_CHECK(weight.dim() == 5 && weight.size(1) == x.size(1) && weight.size(3) == 1 && weight.size(4) == 1 &&
                  weight.size(2) % 2 == 1,
              "svd_fast._C.temporal_conv: weight must be (Cout, ", x.size(1), ", K odd, 1, 1), got ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "svd_fast._C.temporal_conv: weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  return {x.size(0) / T, T, x.size(2) * x.size(3), x.size(1), weight.size(0), weight.size(2)};
}

// Rows of output frames [t0, t0 + len) and of the input frames they read through a tap with
// temporal offset `shift` (input frame = output frame + shift).
struct TapRows {
  int64_t out_start, in_start, count;  // in rows (frames * HW)
};

TapRows tap_rows(const ConvShape& s, int64_t shift) {
  const int64_t t0 = std::max<int64_t>(0, -shift);
  const int64_t len = s.frames - std::abs(shift);
  return {t0 * s.spatial, (t0 + shift) * s.spatial, std::max<int64_t>(0, len) * s.spatial};
}

// y_rows[b] = bias + sum_k x_rows[b] (shifted by tap k) @ W_k^T, all (T*HW, C) matrices.
void shifted_gemms(const at::Tensor& x_rows, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const ConvShape& s, at::Tensor& y_rows) {
  const int64_t pad = s.taps / 2;
  for (int64_t b = 0; b < s.clips; ++b) {
    at::Tensor yb = y_rows.select(0, b), xb = x_rows.select(0, b);
    const at::Tensor w_center = weight.select(2, pad).reshape({s.out_channels, s.in_channels}).t();
    if (bias.has_value() && bias->defined())
      at::addmm_out(yb, bias->to(yb.scalar_type()), xb, w_center);
    else
      at::mm_out(yb, xb, w_center);
    for (int64_t k = 0; k < s.taps; ++k) {
      if (k == pad) continue;
      const TapRows r = tap_rows(s, k - pad);
      if (r.count == 0) continue;
      at::Tensor y_slice = yb.narrow(0, r.out_start, r.count);
      y_slice.addmm_(xb.narrow(0, r.in_start, r.count), weight.select(2, k).reshape({s.out_channels, s.in_channels}).t());
    }
  }
}

}  // namespace

at::Tensor temporal_conv_fwd(const at::Tensor& x_in, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t num_frames) {
  const ConvShape s = check_and_shape(x_in, weight, num_frames);
  const at::Tensor x = channels_last(x_in);
  at::Tensor y = at::empty({x.size(0), s.out_channels, x.size(2), x.size(3)},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor y_rows = as_rows(y, s);  // a view: the GEMMs write straight into y
  shifted_gemms(as_rows(x, s), weight, bias, s, y_rows);
  return y;
}

// Returns (dx, dweight, dbias); dbias is fp32 (Cout,).
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_conv_bwd(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                 const at::Tensor& weight, int64_t num_frames) {
  const ConvShape s = check_and_shape(x_in, weight, num_frames);
  const at::Tensor x = channels_last(x_in);
  const at::Tensor grad = channels_last(grad_in.to(x.scalar_type()));
  // dx is the same convolution of grad with W transposed over channels and flipped in time.
  const at::Tensor w_flip = weight.flip({2}).transpose(0, 1).contiguous();
  const at::Tensor dx = temporal_conv_fwd(grad, w_flip, std::nullopt, num_frames);
  const at::Tensor g_rows = as_rows(grad, s), x_rows = as_rows(x, s);
  at::Tensor dweight = at::zeros_like(weight, at::MemoryFormat::Contiguous);
  const int64_t pad = s.taps / 2;
  for (int64_t k = 0; k < s.taps; ++k) {
    const TapRows r = tap_rows(s, k - pad);
    if (r.count == 0) continue;
    at::Tensor dw_k = dweight.select(2, k).select(2, 0).select(2, 0);  // (Cout, Cin) view
    for (int64_t b = 0; b < s.clips; ++b)
      dw_k.addmm_(g_rows.select(0, b).narrow(0, r.out_start, r.count).t(),
                  x_rows.select(0, b).narrow(0, r.in_start, r.count));
  }
  const at::Tensor dbias = g_rows.sum({0, 1}, /*keepdim=*/false, at::kFloat);
  return {dx, dweight, dbias};
}

}  // namespace svd_fast
