// Gumbel-softmax top-k (MIST §3.2, Appendix A), CUDA kernels. Torch-free.
//
// One block per row walks the k draws in order: perturbed = logits + g_t (philox.cuh), the hard
// pick is the first maximum over the allowed items (ranks_ahead: NaN after every number), the soft row softmax(perturbed / tau) over them;
// without replacement the pick is masked out of later draws. Backward regenerates the soft rows and
// accumulates soft * (G_t - <G_t, soft>) / tau in shared memory.
#include <cfloat>

#include "cuda/gumbel_topk.h"
#include "cuda/philox.cuh"

namespace vidsel::cuda {
namespace {

constexpr int kThreads = 256;

struct DrawShared {
  double* soft;
  double* acc;
  char* allowed;
};

__device__ DrawShared carve_shared(int64_t length) {
  extern __shared__ double shared[];
  return {shared, shared + length, reinterpret_cast<char*>(shared + 2 * length)};
}

// Sum of one value per thread over the block (all threads call it).
__device__ double block_sum(double mine, double* scratch) {
  scratch[threadIdx.x] = mine;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = scratch[0];
  __syncthreads();
  return total;
}

// Draw t of `row`: s.soft <- the soft row; returns the hard pick (first maximum among allowed items).
__device__ int64_t draw(const double* logits, DrawShared s, int64_t row, int64_t t, int64_t length, double tau,
                        uint64_t seed) {
  __shared__ double best_value[kThreads];
  __shared__ int64_t best_index[kThreads];
  __shared__ double scratch[kThreads];
  double my_value = -DBL_MAX * 2.0;
  int64_t my_index = length;
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
    const double p = logits[row * length + l] +
                     philox::gumbel_at(seed, l, static_cast<uint32_t>(t), static_cast<uint32_t>(row),
                                       philox::kStreamGumbelTopk);
    s.soft[l] = p;
    if (s.allowed[l] && (my_index == length || ranks_ahead(p, l, my_value, my_index))) {
      my_value = p;
      my_index = l;
    }
  }
  best_value[threadIdx.x] = my_value;
  best_index[threadIdx.x] = my_index;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const double v = best_value[threadIdx.x + stride];
      const int64_t i = best_index[threadIdx.x + stride];
      const bool better = i < length && (best_index[threadIdx.x] == length ||
                                         ranks_ahead(v, i, best_value[threadIdx.x], best_index[threadIdx.x]));
      if (better) {
        best_value[threadIdx.x] = v;
        best_index[threadIdx.x] = i;
      }
    }
    __syncthreads();
  }
  const double top = best_value[0];
  const int64_t pick = best_index[0];
  double mine = 0.0;
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
    const double e = s.allowed[l] ? exp((s.soft[l] - top) / tau) : 0.0;
    s.soft[l] = e;
    mine += e;
  }
  const double total = block_sum(mine, scratch);
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) s.soft[l] /= total;
  __syncthreads();
  return pick;
}

__device__ void init_allowed(DrawShared s, int64_t length) {
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) s.allowed[l] = 1;
  __syncthreads();
}

__device__ void mask_pick(DrawShared s, int64_t pick, bool replacement) {
  if (!replacement && threadIdx.x == 0) s.allowed[pick] = 0;
  __syncthreads();
}

__global__ void forward_kernel(const double* logits, double* out, int64_t length, int64_t k, double tau, bool hard,
                               bool replacement, uint64_t seed) {
  const int64_t row = blockIdx.x;
  DrawShared s = carve_shared(length);
  init_allowed(s, length);
  for (int64_t t = 0; t < k; ++t) {
    const int64_t pick = draw(logits, s, row, t, length, tau, seed);
    for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
      out[(row * k + t) * length + l] = hard ? (l == pick ? 1.0 : 0.0) : s.soft[l];
    }
    mask_pick(s, pick, replacement);
  }
}

__global__ void backward_kernel(const double* logits, const double* grad, double* out, int64_t length, int64_t k,
                                double tau, bool replacement, uint64_t seed) {
  __shared__ double scratch[kThreads];
  const int64_t row = blockIdx.x;
  DrawShared s = carve_shared(length);
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) s.acc[l] = 0.0;
  init_allowed(s, length);
  for (int64_t t = 0; t < k; ++t) {
    const int64_t pick = draw(logits, s, row, t, length, tau, seed);
    const double* g = grad + (row * k + t) * length;
    double mine = 0.0;
    for (int64_t l = threadIdx.x; l < length; l += blockDim.x) mine += g[l] * s.soft[l];
    const double inner = block_sum(mine, scratch);
    for (int64_t l = threadIdx.x; l < length; l += blockDim.x) s.acc[l] += s.soft[l] * (g[l] - inner) / tau;
    mask_pick(s, pick, replacement);
  }
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) out[row * length + l] = s.acc[l];
}

size_t shared_bytes(int64_t length) { return static_cast<size_t>(length) * (2 * sizeof(double) + 1); }

}  // namespace

cudaError_t launch_gumbel_topk_forward(const double* logits, double* out, int64_t batch, int64_t length, int64_t k,
                                       double tau, bool hard, bool replacement, uint64_t seed, cudaStream_t stream) {
  if (batch == 0 || length == 0 || k == 0) return cudaSuccess;
  const cudaError_t status = allow_dynamic_shared(forward_kernel, shared_bytes(length));
  if (status != cudaSuccess) return status;
  forward_kernel<<<static_cast<unsigned>(batch), kThreads, shared_bytes(length), stream>>>(
      logits, out, length, k, tau, hard, replacement, seed);
  return cudaGetLastError();
}

cudaError_t launch_gumbel_topk_backward(const double* logits, const double* grad, double* out, int64_t batch,
                                        int64_t length, int64_t k, double tau, bool replacement, uint64_t seed,
                                        cudaStream_t stream) {
  if (batch == 0 || length == 0) return cudaSuccess;
  const cudaError_t status = allow_dynamic_shared(backward_kernel, shared_bytes(length));
  if (status != cudaSuccess) return status;
  backward_kernel<<<static_cast<unsigned>(batch), kThreads, shared_bytes(length), stream>>>(
      logits, grad, out, length, k, tau, replacement, seed);
  return cudaGetLastError();
}

}  // namespace vidsel::cuda
