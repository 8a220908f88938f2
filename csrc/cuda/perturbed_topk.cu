// Perturbed-maximum top-k (STTS §3.2 eq. 7-8; Berthet et al. 2020), CUDA kernels. Torch-free.
//
// One block per (row, chunk of samples). Per sample the block draws Z_s into shared memory
// (philox.cuh), ranks every item against all others (ranks_ahead: ties to the lower position, NaN
// last), marks the k kept items and numbers them in input order; forward adds 1 to counts[b, slot, l]
// (integer atomics: exact), backward reduces g_s = <G, Y_s> with a fixed-order block sum and
// accumulates g_s Z_s, so results are the same bits run to run. Noise is regenerated in backward.
#include "cuda/perturbed_topk.h"
#include "cuda/philox.cuh"

namespace vidsel::cuda {
namespace {

constexpr int kThreads = 256;

struct RowShared {
  double* value;
  double* noise;
  double* acc;
  int* kept;
};

__device__ RowShared carve_shared(int64_t length) {
  extern __shared__ double shared[];
  RowShared s;
  s.value = shared;
  s.noise = shared + length;
  s.acc = shared + 2 * length;
  s.kept = reinterpret_cast<int*>(shared + 3 * length);
  return s;
}

// Fills value/noise of sample s, then kept[l] = slot of l among the kept items (or -1).
__device__ void draw_and_select(const double* scores, RowShared s, int64_t row, int64_t sample, int64_t length,
                                int64_t k, double sigma, uint64_t seed) {
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
    const double z = philox::normal_at(seed, l, static_cast<uint32_t>(sample), static_cast<uint32_t>(row),
                                       philox::kStreamPerturbedTopk);
    s.noise[l] = z;
    s.value[l] = scores[row * length + l] + sigma * z;
  }
  __syncthreads();
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
    const double v = s.value[l];
    int64_t rank = 0;
    for (int64_t m = 0; m < length; ++m) rank += ranks_ahead(s.value[m], m, v, l) ? 1 : 0;
    s.kept[l] = rank < k ? 1 : 0;
  }
  __syncthreads();
  int slots[8];  // the block's items per thread are few (length <= kThreads * 8)
  int count = 0;
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
    int slot = -1;
    if (s.kept[l]) {
      slot = 0;
      for (int64_t m = 0; m < l; ++m) slot += s.kept[m];
    }
    slots[count++] = slot;
  }
  __syncthreads();
  count = 0;
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) s.kept[l] = slots[count++];
  __syncthreads();
}

__global__ void forward_kernel(const double* scores, int32_t* counts, int64_t length, int64_t k, int64_t num_samples,
                               double sigma, uint64_t seed, int64_t chunks) {
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  RowShared s = carve_shared(length);
  for (int64_t sample = chunk; sample < num_samples; sample += chunks) {
    draw_and_select(scores, s, row, sample, length, k, sigma, seed);
    for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
      const int slot = s.kept[l];
      if (slot >= 0) atomicAdd(counts + (row * k + slot) * length + l, 1);
    }
    __syncthreads();
  }
}

// Sum of every thread's `mine` in a fixed order (tree over shared memory): deterministic.
__device__ double block_sum(double mine, double* scratch) {
  scratch[threadIdx.x] = mine;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) scratch[threadIdx.x] += scratch[threadIdx.x + width];
    __syncthreads();
  }
  const double total = scratch[0];
  __syncthreads();
  return total;
}

__global__ void backward_kernel(const double* scores, const double* grad, double* partial, int64_t length, int64_t k,
                                int64_t num_samples, double sigma, uint64_t seed, int64_t chunks) {
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  RowShared s = carve_shared(length);
  __shared__ double scratch[kThreads];
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) s.acc[l] = 0.0;
  for (int64_t sample = chunk; sample < num_samples; sample += chunks) {
    draw_and_select(scores, s, row, sample, length, k, sigma, seed);
    double mine = 0.0;
    for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
      const int slot = s.kept[l];
      if (slot >= 0) mine += grad[(row * k + slot) * length + l];
    }
    const double inner = block_sum(mine, scratch);
    for (int64_t l = threadIdx.x; l < length; l += blockDim.x) s.acc[l] += inner * s.noise[l];
    __syncthreads();
  }
  for (int64_t l = threadIdx.x; l < length; l += blockDim.x) partial[(row * chunks + chunk) * length + l] = s.acc[l];
}

__global__ void noise_kernel(double* out, int64_t samples, int64_t length, uint32_t stream, int kind,
                             uint64_t seed) {
  const int64_t row = blockIdx.x;
  for (int64_t sample = blockIdx.y; sample < samples; sample += gridDim.y) {
    for (int64_t l = threadIdx.x; l < length; l += blockDim.x) {
      const auto s32 = static_cast<uint32_t>(sample), r32 = static_cast<uint32_t>(row);
      const double v = kind == 1   ? philox::normal_at(seed, l, s32, r32, stream)
                       : kind == 2 ? philox::gumbel_at(seed, l, s32, r32, stream)
                                   : philox::uniform_at(seed, l, s32, r32, stream);
      out[(row * samples + sample) * length + l] = v;
    }
  }
}

size_t shared_bytes(int64_t length) { return static_cast<size_t>(length) * (3 * sizeof(double) + sizeof(int)); }

}  // namespace

size_t perturbed_topk_shared_bytes(int64_t length) { return shared_bytes(length); }

cudaError_t launch_perturbed_topk_forward(const double* scores, int32_t* counts, int64_t batch, int64_t length,
                                          int64_t k, int64_t num_samples, double sigma, uint64_t seed, int64_t chunks,
                                          cudaStream_t stream) {
  if (batch == 0 || length == 0) return cudaSuccess;
  const cudaError_t status = allow_dynamic_shared(forward_kernel, shared_bytes(length));
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(chunks));
  forward_kernel<<<grid, kThreads, shared_bytes(length), stream>>>(scores, counts, length, k, num_samples, sigma,
                                                                   seed, chunks);
  return cudaGetLastError();
}

cudaError_t launch_perturbed_topk_backward(const double* scores, const double* grad, double* partial, int64_t batch,
                                           int64_t length, int64_t k, int64_t num_samples, double sigma,
                                           uint64_t seed, int64_t chunks, cudaStream_t stream) {
  if (batch == 0 || length == 0) return cudaSuccess;
  const cudaError_t status = allow_dynamic_shared(backward_kernel, shared_bytes(length));
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(chunks));
  backward_kernel<<<grid, kThreads, shared_bytes(length), stream>>>(scores, grad, partial, length, k, num_samples,
                                                                    sigma, seed, chunks);
  return cudaGetLastError();
}

cudaError_t launch_philox_noise(double* out, int64_t batch, int64_t samples, int64_t length, uint32_t stream, int kind,
                                uint64_t seed, cudaStream_t cuda_stream) {
  if (batch == 0 || samples == 0 || length == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(batch), grid_y_for(samples));
  noise_kernel<<<grid, kThreads, 0, cuda_stream>>>(out, samples, length, stream, kind, seed);
  return cudaGetLastError();
}

}  // namespace vidsel::cuda
