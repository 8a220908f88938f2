// CUDA bindings of perturbed_topk / perturbed_topk_backward (STTS §3.2 eq. 7-8): checks, allocation,
// launch. The kernels work in float64 (as every backend does) on contiguous copies of the inputs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "cuda/binding_common.h"
#include "cuda/perturbed_topk.h"

namespace vidsel::cuda {
namespace {

constexpr int64_t kMaxChunks = 64;

void check_args(const at::Tensor& scores, int64_t k, int64_t num_samples, double sigma, int64_t seed) {
  TORCH_CHECK(scores.is_cuda(), "vidsel(cuda): scores must be a CUDA tensor, got ", scores.device());
  TORCH_CHECK(scores.dim() == 2, "vidsel(cuda): scores must be (B, L)");
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), "vidsel(cuda): scores must be floating point");
  const int64_t length = scores.size(1);
  TORCH_CHECK(k >= 1 && k <= length, "vidsel(cuda): k=", k, " must be in [1, ", length, "]");
  TORCH_CHECK(length <= kPerturbedTopkMaxLength, "vidsel(cuda): perturbed_topk takes L <= ",
              kPerturbedTopkMaxLength, ", got ", length);
  TORCH_CHECK(num_samples >= 1 && num_samples <= UINT32_MAX, "vidsel(cuda): num_samples out of range");
  TORCH_CHECK(sigma >= 0 && std::isfinite(sigma), "vidsel(cuda): sigma must be finite and >= 0");
  TORCH_CHECK(seed >= 0, "vidsel(cuda): seed must be >= 0");
}

at::Tensor perturbed_topk_cuda(const at::Tensor& scores_in, int64_t k, int64_t num_samples, double sigma,
                               int64_t seed) {
  check_args(scores_in, k, num_samples, sigma, seed);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.to(at::kDouble).contiguous();
  const int64_t batch = scores.size(0), length = scores.size(1);
  at::Tensor counts = at::zeros({batch, k, length}, scores.options().dtype(at::kInt));
  check_launch(launch_perturbed_topk_forward(scores.data_ptr<double>(), counts.data_ptr<int32_t>(), batch, length, k,
                                             num_samples, sigma, static_cast<uint64_t>(seed),
                                             std::min<int64_t>(num_samples, kMaxChunks),
                                             c10::cuda::getCurrentCUDAStream()),
               "perturbed_topk");
  return (counts.to(at::kDouble) / static_cast<double>(num_samples)).to(scores_in.scalar_type());
}

at::Tensor perturbed_topk_backward_cuda(const at::Tensor& grad_in, const at::Tensor& scores_in, int64_t k,
                                        int64_t num_samples, double sigma, int64_t seed) {
  check_args(scores_in, k, num_samples, sigma, seed);
  TORCH_CHECK(grad_in.is_cuda() && grad_in.device() == scores_in.device(),
              "vidsel(cuda): grad must be on the device of scores");
  const int64_t batch = scores_in.size(0), length = scores_in.size(1);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({batch, k, length}), "vidsel(cuda): grad must be (B, k, L)");
  if (sigma == 0) return at::zeros_like(scores_in);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.to(at::kDouble).contiguous();
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  const int64_t chunks = std::min<int64_t>(num_samples, kMaxChunks);
  at::Tensor partial = at::empty({batch, chunks, length}, scores.options());
  check_launch(launch_perturbed_topk_backward(scores.data_ptr<double>(), grad.data_ptr<double>(),
                                              partial.data_ptr<double>(), batch, length, k, num_samples, sigma,
                                              static_cast<uint64_t>(seed), chunks, c10::cuda::getCurrentCUDAStream()),
               "perturbed_topk_backward");
  return (partial.sum(1) / (static_cast<double>(num_samples) * sigma)).to(scores_in.scalar_type());
}

at::Tensor philox_noise_cuda(const at::Tensor& like, int64_t seed, int64_t batch, int64_t samples, int64_t length,
                             int64_t stream, int64_t kind) {
  TORCH_CHECK(like.is_cuda(), "vidsel(cuda): like must be a CUDA tensor");
  TORCH_CHECK(seed >= 0 && batch >= 0 && samples >= 0 && length >= 0 && kind >= 0 && kind <= 2 && stream >= 0,
              "vidsel(cuda): philox_noise arguments out of range");
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor out = at::empty({batch, samples, length}, like.options().dtype(at::kDouble));
  check_launch(launch_philox_noise(out.data_ptr<double>(), batch, samples, length, static_cast<uint32_t>(stream),
                                   static_cast<int>(kind), static_cast<uint64_t>(seed),
                                   c10::cuda::getCurrentCUDAStream()),
               "philox_noise");
  return out;
}

// Y^T x on the device: cuBLAS batched GEMMs through ATen (dense; GPUs gain little from the sparsity).
at::Tensor indicator_matmul_cuda(const at::Tensor& p, const at::Tensor& x) {
  TORCH_CHECK(p.is_cuda() && x.is_cuda() && p.dim() == 3 && x.dim() == 3 && p.size(0) == x.size(0) &&
                  p.size(2) == x.size(1),
              "vidsel(cuda): indicator_matmul needs CUDA indicators (B, k, L) and x (B, L, D)");
  const c10::cuda::CUDAGuard guard(x.device());
  return at::bmm(p.to(x.scalar_type()), x);
}

std::tuple<at::Tensor, at::Tensor> indicator_matmul_backward_cuda(const at::Tensor& grad, const at::Tensor& p,
                                                                  const at::Tensor& x, bool need_x,
                                                                  bool need_indicators) {
  TORCH_CHECK(grad.is_cuda() && p.is_cuda() && x.is_cuda() && grad.dim() == 3 && grad.size(0) == p.size(0) &&
                  grad.size(1) == p.size(1) && grad.size(2) == x.size(2),
              "vidsel(cuda): indicator_matmul_backward shapes disagree");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor empty = at::empty({0}, x.options());
  at::Tensor grad_x = need_x ? at::bmm(p.to(x.scalar_type()).transpose(1, 2), grad) : empty;
  at::Tensor grad_p = need_indicators ? (at::bmm(grad, x.transpose(1, 2)) * (p != 0)).to(p.scalar_type()) : empty;
  return {grad_x, grad_p};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("perturbed_topk", &perturbed_topk_cuda);
  m.impl("perturbed_topk_backward", &perturbed_topk_backward_cuda);
  m.impl("philox_noise", &philox_noise_cuda);
  m.impl("indicator_matmul", &indicator_matmul_cuda);
  m.impl("indicator_matmul_backward", &indicator_matmul_backward_cuda);
}

}  // namespace vidsel::cuda
