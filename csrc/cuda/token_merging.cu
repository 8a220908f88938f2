// CUDA kernels for bipartite matching and merge/unmerge rows (TESTA §3.2.2; ToMe). Torch-free.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "cuda/token_merging.h"

namespace vidsel::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;  // one warp per A row

template <typename T>
__device__ T neg_infinity();
template <>
__device__ float neg_infinity<float>() { return -FLT_MAX * 2.0f; }
template <>
__device__ double neg_infinity<double>() { return -DBL_MAX * 2.0; }

// One warp per A row: lanes stride over B rows, then a warp reduction keeps (max, lowest index).
template <typename T>
__global__ void best_partner_kernel(const T* a, const T* b, T* best, int64_t* best_index, int64_t na,
                                    int64_t nb, int64_t c) {
  const int64_t batch = blockIdx.y;
  const int64_t row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= na) return;
  const T* a_row = a + (batch * na + row) * c;
  const T* b_rows = b + batch * nb * c;
  T lane_best = neg_infinity<T>();
  int64_t lane_index = nb;
  for (int64_t j = lane; j < nb; j += kWarp) {
    T dot = 0;
    for (int64_t k = 0; k < c; ++k) dot += a_row[k] * b_rows[j * c + k];
    if (dot > lane_best) {  // strict: j grows within a lane, so the first maximum stays
      lane_best = dot;
      lane_index = j;
    }
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const T other = __shfl_down_sync(0xffffffffu, lane_best, offset);
    const int64_t other_index = __shfl_down_sync(0xffffffffu, lane_index, offset);
    if (other > lane_best || (other == lane_best && other_index < lane_index)) {
      lane_best = other;
      lane_index = other_index;
    }
  }
  if (lane == 0) {
    best[batch * na + row] = lane_best;
    best_index[batch * na + row] = lane_index;
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

// Grid: (rows of x, feature blocks). Each thread adds one feature of one row into its destination.
template <typename T, typename Acc>
__global__ void scatter_rows_kernel(const T* x, const int64_t* dst, const Acc* weight, Acc* acc, int64_t n,
                                    int64_t d, int64_t n_out) {
  const int64_t row = blockIdx.x;  // b * n + i
  const int64_t feature = blockIdx.y * blockDim.x + threadIdx.x;
  if (feature >= d) return;
  const int64_t b = row / n;
  const Acc w = weight ? weight[row] : Acc(1);
  atomicAdd(acc + (b * n_out + dst[row]) * d + feature, w * load_acc<T, Acc>(x + row * d + feature));
}

template <typename T, typename Acc>
__global__ void gather_rows_kernel(const T* y, const int64_t* dst, const Acc* weight, T* out, int64_t m,
                                   int64_t n, int64_t d) {
  const int64_t row = blockIdx.x;
  const int64_t feature = blockIdx.y * blockDim.x + threadIdx.x;
  if (feature >= d) return;
  const int64_t b = row / n;
  const Acc w = weight ? weight[row] : Acc(1);
  const Acc v = w * load_acc<T, Acc>(y + (b * m + dst[row]) * d + feature);
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

void launch_best_partner(const void* a, const void* b, void* best, int64_t* best_index, int64_t batch,
                         int64_t na, int64_t nb, int64_t c, bool is_double, cudaStream_t stream) {
  if (batch == 0 || na == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(na, kRowsPerBlock)), static_cast<unsigned>(batch));
  const int threads = kRowsPerBlock * kWarp;
  if (is_double) {
    best_partner_kernel<double><<<grid, threads, 0, stream>>>(static_cast<const double*>(a),
        static_cast<const double*>(b), static_cast<double*>(best), best_index, na, nb, c);
  } else {
    best_partner_kernel<float><<<grid, threads, 0, stream>>>(static_cast<const float*>(a),
        static_cast<const float*>(b), static_cast<float*>(best), best_index, na, nb, c);
  }
}

void launch_scatter_rows(const void* x, ScalarKind kind, const int64_t* dst, const void* weight, void* acc,
                         int64_t batch, int64_t n, int64_t d, int64_t n_out, cudaStream_t stream) {
  if (batch * n == 0 || d == 0) return;
  const dim3 grid(static_cast<unsigned>(batch * n), static_cast<unsigned>(ceil_div(d, kFeatureThreads)));
  dispatch_kind(kind, [&]<typename T, typename Acc>() {
    scatter_rows_kernel<T, Acc><<<grid, kFeatureThreads, 0, stream>>>(
        static_cast<const T*>(x), dst, static_cast<const Acc*>(weight), static_cast<Acc*>(acc), n, d, n_out);
  });
}

void launch_gather_rows(const void* y, ScalarKind kind, const int64_t* dst, const void* weight, void* out,
                        int64_t batch, int64_t m, int64_t n, int64_t d, cudaStream_t stream) {
  if (batch * n == 0 || d == 0) return;
  const dim3 grid(static_cast<unsigned>(batch * n), static_cast<unsigned>(ceil_div(d, kFeatureThreads)));
  dispatch_kind(kind, [&]<typename T, typename Acc>() {
    gather_rows_kernel<T, Acc><<<grid, kFeatureThreads, 0, stream>>>(
        static_cast<const T*>(y), dst, static_cast<const Acc*>(weight), static_cast<T*>(out), m, n, d);
  });
}

}  // namespace vidsel::cuda
