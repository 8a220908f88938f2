// Launchers for bipartite matching and the merge row primitives (TESTA §3.2.2). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace vidsel::cuda {

// a (batch, na, c), b (batch, nb, c): rows already L2-normalised, float32 or float64 (`is_double`).
// Writes best (batch, na) in the same type and best_index (batch, na) int64: the first argmax over b,
// NaN similarities ranking after every number (ranks_ahead), so best_index is in [0, nb).
cudaError_t launch_best_partner(const void* a, const void* b, void* best, int64_t* best_index, int64_t batch,
                         int64_t na, int64_t nb, int64_t c, bool is_double, cudaStream_t stream);

// acc (batch, n_out, d) float32 (float64 when x is float64), fully written:
// acc[b, o] = sum over i with dst[b, i] == o, ascending i, of w[b, i] * x[b, i]; weight may be null (ones).
// order (batch, n): a stable argsort of dst per image; offsets (batch, n_out + 1): where each o's run
// starts in the sorted order (searchsorted), spanning [0, n] when every dst lies in [0, n_out).
cudaError_t launch_scatter_rows(const void* x, ScalarKind kind, const int64_t* order, const int64_t* offsets,
                                const void* weight, void* acc, int64_t batch, int64_t n, int64_t d, int64_t n_out,
                                cudaStream_t stream);

// out[b, i] = w[b, i] * y[b, dst[b, i]]; weight (float32, float64 for float64 y) may be null;
// dst outside [0, m) stops the kernel with a device-side assert.
cudaError_t launch_gather_rows(const void* y, ScalarKind kind, const int64_t* dst, const void* weight, void* out,
                        int64_t batch, int64_t m, int64_t n, int64_t d, cudaStream_t stream);

}  // namespace vidsel::cuda
