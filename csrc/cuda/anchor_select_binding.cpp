// CUDA bindings of anchor_scores / anchor_gather and their backward ops (STTS §3.3).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/binding_common.h"
#include "cuda/anchor_select.h"

namespace vidsel::cuda {
namespace {

AnchorGeometry make_geometry(int64_t height, int64_t width, int64_t ah, int64_t aw, int64_t sh, int64_t sw) {
  TORCH_CHECK(ah >= 1 && aw >= 1 && ah <= height && aw <= width, "vidsel(cuda): anchor (", ah, ", ", aw,
              ") must fit in the (", height, ", ", width, ") map");
  TORCH_CHECK(sh >= 1 && sw >= 1, "vidsel(cuda): stride must be >= 1");
  return {height, width, ah, aw, sh, sw, (height - ah) / sh + 1, (width - aw) / sw + 1};
}

at::ScalarType acc_type_of(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor anchor_scores_cuda(const at::Tensor& scores_in, int64_t ah, int64_t aw, int64_t sh, int64_t sw) {
  VIDSEL_CHECK_CUDA(scores_in, "scores");
  TORCH_CHECK(scores_in.dim() == 3, "vidsel(cuda): scores must be (F, H, W)");
  const AnchorGeometry g = make_geometry(scores_in.size(1), scores_in.size(2), ah, aw, sh, sw);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t frames = scores.size(0);
  at::Tensor out = at::empty({frames, g.rows * g.cols}, scores.options());
  check_launch(launch_anchor_scores(scores.data_ptr(), scalar_kind(scores), out.data_ptr(), frames, g,
                                    c10::cuda::getCurrentCUDAStream()),
               "anchor_scores");
  return out;
}

at::Tensor anchor_scores_backward_cuda(const at::Tensor& grad_in, int64_t height, int64_t width, int64_t ah,
                                       int64_t aw, int64_t sh, int64_t sw) {
  VIDSEL_CHECK_CUDA(grad_in, "grad");
  TORCH_CHECK(grad_in.dim() == 2, "vidsel(cuda): grad must be (F, G)");
  const AnchorGeometry g = make_geometry(height, width, ah, aw, sh, sw);
  TORCH_CHECK(grad_in.size(1) == g.rows * g.cols, "vidsel(cuda): grad must have G=", g.rows * g.cols, " columns");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor out = at::empty({grad.size(0), height, width}, grad.options());
  check_launch(launch_anchor_scores_backward(grad.data_ptr(), scalar_kind(grad), out.data_ptr(), grad.size(0), g,
                                             c10::cuda::getCurrentCUDAStream()),
               "anchor_scores_backward");
  return out;
}

void check_gather_args(const at::Tensor& x, const at::Tensor& weights, const AnchorGeometry& g) {
  VIDSEL_CHECK_CUDA(x, "x");
  VIDSEL_CHECK_CUDA(weights, "weights");
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == x.size(0) && weights.size(1) == g.rows * g.cols,
              "vidsel(cuda): weights must have shape (F, G=", g.rows * g.cols, ")");
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "vidsel(cuda): weights must be floating point");
}

at::Tensor anchor_gather_cuda(const at::Tensor& x_in, const at::Tensor& weights_in, int64_t ah, int64_t aw,
                              int64_t sh, int64_t sw) {
  TORCH_CHECK(x_in.dim() == 4, "vidsel(cuda): x must be (F, H, W, D)");
  const AnchorGeometry g = make_geometry(x_in.size(1), x_in.size(2), ah, aw, sh, sw);
  check_gather_args(x_in, weights_in, g);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weights = weights_in.to(acc_type_of(x)).contiguous();
  at::Tensor out = at::empty({x.size(0), ah, aw, x.size(3)}, x.options());
  check_launch(launch_anchor_gather(x.data_ptr(), scalar_kind(x), weights.data_ptr(), out.data_ptr(), x.size(0),
                                    x.size(3), g, c10::cuda::getCurrentCUDAStream()),
               "anchor_gather");
  return out;
}

std::tuple<at::Tensor, at::Tensor> anchor_gather_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                               const at::Tensor& weights_in, int64_t sh, int64_t sw,
                                                               bool need_grad_x, bool need_grad_weights) {
  TORCH_CHECK(x_in.dim() == 4 && grad_in.dim() == 4, "vidsel(cuda): x and grad must be 4-d");
  VIDSEL_CHECK_CUDA(grad_in, "grad");
  TORCH_CHECK(grad_in.size(0) == x_in.size(0) && grad_in.size(3) == x_in.size(3) &&
                  grad_in.scalar_type() == x_in.scalar_type(),
              "vidsel(cuda): grad must have shape (F, h, w, D) and the dtype of x");
  const AnchorGeometry g = make_geometry(x_in.size(1), x_in.size(2), grad_in.size(1), grad_in.size(2), sh, sw);
  check_gather_args(x_in, weights_in, g);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), grad = grad_in.contiguous();
  const at::Tensor weights = weights_in.to(acc_type_of(x)).contiguous();
  at::Tensor grad_x = need_grad_x ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor grad_w = need_grad_weights ? at::empty(weights_in.sizes(), weights_in.options().dtype(at::kDouble))
                                        : at::empty({0}, weights_in.options());
  check_launch(launch_anchor_gather_backward(grad.data_ptr(), x.data_ptr(), scalar_kind(x), weights.data_ptr(),
                                             need_grad_x ? grad_x.data_ptr() : nullptr,
                                             need_grad_weights ? grad_w.data_ptr<double>() : nullptr, x.size(0),
                                             x.size(3), g, c10::cuda::getCurrentCUDAStream()),
               "anchor_gather_backward");
  if (need_grad_weights) grad_w = grad_w.to(weights_in.scalar_type());
  return {grad_x, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("anchor_scores", &anchor_scores_cuda);
  m.impl("anchor_scores_backward", &anchor_scores_backward_cuda);
  m.impl("anchor_gather", &anchor_gather_cuda);
  m.impl("anchor_gather_backward", &anchor_gather_backward_cuda);
}

}  // namespace vidsel::cuda
