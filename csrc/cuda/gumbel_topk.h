// Launchers of the Gumbel-softmax top-k (MIST §3.2, Appendix A). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace vidsel::cuda {

// Largest L the kernels take (the row's perturbed logits, allowed mask and gradient sit in shared memory).
constexpr int64_t kGumbelTopkMaxLength = 2048;

// logits (batch, length) float64 -> out (batch, k, length) float64: one-hot picks (hard) or soft draws.
cudaError_t launch_gumbel_topk_forward(const double* logits, double* out, int64_t batch, int64_t length, int64_t k,
                                double tau, bool hard, bool replacement, uint64_t seed, cudaStream_t stream);

// grad (batch, k, length) float64 -> out (batch, length) float64, the soft draws' gradient.
cudaError_t launch_gumbel_topk_backward(const double* logits, const double* grad, double* out, int64_t batch,
                                 int64_t length, int64_t k, double tau, bool replacement, uint64_t seed,
                                 cudaStream_t stream);

}  // namespace vidsel::cuda
