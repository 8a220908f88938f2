// CUDA kernels for bipartite matching and merge/unmerge rows (TESTA §3.2.2; ToMe). Torch-free.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "cuda/device_check.cuh"
#include "cuda/token_merging.h"

namespace vidsel::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;  // one warp per A row

// One warp per A row. For each B row the lanes split the feature dimension (coalesced loads) and a
// butterfly reduction gives every lane the dot product (the same order for every pair, so duplicated
// rows give equal similarities); within `snap` of 1 it counts as 1 (the reference's snap_to_one); the
// running best follows ranks_ahead (larger first, NaN after every number, ties to the lower index),
// so the index is always valid.
template <typename T>
__global__ void best_partner_kernel(const T* a, const T* b, T* best, int64_t* best_index, int64_t batch, int64_t na,
                                    int64_t nb, int64_t c, T snap) {
  const int64_t row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= na) return;
  for (int64_t image = blockIdx.y; image < batch; image += gridDim.y) {
    const T* a_row = a + (image * na + row) * c;
    const T* b_rows = b + image * nb * c;
    T best_dot = 0;
    int64_t best_j = -1;
    for (int64_t j = 0; j < nb; ++j) {
      T dot = 0;
      for (int64_t k = lane; k < c; k += kWarp) dot += a_row[k] * b_rows[j * c + k];
      for (int offset = kWarp / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      if (T(1) - dot <= snap) dot = T(1);
      if (best_j < 0 || ranks_ahead(static_cast<double>(dot), j, static_cast<double>(best_dot), best_j)) {
        best_dot = dot;
        best_j = j;
      }
    }
    if (lane == 0) {
      best[image * na + row] = best_dot;
      best_index[image * na + row] = best_j;
    }
  }
}

template <typename T>
__device__ float to_float(T v) { return static_cast<float>(v); }
template <>
__device__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T, typename Acc>
__device__ Acc load_acc(const T* p) { return static_cast<Acc>(to_float(*p)); }
template <>
__device__ double load_acc<double, double>(const double* p) { return *p; }

template <typename T>
__device__ T from_acc(float v) { return static_cast<T>(v); }
template <>
__device__ __half from_acc<__half>(float v) { return __float2half(v); }
template <>
__device__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Grid: (output rows, feature blocks). Output row o of image b sums its sources in ascending source
// order, order[b, offsets[b, o] .. offsets[b, o + 1]) (a stable sort of dst): the same bits every run,
// no atomics. offsets (batch, n_out + 1) must span [0, n]: anything else means a dst out of range.
template <typename T, typename Acc>
__global__ void scatter_rows_kernel(const T* x, const int64_t* order, const int64_t* offsets, const Acc* weight,
                                    Acc* acc, int64_t n, int64_t d, int64_t n_out) {
  const int64_t out_row = blockIdx.x;  // b * n_out + o
  const int64_t feature = blockIdx.y * blockDim.x + threadIdx.x;
  const int64_t b = out_row / n_out, o = out_row % n_out;
  const int64_t* span = offsets + b * (n_out + 1);
  if (o == 0 && feature == 0) VIDSEL_DEVICE_CHECK(span[0] == 0 && span[n_out] == n);
  if (feature >= d) return;
  Acc total = 0;
  for (int64_t s = span[o]; s < span[o + 1]; ++s) {
    const int64_t source = b * n + order[b * n + s];
    const Acc w = weight ? weight[source] : Acc(1);
    total += w * load_acc<T, Acc>(x + source * d + feature);
  }
  acc[out_row * d + feature] = total;
}

template <typename T, typename Acc>
__global__ void gather_rows_kernel(const T* y, const int64_t* dst, const Acc* weight, T* out, int64_t m,
                                   int64_t n, int64_t d) {
  const int64_t row = blockIdx.x;
  const int64_t feature = blockIdx.y * blockDim.x + threadIdx.x;
  if (feature >= d) return;
  const int64_t b = row / n, target = dst[row];
  VIDSEL_DEVICE_CHECK(target >= 0 && target < m);
  const Acc w = weight ? weight[row] : Acc(1);
  const Acc v = w * load_acc<T, Acc>(y + (b * m + target) * d + feature);
  if constexpr (sizeof(Acc) == sizeof(double)) {
    out[row * d + feature] = v;
  } else {
    out[row * d + feature] = from_acc<T>(v);
  }
}

constexpr int kFeatureThreads = 128;

// Calls launch.template operator()<T, Acc>() for the element type `kind` (Acc: float, double for double).
template <class Launch>
void dispatch_kind(ScalarKind kind, Launch&& launch) {
  switch (kind) {
    case ScalarKind::kFloat64: return launch.template operator()<double, double>();
    case ScalarKind::kFloat32: return launch.template operator()<float, float>();
    case ScalarKind::kFloat16: return launch.template operator()<__half, float>();
    case ScalarKind::kBFloat16: return launch.template operator()<__nv_bfloat16, float>();
  }
}

}  // namespace

cudaError_t launch_best_partner(const void* a, const void* b, void* best, int64_t* best_index, int64_t batch,
                                int64_t na, int64_t nb, int64_t c, bool is_double, cudaStream_t stream) {
  if (batch == 0 || na == 0 || nb == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(ceil_div(na, kRowsPerBlock)), grid_y_for(batch));
  const int threads = kRowsPerBlock * kWarp;
  const double band = 8.0 * static_cast<double>(c + 4);  // times the unit roundoff of the accumulator
  if (is_double) {
    best_partner_kernel<double><<<grid, threads, 0, stream>>>(static_cast<const double*>(a),
        static_cast<const double*>(b), static_cast<double*>(best), best_index, batch, na, nb, c, band * 0x1p-53);
  } else {
    best_partner_kernel<float><<<grid, threads, 0, stream>>>(static_cast<const float*>(a),
        static_cast<const float*>(b), static_cast<float*>(best), best_index, batch, na, nb, c,
        static_cast<float>(band * 0x1p-24));
  }
  return cudaGetLastError();
}

cudaError_t launch_scatter_rows(const void* x, ScalarKind kind, const int64_t* order, const int64_t* offsets,
                                const void* weight, void* acc, int64_t batch, int64_t n, int64_t d, int64_t n_out,
                                cudaStream_t stream) {
  if (batch * n_out == 0 || d == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(batch * n_out), static_cast<unsigned>(ceil_div(d, kFeatureThreads)));
  dispatch_kind(kind, [&]<typename T, typename Acc>() {
    scatter_rows_kernel<T, Acc><<<grid, kFeatureThreads, 0, stream>>>(
        static_cast<const T*>(x), order, offsets, static_cast<const Acc*>(weight), static_cast<Acc*>(acc), n, d,
        n_out);
  });
  return cudaGetLastError();
}

cudaError_t launch_gather_rows(const void* y, ScalarKind kind, const int64_t* dst, const void* weight, void* out,
                               int64_t batch, int64_t m, int64_t n, int64_t d, cudaStream_t stream) {
  if (batch * n == 0 || d == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(batch * n), static_cast<unsigned>(ceil_div(d, kFeatureThreads)));
  dispatch_kind(kind, [&]<typename T, typename Acc>() {
    gather_rows_kernel<T, Acc><<<grid, kFeatureThreads, 0, stream>>>(
        static_cast<const T*>(y), dst, static_cast<const Acc*>(weight), static_cast<T*>(out), m, n, d);
  });
  return cudaGetLastError();
}

}  // namespace vidsel::cuda
