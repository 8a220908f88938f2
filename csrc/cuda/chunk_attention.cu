// Block-causal chunk attention (Mirasol3B §3.3.1, eq. 8): one warp per query row (forward, dQ) or per
// key row (dK, dV). Lane l holds head dimensions l, l + 32, ... in registers; a dot product is a warp
// shuffle reduction. The key loop of a query stops at its chunk end (no masked work is visited), the
// softmax is online, the logsumexp is saved and the backward recomputes the probabilities from it.
#include "cuda/chunk_attention.h"
#include "cuda/common.h"

#include <cmath>

namespace vidsel::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kPerLane = int(kChunkAttentionMaxDim / kWarp);

template <typename T>
__device__ T warp_sum(T value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <typename T>
__device__ T dot_rows(const T* a, const T* b, int64_t dim, int lane) {
  T partial = 0;
  for (int64_t d = lane; d < dim; d += kWarp) partial += a[d] * b[d];
  return warp_sum(partial);
}

template <typename T>
__global__ void chunk_attention_kernel(const T* q, const T* k, const T* v, const T* bias,
                                           const int64_t* key_end, T* out, T* lse, int64_t heads, int64_t lq,
                                           int64_t lk, int64_t dim, T scale, int64_t rows_total) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows_total) return;
  const int64_t bh = row / lq, i = row % lq;
  const T* q_row = q + row * dim;
  const T* bias_row = bias ? bias + (bh / heads) * lk : nullptr;
  T acc[kPerLane];
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0;
  T row_max = -INFINITY, row_sum = 0;
  for (int64_t j = 0; j < key_end[i]; ++j) {
    const T* k_row = k + (bh * lk + j) * dim;
    T s = dot_rows(q_row, k_row, dim, lane) * scale;
    if (bias_row) s += bias_row[j];
    const T new_max = s > row_max ? s : row_max;
    const T shift = new_max == T(-INFINITY) ? T(0) : new_max;
    const T rescale = exp(row_max - shift), p = exp(s - shift);
    row_sum = row_sum * rescale + p;
    row_max = new_max;
    const T* v_row = v + (bh * lk + j) * dim;
    for (int t = 0; t < kPerLane; ++t) {
      const int64_t d = lane + int64_t(t) * kWarp;
      if (d < dim) acc[t] = acc[t] * rescale + p * v_row[d];
    }
  }
  for (int t = 0; t < kPerLane; ++t) {
    const int64_t d = lane + int64_t(t) * kWarp;
    if (d < dim) out[row * dim + d] = acc[t] / row_sum;
  }
  if (lane == 0) lse[row] = row_max + log(row_sum);
}

// dQ_i = scale * sum_j dS_ij k_j with dS_ij = P_ij (dO_i . v_j - delta_i); also stores delta_i = dO_i . O_i.
template <typename T>
__global__ void chunk_attention_dq_kernel(const T* grad_out, const T* q, const T* k, const T* v, const T* out,
                                          const T* lse, const T* bias, const int64_t* key_end, T* grad_q, T* delta,
                                          int64_t heads, int64_t lq, int64_t lk, int64_t dim, T scale,
                                          int64_t rows_total) {
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows_total) return;
  const int64_t bh = row / lq, i = row % lq;
  const T* q_row = q + row * dim;
  const T* do_row = grad_out + row * dim;
  const T* bias_row = bias ? bias + (bh / heads) * lk : nullptr;
  const T row_delta = dot_rows(do_row, out + row * dim, dim, lane);
  T acc[kPerLane];
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0;
  for (int64_t j = 0; j < key_end[i]; ++j) {
    const T* k_row = k + (bh * lk + j) * dim;
    T s = dot_rows(q_row, k_row, dim, lane) * scale;
    if (bias_row) s += bias_row[j];
    const T p = exp(s - lse[row]);
    const T ds = p * (dot_rows(do_row, v + (bh * lk + j) * dim, dim, lane) - row_delta);
    for (int t = 0; t < kPerLane; ++t) {
      const int64_t d = lane + int64_t(t) * kWarp;
      if (d < dim) acc[t] += ds * k_row[d];
    }
  }
  for (int t = 0; t < kPerLane; ++t) {
    const int64_t d = lane + int64_t(t) * kWarp;
    if (d < dim) grad_q[row * dim + d] = acc[t] * scale;
  }
  if (lane == 0) delta[row] = row_delta;
}

// One warp per key j: dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i dS_ij q_i, dbias_j = sum_i dS_ij, over
// the query rows i >= first_row[j] (exactly those whose chunk end lies beyond j).
template <typename T>
__global__ void chunk_attention_dkdv_kernel(const T* grad_out, const T* q, const T* k, const T* v, const T* lse,
                                            const T* delta, const T* bias, const int64_t* first_row, T* grad_k,
                                            T* grad_v, T* grad_bias_heads, int64_t heads, int64_t lq, int64_t lk,
                                            int64_t dim, T scale, int64_t keys_total) {
  const int64_t key = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (key >= keys_total) return;
  const int64_t bh = key / lk, j = key % lk;
  const T* k_row = k + key * dim;
  const T* v_row = v + key * dim;
  const T bias_j = bias ? bias[(bh / heads) * lk + j] : T(0);
  T dk[kPerLane], dv[kPerLane];
  for (int t = 0; t < kPerLane; ++t) dk[t] = dv[t] = 0;
  T dbias = 0;
  for (int64_t i = first_row[j]; i < lq; ++i) {
    const int64_t row = bh * lq + i;
    const T* q_row = q + row * dim;
    const T* do_row = grad_out + row * dim;
    const T p = exp(dot_rows(q_row, k_row, dim, lane) * scale + bias_j - lse[row]);
    const T ds = p * (dot_rows(do_row, v_row, dim, lane) - delta[row]);
    dbias += ds;
    for (int t = 0; t < kPerLane; ++t) {
      const int64_t d = lane + int64_t(t) * kWarp;
      if (d < dim) {
        dv[t] += p * do_row[d];
        dk[t] += ds * q_row[d];
      }
    }
  }
  for (int t = 0; t < kPerLane; ++t) {
    const int64_t d = lane + int64_t(t) * kWarp;
    if (d < dim) {
      grad_k[key * dim + d] = dk[t] * scale;
      grad_v[key * dim + d] = dv[t];
    }
  }
  if (grad_bias_heads && lane == 0) grad_bias_heads[key] = dbias;
}

unsigned blocks_for(int64_t warps) { return unsigned(ceil_div(warps, kWarpsPerBlock)); }

template <typename T>
void forward(const void* q, const void* k, const void* v, const void* bias, const int64_t* key_end, void* out,
             void* lse, int64_t batch, int64_t heads, int64_t lq, int64_t lk, int64_t dim, double scale,
             cudaStream_t stream) {
  const int64_t rows = batch * heads * lq;
  if (rows == 0) return;
  chunk_attention_kernel<T><<<blocks_for(rows), kWarpsPerBlock * kWarp, 0, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(bias),
      key_end, static_cast<T*>(out), static_cast<T*>(lse), heads, lq, lk, dim, T(scale), rows);
}

template <typename T>
void backward(const void* grad_out, const void* q, const void* k, const void* v, const void* out, const void* lse,
              const void* bias, const int64_t* key_end, const int64_t* first_row, void* grad_q, void* grad_k,
              void* grad_v, void* delta, void* grad_bias_heads, int64_t batch, int64_t heads, int64_t lq,
              int64_t lk, int64_t dim, double scale, cudaStream_t stream) {
  const int64_t rows = batch * heads * lq, keys = batch * heads * lk;
  if (rows > 0) {
    chunk_attention_dq_kernel<T><<<blocks_for(rows), kWarpsPerBlock * kWarp, 0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(q), static_cast<const T*>(k),
        static_cast<const T*>(v), static_cast<const T*>(out), static_cast<const T*>(lse),
        static_cast<const T*>(bias), key_end, static_cast<T*>(grad_q), static_cast<T*>(delta), heads, lq, lk, dim,
        T(scale), rows);
  }
  if (keys > 0) {  // same stream: runs after delta is written
    chunk_attention_dkdv_kernel<T><<<blocks_for(keys), kWarpsPerBlock * kWarp, 0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(q), static_cast<const T*>(k),
        static_cast<const T*>(v), static_cast<const T*>(lse), static_cast<const T*>(delta),
        static_cast<const T*>(bias), first_row, static_cast<T*>(grad_k), static_cast<T*>(grad_v),
        static_cast<T*>(grad_bias_heads), heads, lq, lk, dim, T(scale), keys);
  }
}

}  // namespace

void launch_chunk_attention(const void* q, const void* k, const void* v, const void* key_bias, const int64_t* key_end,
                            void* out, void* lse, int64_t batch, int64_t heads, int64_t lq, int64_t lk, int64_t dim,
                            double scale, bool is_double, cudaStream_t stream) {
  if (is_double) {
    forward<double>(q, k, v, key_bias, key_end, out, lse, batch, heads, lq, lk, dim, scale, stream);
  } else {
    forward<float>(q, k, v, key_bias, key_end, out, lse, batch, heads, lq, lk, dim, scale, stream);
  }
}

void launch_chunk_attention_backward(const void* grad_out, const void* q, const void* k, const void* v,
                                     const void* out, const void* lse, const void* key_bias, const int64_t* key_end,
                                     const int64_t* first_row, void* grad_q, void* grad_k, void* grad_v, void* delta,
                                     void* grad_bias_heads, int64_t batch, int64_t heads, int64_t lq, int64_t lk,
                                     int64_t dim, double scale, bool is_double, cudaStream_t stream) {
  if (is_double) {
    backward<double>(grad_out, q, k, v, out, lse, key_bias, key_end, first_row, grad_q, grad_k, grad_v, delta,
                     grad_bias_heads, batch, heads, lq, lk, dim, scale, stream);
  } else {
    backward<float>(grad_out, q, k, v, out, lse, key_bias, key_end, first_row, grad_q, grad_k, grad_v, delta,
                    grad_bias_heads, batch, heads, lq, lk, dim, scale, stream);
  }
}

}  // namespace vidsel::cuda
