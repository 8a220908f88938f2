// CUDA bindings of gumbel_topk / gumbel_topk_backward (MIST §3.2, Appendix A): checks, allocation,
// launch. Kernels work in float64 on contiguous copies, like every other backend.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "cuda/binding_common.h"
#include "cuda/gumbel_topk.h"

namespace vidsel::cuda {
namespace {

void check_args(const at::Tensor& logits, int64_t k, double tau, bool replacement, int64_t seed) {
  TORCH_CHECK(logits.is_cuda(), "vidsel(cuda): logits must be a CUDA tensor, got ", logits.device());
  TORCH_CHECK(logits.dim() == 2, "vidsel(cuda): logits must be (B, L)");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "vidsel(cuda): logits must be floating point");
  const int64_t length = logits.size(1);
  TORCH_CHECK(length >= 1 && length <= kGumbelTopkMaxLength, "vidsel(cuda): gumbel_topk takes 1 <= L <= ",
              kGumbelTopkMaxLength, ", got ", length);
  TORCH_CHECK(k >= 1 && k <= UINT32_MAX && (replacement || k <= length), "vidsel(cuda): k=", k, " out of range");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "vidsel(cuda): tau must be finite and > 0");
  TORCH_CHECK(seed >= 0, "vidsel(cuda): seed must be >= 0");
}

at::Tensor gumbel_topk_cuda(const at::Tensor& logits_in, int64_t k, double tau, bool hard, bool replacement,
                            int64_t seed) {
  check_args(logits_in, k, tau, replacement, seed);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.to(at::kDouble).contiguous();
  at::Tensor out = at::empty({logits.size(0), k, logits.size(1)}, logits.options());
  check_launch(launch_gumbel_topk_forward(logits.data_ptr<double>(), out.data_ptr<double>(), logits.size(0),
                                          logits.size(1), k, tau, hard, replacement, static_cast<uint64_t>(seed),
                                          c10::cuda::getCurrentCUDAStream()),
               "gumbel_topk");
  return out.to(logits_in.scalar_type());
}

at::Tensor gumbel_topk_backward_cuda(const at::Tensor& grad_in, const at::Tensor& logits_in, int64_t k, double tau,
                                     bool replacement, int64_t seed) {
  check_args(logits_in, k, tau, replacement, seed);
  TORCH_CHECK(grad_in.is_cuda() && grad_in.device() == logits_in.device(),
              "vidsel(cuda): grad must be on the device of logits");
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({logits_in.size(0), k, logits_in.size(1)}),
              "vidsel(cuda): grad must be (B, k, L)");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.to(at::kDouble).contiguous();
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  at::Tensor out = at::empty({logits.size(0), logits.size(1)}, logits.options());
  check_launch(launch_gumbel_topk_backward(logits.data_ptr<double>(), grad.data_ptr<double>(), out.data_ptr<double>(),
                                           logits.size(0), logits.size(1), k, tau, replacement,
                                           static_cast<uint64_t>(seed), c10::cuda::getCurrentCUDAStream()),
               "gumbel_topk_backward");
  return out.to(logits_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("gumbel_topk", &gumbel_topk_cuda);
  m.impl("gumbel_topk_backward", &gumbel_topk_backward_cuda);
}

}  // namespace vidsel::cuda
