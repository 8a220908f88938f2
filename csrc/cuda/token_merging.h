// Launchers for bipartite matching and the merge row primitives (TESTA §3.2.2). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace vidsel::cuda {

// a (batch, na, c), b (batch, nb, c): rows already L2-normalised, float32 or float64 (`is_double`).
// Writes best (batch, na) in the same type and best_index (batch, na) int64: first argmax over b.
void launch_best_partner(const void* a, const void* b, void* best, int64_t* best_index, int64_t batch,
                         int64_t na, int64_t nb, int64_t c, bool is_double, cudaStream_t stream);

// acc (batch, n_out, d) float32 (float64 when x is float64), zero-initialised by the caller:
// acc[b, dst[b, i]] += w[b, i] * x[b, i]; weight may be null (all ones).
void launch_scatter_rows(const void* x, ScalarKind kind, const int64_t* dst, const void* weight, void* acc,
                         int64_t batch, int64_t n, int64_t d, int64_t n_out, cudaStream_t stream);

// out[b, i] = w[b, i] * y[b, dst[b, i]]; weight (float32, float64 for float64 y) may be null.
void launch_gather_rows(const void* y, ScalarKind kind, const int64_t* dst, const void* weight, void* out,
                        int64_t batch, int64_t m, int64_t n, int64_t d, cudaStream_t stream);

}  // namespace vidsel::cuda
