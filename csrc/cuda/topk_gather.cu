// CUDA kernels of the hard top-k gather (STTS eq. 4 at inference; MIST eq. 5 Top_j). Torch-free.
//
// rank[i] = #{j : j ranks ahead of i} over shared-memory tiles (ranks_ahead: larger first, NaN last,
// ties to the lower position), a permutation of 0..n-1, so exactly k items have rank < k.
// Placement is one thread per group walking its ranks (n is a few hundred tokens or frames).
#include "cuda/device_check.cuh"
#include "cuda/topk_gather.h"

namespace vidsel::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rank_kernel(const double* scores, int32_t* rank, int64_t groups, int64_t n) {
  __shared__ double tile[kThreads];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t group = blockIdx.y; group < groups; group += gridDim.y) {
    const double* s = scores + group * n;
    const double mine = i < n ? s[i] : 0.0;
    int32_t count = 0;
    for (int64_t j0 = 0; j0 < n; j0 += kThreads) {
      const int64_t j_load = j0 + threadIdx.x;
      tile[threadIdx.x] = j_load < n ? s[j_load] : 0.0;
      __syncthreads();
      const int64_t width = n - j0 < kThreads ? n - j0 : kThreads;
      for (int64_t t = 0; t < width; ++t) count += ranks_ahead(tile[t], j0 + t, mine, i) ? 1 : 0;
      __syncthreads();
    }
    if (i < n) rank[group * n + i] = count;
  }
}

__global__ void place_kernel(const int32_t* rank, int64_t* index, int64_t groups, int64_t n, int64_t k,
                             bool sorted_by_index) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group >= groups) return;
  int64_t placed = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t r = rank[group * n + i];
    if (r < k) index[group * k + (sorted_by_index ? placed++ : r)] = i;
  }
}

// One block per (selected row, group); 16-bit words (every supported dtype is 2, 4 or 8 bytes).
__global__ void copy_rows_kernel(const uint16_t* src, const int64_t* index, uint16_t* dst, int64_t groups,
                                 int64_t n, int64_t k, int64_t row_words, bool gather) {
  const int64_t j = blockIdx.x;
  for (int64_t group = blockIdx.y; group < groups; group += gridDim.y) {
    const int64_t position = index[group * k + j];
    VIDSEL_DEVICE_CHECK(position >= 0 && position < n);
    const int64_t src_row = gather ? group * n + position : group * k + j;
    const int64_t dst_row = gather ? group * k + j : group * n + position;
    for (int64_t c = threadIdx.x; c < row_words; c += blockDim.x) {
      dst[dst_row * row_words + c] = src[src_row * row_words + c];
    }
  }
}

cudaError_t launch_copy(const void* src, const int64_t* index, void* dst, int64_t groups, int64_t n, int64_t k,
                        int64_t row_bytes, bool gather, cudaStream_t stream) {
  if (groups == 0 || k == 0 || row_bytes == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(k), grid_y_for(groups));
  copy_rows_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint16_t*>(src), index,
                                                  static_cast<uint16_t*>(dst), groups, n, k, row_bytes / 2, gather);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_topk_indices(const double* scores, int32_t* rank, int64_t* index, int64_t groups, int64_t n,
                                int64_t k, bool sorted_by_index, cudaStream_t stream) {
  if (groups == 0 || n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(ceil_div(n, kThreads)), grid_y_for(groups));
  rank_kernel<<<grid, kThreads, 0, stream>>>(scores, rank, groups, n);
  cudaError_t status = cudaGetLastError();
  place_kernel<<<static_cast<unsigned>(ceil_div(groups, kThreads)), kThreads, 0, stream>>>(rank, index, groups, n, k,
                                                                                          sorted_by_index);
  return first_error(status, cudaGetLastError());
}

cudaError_t launch_gather_selected_rows(const void* src, const int64_t* index, void* dst, int64_t groups, int64_t n,
                                        int64_t k, int64_t row_bytes, cudaStream_t stream) {
  return launch_copy(src, index, dst, groups, n, k, row_bytes, true, stream);
}

cudaError_t launch_scatter_selected_rows(const void* src, const int64_t* index, void* dst, int64_t groups, int64_t n,
                                         int64_t k, int64_t row_bytes, cudaStream_t stream) {
  const cudaError_t status = cudaMemsetAsync(dst, 0, static_cast<size_t>(groups * n * row_bytes), stream);
  if (status != cudaSuccess) return status;
  return launch_copy(src, index, dst, groups, n, k, row_bytes, false, stream);
}

}  // namespace vidsel::cuda
