// Launchers for the hard top-k gather (STTS eq. 4 at inference; MIST eq. 5 Top_j). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace vidsel::cuda {

// scores (groups, n) float64 (the binding widens every float type: exact, order-preserving);
// rank (groups, n) int32 scratch. Writes index (groups, k): the k largest, ties to the lower
// position, NaN after every number (ranks_ahead), ascending positions when sorted_by_index else by rank.
cudaError_t launch_topk_indices(const double* scores, int32_t* rank, int64_t* index, int64_t groups, int64_t n, int64_t k,
                         bool sorted_by_index, cudaStream_t stream);

// Row copies of row_bytes bytes (a multiple of 2). gather: dst[g, j] = src[g, index[g, j]] with src
// (groups, n, .) and dst (groups, k, .); scatter: dst[g, index[g, j]] = src[g, j] (dst zeroed here first).
// index values outside [0, n) stop the kernel with a device-side assert.
cudaError_t launch_gather_selected_rows(const void* src, const int64_t* index, void* dst, int64_t groups, int64_t n,
                                 int64_t k, int64_t row_bytes, cudaStream_t stream);
cudaError_t launch_scatter_selected_rows(const void* src, const int64_t* index, void* dst, int64_t groups, int64_t n,
                                  int64_t k, int64_t row_bytes, cudaStream_t stream);

}  // namespace vidsel::cuda
