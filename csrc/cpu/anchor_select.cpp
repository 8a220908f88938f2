// Anchor-based spatial selection (STTS §3.3): anchor scores as direct window means, and the
// indicator-weighted sum of the anchor windows (STTS eq. 9 over anchors) with its backward.
//
//   anchor_scores:   s_a[b, g] = mean of scores[b] over anchor g      (float64 window sum)
//   anchor_gather:   out[b, i, j] = sum_g w[b, g] x[b, top_g + i, left_g + j]
//   backward:        grad_x[b, p, q] = sum_{g covers (p, q)} w[b, g] grad[b, p - top_g, q - left_g]
//                    grad_w[b, g]    = <grad[b], x[b, window g]>
//
// Nothing of size (B, G, h, w, D) is ever built (the unfold of the STTS code). Anchors with a zero
// weight are skipped in the x-side sums, so a one-hot weight (hard selection) costs one copy.
#include "cpu/common.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

namespace vidsel {
namespace {

struct AnchorGrid {
  int64_t height, width, anchor_h, anchor_w, stride_h, stride_w, rows, cols;
  int64_t count() const { return rows * cols; }
  int64_t top(int64_t g) const { return (g / cols) * stride_h; }
  int64_t left(int64_t g) const { return (g % cols) * stride_w; }
};

AnchorGrid make_grid(int64_t height, int64_t width, int64_t ah, int64_t aw, int64_t sh, int64_t sw) {
  TORCH_CHECK(ah >= 1 && aw >= 1 && ah <= height && aw <= width, "vidsel: anchor (", ah, ", ", aw,
              ") must fit in the (", height, ", ", width, ") map");
  TORCH_CHECK(sh >= 1 && sw >= 1, "vidsel: stride must be >= 1");
  return {height, width, ah, aw, sh, sw, (height - ah) / sh + 1, (width - aw) / sw + 1};
}

// Score maps are small (14x14 patches): batches worth less than ~64k operations run inline, since
// waking the thread pool costs more than the work.
int64_t maps_per_job(const AnchorGrid& grid) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / (grid.height * grid.width + 4 * grid.count()));
}

// Direct float64 window sums, not a summed-area table: differences of large prefix sums lose small
// window sums next to huge (finfo.min-masked) or infinite scores.
template <typename scalar_t>
void anchor_scores_kernel(const at::Tensor& scores, const AnchorGrid& grid, at::Tensor& out) {
  const int64_t frames = scores.size(0), h = grid.height, w = grid.width;
  const scalar_t* s_ptr = scores.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  const double area = static_cast<double>(grid.anchor_h * grid.anchor_w);
  at::parallel_for(0, frames, maps_per_job(grid), [&](int64_t begin, int64_t end) {
    for (int64_t f = begin; f < end; ++f) {
      const scalar_t* s = s_ptr + f * h * w;
      for (int64_t g = 0; g < grid.count(); ++g) {
        const int64_t t = grid.top(g), l = grid.left(g);
        double sum = 0.0;
        for (int64_t p = t; p < t + grid.anchor_h; ++p) {
          for (int64_t q = l; q < l + grid.anchor_w; ++q) sum += static_cast<double>(s[p * w + q]);
        }
        o_ptr[f * grid.count() + g] = static_cast<scalar_t>(sum / area);
      }
    }
  });
}

// Adjoint of the anchor mean: each anchor adds grad/area to a 2D difference array, whose prefix
// sums spread it over the anchor's window.
template <typename scalar_t>
void anchor_scores_backward_kernel(const at::Tensor& grad, const AnchorGrid& grid, at::Tensor& out) {
  const int64_t frames = grad.size(0), h = grid.height, w = grid.width, stride = w + 1;
  const scalar_t* g_ptr = grad.data_ptr<scalar_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  const double area = static_cast<double>(grid.anchor_h * grid.anchor_w);
  at::parallel_for(0, frames, maps_per_job(grid), [&](int64_t begin, int64_t end) {
    std::vector<double> diff((h + 1) * (w + 1));
    for (int64_t f = begin; f < end; ++f) {
      std::fill(diff.begin(), diff.end(), 0.0);
      for (int64_t g = 0; g < grid.count(); ++g) {
        const double v = static_cast<double>(g_ptr[f * grid.count() + g]) / area;
        const int64_t t = grid.top(g), l = grid.left(g), b = t + grid.anchor_h, r = l + grid.anchor_w;
        diff[t * stride + l] += v;
        diff[t * stride + r] -= v;
        diff[b * stride + l] -= v;
        diff[b * stride + r] += v;
      }
      for (int64_t p = 0; p < h; ++p) {
        for (int64_t q = 0; q < w; ++q) {
          double acc = diff[p * stride + q];
          if (q > 0) acc += diff[p * stride + q - 1];
          if (p > 0) acc += diff[(p - 1) * stride + q];
          if (p > 0 && q > 0) acc -= diff[(p - 1) * stride + q - 1];
          diff[p * stride + q] = acc;  // in place: diff now holds the prefix sums up to (p, q)
          o_ptr[(f * h + p) * w + q] = static_cast<scalar_t>(acc);
        }
      }
    }
  });
}

at::Tensor anchor_scores_cpu(const at::Tensor& scores_in, int64_t ah, int64_t aw, int64_t sh, int64_t sw) {
  VIDSEL_CHECK_CPU(scores_in, "scores");
  VIDSEL_CHECK_DIM(scores_in, 3, "scores");
  TORCH_CHECK(at::isFloatingType(scores_in.scalar_type()), "vidsel: scores must be floating point");
  const AnchorGrid grid = make_grid(scores_in.size(1), scores_in.size(2), ah, aw, sh, sw);
  const at::Tensor scores = scores_in.contiguous();
  at::Tensor out = new_output({scores.size(0), grid.count()}, scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "vidsel_anchor_scores",
                                  [&] { anchor_scores_kernel<scalar_t>(scores, grid, out); });
  return out;
}

at::Tensor anchor_scores_backward_cpu(const at::Tensor& grad_in, int64_t height, int64_t width, int64_t ah,
                                      int64_t aw, int64_t sh, int64_t sw) {
  VIDSEL_CHECK_CPU(grad_in, "grad");
  VIDSEL_CHECK_DIM(grad_in, 2, "grad");
  const AnchorGrid grid = make_grid(height, width, ah, aw, sh, sw);
  TORCH_CHECK(grad_in.size(1) == grid.count(), "vidsel: grad must have G=", grid.count(), " columns");
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor out = new_output({grad.size(0), height, width}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "vidsel_anchor_scores_backward",
                                  [&] { anchor_scores_backward_kernel<scalar_t>(grad, grid, out); });
  return out;
}

template <typename scalar_t>
void anchor_gather_kernel(const at::Tensor& x, const at::Tensor& weights, const AnchorGrid& grid, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t frames = x.size(0), d = x.size(3), ah = grid.anchor_h, aw = grid.anchor_w, G = grid.count();
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  const acc_t* w_ptr = weights.data_ptr<acc_t>();
  scalar_t* o_ptr = out.data_ptr<scalar_t>();
  // One job per output row of an anchor window: (frame, i) -> aw * d outputs.
  at::parallel_for(0, frames * ah, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(aw * d);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t f = job / ah, i = job % ah;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t g = 0; g < G; ++g) {
        const acc_t wg = w_ptr[f * G + g];
        if (wg == acc_t(0)) continue;
        const scalar_t* src = x_ptr + ((f * grid.height + grid.top(g) + i) * grid.width + grid.left(g)) * d;
        for (int64_t c = 0; c < aw * d; ++c) acc[c] += wg * static_cast<acc_t>(src[c]);
      }
      scalar_t* dst = o_ptr + (f * ah + i) * aw * d;
      for (int64_t c = 0; c < aw * d; ++c) dst[c] = static_cast<scalar_t>(acc[c]);
    }
  });
}

template <typename scalar_t>
void anchor_gather_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weights,
                                   const AnchorGrid& grid, at::Tensor* grad_x, at::Tensor* grad_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t frames = x.size(0), d = x.size(3), ah = grid.anchor_h, aw = grid.anchor_w, G = grid.count();
  const int64_t frame_size = grid.height * grid.width * d, window_row = aw * d;
  const scalar_t* g_ptr = grad.data_ptr<scalar_t>();
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  const acc_t* w_ptr = weights.data_ptr<acc_t>();
  scalar_t* gx_ptr = grad_x ? grad_x->data_ptr<scalar_t>() : nullptr;
  double* gw_ptr = grad_w ? grad_w->data_ptr<double>() : nullptr;
  at::parallel_for(0, frames, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(gx_ptr ? frame_size : 0);
    for (int64_t f = begin; f < end; ++f) {
      const scalar_t* gf = g_ptr + f * ah * window_row;
      const scalar_t* xf = x_ptr + f * frame_size;
      if (gx_ptr) std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t g = 0; g < G; ++g) {
        const acc_t wg = w_ptr[f * G + g];
        double dot = 0.0;
        for (int64_t i = 0; i < ah; ++i) {
          const int64_t offset = ((grid.top(g) + i) * grid.width + grid.left(g)) * d;
          const scalar_t* grow = gf + i * window_row;
          if (gx_ptr && wg != acc_t(0)) {
            acc_t* a = acc.data() + offset;
            for (int64_t c = 0; c < window_row; ++c) a[c] += wg * static_cast<acc_t>(grow[c]);
          }
          if (gw_ptr) {
            const scalar_t* xrow = xf + offset;
            acc_t row_dot = 0;
#pragma omp simd reduction(+ : row_dot)
            for (int64_t c = 0; c < window_row; ++c) {
              row_dot += static_cast<acc_t>(grow[c]) * static_cast<acc_t>(xrow[c]);
            }
            dot += static_cast<double>(row_dot);
          }
        }
        if (gw_ptr) gw_ptr[f * G + g] = dot;
      }
      if (gx_ptr) {
        scalar_t* out = gx_ptr + f * frame_size;
        for (int64_t c = 0; c < frame_size; ++c) out[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

void check_gather_args(const at::Tensor& x, const at::Tensor& weights) {
  VIDSEL_CHECK_CPU(x, "x");
  VIDSEL_CHECK_CPU(weights, "weights");
  VIDSEL_CHECK_DIM(x, 4, "x");
  VIDSEL_CHECK_DIM(weights, 2, "weights");
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "vidsel: weights must be floating point");
  TORCH_CHECK(weights.size(0) == x.size(0), "vidsel: weights must have one row per frame of x");
}

at::Tensor anchor_gather_cpu(const at::Tensor& x_in, const at::Tensor& weights_in, int64_t ah, int64_t aw,
                             int64_t sh, int64_t sw) {
  check_gather_args(x_in, weights_in);
  const AnchorGrid grid = make_grid(x_in.size(1), x_in.size(2), ah, aw, sh, sw);
  TORCH_CHECK(weights_in.size(1) == grid.count(), "vidsel: weights must have G=", grid.count(), " columns");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = new_output({x.size(0), ah, aw, x.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vidsel_anchor_gather", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = weights_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    anchor_gather_kernel<scalar_t>(x, w, grid, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> anchor_gather_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                              const at::Tensor& weights_in, int64_t sh, int64_t sw,
                                                              bool need_grad_x, bool need_grad_weights) {
  check_gather_args(x_in, weights_in);
  VIDSEL_CHECK_CPU(grad_in, "grad");
  VIDSEL_CHECK_DIM(grad_in, 4, "grad");
  TORCH_CHECK(grad_in.size(0) == x_in.size(0) && grad_in.size(3) == x_in.size(3) &&
                  grad_in.scalar_type() == x_in.scalar_type(),
              "vidsel: grad must have shape (B, h, w, D) and the dtype of x");
  const AnchorGrid grid = make_grid(x_in.size(1), x_in.size(2), grad_in.size(1), grad_in.size(2), sh, sw);
  TORCH_CHECK(weights_in.size(1) == grid.count(), "vidsel: weights must have G=", grid.count(), " columns");
  const at::Tensor x = x_in.contiguous(), grad = grad_in.contiguous();
  at::Tensor grad_x = need_grad_x ? new_output(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor grad_w = need_grad_weights ? new_output(weights_in.sizes(), weights_in.options().dtype(at::kDouble))
                                        : at::empty({0}, weights_in.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vidsel_anchor_gather_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = weights_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    anchor_gather_backward_kernel<scalar_t>(grad, x, w, grid, need_grad_x ? &grad_x : nullptr,
                                            need_grad_weights ? &grad_w : nullptr);
  });
  if (need_grad_weights) grad_w = grad_w.to(weights_in.scalar_type());
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CPU, m) {
  m.impl("anchor_scores", &anchor_scores_cpu);
  m.impl("anchor_scores_backward", &anchor_scores_backward_cpu);
  m.impl("anchor_gather", &anchor_gather_cpu);
  m.impl("anchor_gather_backward", &anchor_gather_backward_cpu);
}

}  // namespace vidsel
