// Launchers for block-causal chunk attention (Mirasol3B §3.3.1, eq. 8). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vidsel::cuda {

// Largest head dimension the warp-per-row kernels hold in registers (8 values per lane).
constexpr int64_t kChunkAttentionMaxDim = 256;

// All tensors contiguous, float32 (float64 when `is_double`). q, out (B*H, Lq, D); k, v (B*H, Lk, D);
// key_bias (B, Lk) or null; key_end (Lq,) int64: query row i sees keys [0, key_end[i]).
// Writes out and lse (B*H, Lq).
void launch_chunk_attention(const void* q, const void* k, const void* v, const void* key_bias, const int64_t* key_end,
                            void* out, void* lse, int64_t batch, int64_t heads, int64_t lq, int64_t lk, int64_t dim,
                            double scale, bool is_double, cudaStream_t stream);

// grad_out, out like q; lse (B*H, Lq). first_row (Lk,) int64: first query row that sees each key.
// Writes grad_q, grad_k, grad_v, delta (B*H, Lq) scratch, and grad_bias_heads (B*H, Lk) when non-null.
void launch_chunk_attention_backward(const void* grad_out, const void* q, const void* k, const void* v,
                                     const void* out, const void* lse, const void* key_bias, const int64_t* key_end,
                                     const int64_t* first_row, void* grad_q, void* grad_k, void* grad_v, void* delta,
                                     void* grad_bias_heads, int64_t batch, int64_t heads, int64_t lq, int64_t lk,
                                     int64_t dim, double scale, bool is_double, cudaStream_t stream);

}  // namespace vidsel::cuda
