// CUDA bindings of topk_gather / topk_gather_backward: checks, allocation, launch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/binding_common.h"
#include "cuda/topk_gather.h"

namespace vidsel::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> topk_gather_cuda(const at::Tensor& x_in, const at::Tensor& scores_in, int64_t k,
                                                    bool sorted_by_index) {
  VIDSEL_CHECK_CUDA(x_in, "x");
  VIDSEL_CHECK_CUDA(scores_in, "scores");
  TORCH_CHECK(x_in.dim() == 3 && scores_in.dim() == 2, "vidsel(cuda): topk_gather needs x (B, N, D), scores (B, N)");
  const int64_t groups = x_in.size(0), n = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK(scores_in.size(0) == groups && scores_in.size(1) == n, "vidsel(cuda): scores must have shape (",
              groups, ", ", n, ")");
  TORCH_CHECK(at::isFloatingType(scores_in.scalar_type()), "vidsel(cuda): scores must be floating point");
  TORCH_CHECK(k >= 1 && k <= n, "vidsel(cuda): k=", k, " must be in [1, N=", n, "]");
  TORCH_CHECK(x_in.element_size() % 2 == 0, "vidsel(cuda): unsupported dtype ", x_in.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scores = scores_in.to(at::kDouble).contiguous();  // exact widening: same order, same ties
  at::Tensor rank = at::empty({groups, n}, scores.options().dtype(at::kInt));
  at::Tensor index = at::empty({groups, k}, scores.options().dtype(at::kLong));
  at::Tensor selected = at::empty({groups, k, d}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_launch(launch_topk_indices(scores.data_ptr<double>(), rank.data_ptr<int32_t>(), index.data_ptr<int64_t>(),
                                   groups, n, k, sorted_by_index, stream),
               "topk_gather (ranking)");
  check_launch(launch_gather_selected_rows(x.data_ptr(), index.data_ptr<int64_t>(), selected.data_ptr(), groups, n, k,
                                           d * static_cast<int64_t>(x.element_size()), stream),
               "topk_gather (row copy)");
  return {selected, index};
}

at::Tensor topk_gather_backward_cuda(const at::Tensor& grad_in, const at::Tensor& index_in, int64_t n) {
  VIDSEL_CHECK_CUDA(grad_in, "grad");
  VIDSEL_CHECK_CUDA(index_in, "index");
  TORCH_CHECK(grad_in.dim() == 3 && index_in.dim() == 2 && index_in.size(0) == grad_in.size(0) &&
                  index_in.size(1) == grad_in.size(1),
              "vidsel(cuda): topk_gather_backward needs grad (B, k, D) and index (B, k)");
  check_index_dtype(index_in, "index");
  TORCH_CHECK(n >= grad_in.size(1), "vidsel(cuda): n must be >= k");
  TORCH_CHECK(grad_in.element_size() % 2 == 0, "vidsel(cuda): unsupported dtype ", grad_in.scalar_type());
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous(), index = index_in.contiguous();
  at::Tensor grad_x = at::empty({grad.size(0), n, grad.size(2)}, grad.options());
  check_launch(launch_scatter_selected_rows(grad.data_ptr(), index.data_ptr<int64_t>(), grad_x.data_ptr(),
                                            grad.size(0), n, grad.size(1),
                                            grad.size(2) * static_cast<int64_t>(grad.element_size()),
                                            c10::cuda::getCurrentCUDAStream()),
               "topk_gather_backward");
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("topk_gather", &topk_gather_cuda);
  m.impl("topk_gather_backward", &topk_gather_backward_cuda);
}

}  // namespace vidsel::cuda
