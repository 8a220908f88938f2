// Launchers of the perturbed-maximum top-k (STTS §3.2 eq. 7-8). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace vidsel::cuda {

// Largest L the kernels take: values, noise and accumulators of one row live in shared memory
// (perturbed_topk_shared_bytes(L) bytes; above 48 KB the launchers opt in to the device's larger limit).
constexpr int64_t kPerturbedTopkMaxLength = 1920;
size_t perturbed_topk_shared_bytes(int64_t length);

// scores (batch, length) float64; counts (batch, k, length) int32, zeroed by the caller, receives
// the number of samples in which item l is the i-th kept item. Samples split over `chunks` blocks.
cudaError_t launch_perturbed_topk_forward(const double* scores, int32_t* counts, int64_t batch, int64_t length, int64_t k,
                                   int64_t num_samples, double sigma, uint64_t seed, int64_t chunks,
                                   cudaStream_t stream);

// grad (batch, k, length) float64; partial (batch, chunks, length) float64 receives per chunk
// sum_s <G, Y_s> Z_s (the caller sums the chunks and scales by 1 / (n sigma)).
cudaError_t launch_perturbed_topk_backward(const double* scores, const double* grad, double* partial, int64_t batch,
                                    int64_t length, int64_t k, int64_t num_samples, double sigma, uint64_t seed,
                                    int64_t chunks, cudaStream_t stream);

// Test hook: out (batch, samples, length) float64 noise of `stream`; kind 0 uniform, 1 normal, 2 gumbel.
cudaError_t launch_philox_noise(double* out, int64_t batch, int64_t samples, int64_t length, uint32_t stream, int kind,
                         uint64_t seed, cudaStream_t cuda_stream);

}  // namespace vidsel::cuda
