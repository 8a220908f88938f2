// CUDA kernels of anchor-based spatial selection (STTS §3.3). Torch-free.
//
//   anchor scores    one thread per (frame, anchor): the window summed directly in float64 (a
//                    summed-area table would lose small scores next to huge ones, e.g. finfo.min masks)
//   scores backward  one thread per score: grad / (h w) of the anchors covering it
//   anchor gather    one block per output token, threads over D: sum_g w_g x[window g]
//   gather backward  grad_x: one block per input token over its covering anchors;
//                    grad_w: one block per (anchor, frame), block reduction of <grad, window>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/anchor_select.h"

namespace vidsel::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A, typename T> __device__ A load_as(const T* p) { return static_cast<A>(*p); }
template <> __device__ float load_as<float, __half>(const __half* p) { return __half2float(*p); }
template <> __device__ float load_as<float, __nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <> __device__ double load_as<double, __half>(const __half* p) { return __half2float(*p); }
template <> __device__ double load_as<double, __nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T, typename A> __device__ void store_from(T* p, A v) { *p = static_cast<T>(v); }
template <> __device__ void store_from<__half, float>(__half* p, float v) { *p = __float2half(v); }
template <> __device__ void store_from<__nv_bfloat16, float>(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
template <> __device__ void store_from<__half, double>(__half* p, double v) { *p = __double2half(v); }
template <> __device__ void store_from<__nv_bfloat16, double>(__nv_bfloat16* p, double v) {
  *p = __float2bfloat16(static_cast<float>(v));
}

__device__ int64_t anchor_top(const AnchorGeometry& g, int64_t a) { return (a / g.cols) * g.stride_h; }
__device__ int64_t anchor_left(const AnchorGeometry& g, int64_t a) { return (a % g.cols) * g.stride_w; }

// Calls visit(anchor, top, left) for every anchor whose window covers pixel (p, q).
template <typename Visit>
__device__ void for_covering_anchors(const AnchorGeometry& g, int64_t p, int64_t q, Visit visit) {
  const int64_t gy_hi = min(p / g.stride_h, g.rows - 1), gx_hi = min(q / g.stride_w, g.cols - 1);
  for (int64_t gy = gy_hi; gy >= 0 && gy * g.stride_h + g.anchor_h > p; --gy) {
    for (int64_t gx = gx_hi; gx >= 0 && gx * g.stride_w + g.anchor_w > q; --gx) {
      visit(gy * g.cols + gx, gy * g.stride_h, gx * g.stride_w);
    }
  }
}

template <typename T>
__global__ void anchor_scores_kernel(const T* scores, T* out, int64_t frames, AnchorGeometry g) {
  const int64_t anchors = g.rows * g.cols, total = frames * anchors;
  const double area = static_cast<double>(g.anchor_h * g.anchor_w);
  for (int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; item < total;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t frame = item / anchors, a = item % anchors;
    const T* window = scores + (frame * g.height + anchor_top(g, a)) * g.width + anchor_left(g, a);
    double sum = 0.0;
    for (int64_t i = 0; i < g.anchor_h; ++i) {
      for (int64_t j = 0; j < g.anchor_w; ++j) sum += load_as<double>(window + i * g.width + j);
    }
    store_from(out + item, sum / area);
  }
}

template <typename T>
__global__ void anchor_scores_backward_kernel(const T* grad, T* out, int64_t frames, AnchorGeometry g) {
  const int64_t pixels = frames * g.height * g.width;
  for (int64_t pixel = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; pixel < pixels;
       pixel += int64_t(gridDim.x) * blockDim.x) {
    const int64_t frame = pixel / (g.height * g.width), p = (pixel / g.width) % g.height, q = pixel % g.width;
    double acc = 0.0;
    for_covering_anchors(g, p, q, [&](int64_t a, int64_t, int64_t) {
      acc += load_as<double>(grad + frame * g.rows * g.cols + a);
    });
    store_from(out + pixel, acc / static_cast<double>(g.anchor_h * g.anchor_w));
  }
}

template <typename T>
__global__ void anchor_gather_kernel(const T* x, const typename Acc<T>::type* weights, T* out, int64_t dim,
                                     AnchorGeometry g) {
  using A = typename Acc<T>::type;
  const int64_t row = blockIdx.x;  // (frame, i, j) of the output window
  const int64_t window = g.anchor_h * g.anchor_w, frame = row / window;
  const int64_t i = (row % window) / g.anchor_w, j = row % g.anchor_w, anchors = g.rows * g.cols;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    A acc = 0;
    for (int64_t a = 0; a < anchors; ++a) {
      const A weight = weights[frame * anchors + a];
      if (weight == A(0)) continue;
      const int64_t src = (frame * g.height + anchor_top(g, a) + i) * g.width + anchor_left(g, a) + j;
      acc += weight * load_as<A>(x + src * dim + c);
    }
    store_from(out + row * dim + c, acc);
  }
}

template <typename T>
__global__ void anchor_grad_x_kernel(const T* grad, const typename Acc<T>::type* weights, T* grad_x, int64_t dim,
                                     AnchorGeometry g) {
  using A = typename Acc<T>::type;
  const int64_t row = blockIdx.x;  // (frame, p, q) of the input
  const int64_t frame = row / (g.height * g.width), p = (row / g.width) % g.height, q = row % g.width;
  const int64_t anchors = g.rows * g.cols;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    A acc = 0;
    for_covering_anchors(g, p, q, [&](int64_t a, int64_t top, int64_t left) {
      const A weight = weights[frame * anchors + a];
      const int64_t src = (frame * g.anchor_h + p - top) * g.anchor_w + q - left;
      acc += weight * load_as<A>(grad + src * dim + c);
    });
    store_from(grad_x + row * dim + c, acc);
  }
}

// <grad window, x window> of anchor blockIdx.x in `frame`: a fixed-order block reduction (deterministic).
template <typename T>
__device__ void anchor_grad_w_block(const T* grad, const T* x, double* grad_w, int64_t frame, int64_t dim,
                                    const AnchorGeometry& g) {
  using A = typename Acc<T>::type;
  __shared__ double partial[kThreads];
  const int64_t a = blockIdx.x, span = g.anchor_w * dim;
  const int64_t top = anchor_top(g, a), left = anchor_left(g, a);
  double acc = 0.0;
  for (int64_t i = 0; i < g.anchor_h; ++i) {
    const T* x_row = x + ((frame * g.height + top + i) * g.width + left) * dim;
    const T* g_row = grad + (frame * g.anchor_h + i) * span;
    A row_acc = 0;
    for (int64_t c = threadIdx.x; c < span; c += blockDim.x) row_acc += load_as<A>(g_row + c) * load_as<A>(x_row + c);
    acc += static_cast<double>(row_acc);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int offset = kThreads / 2; offset > 0; offset /= 2) {
    if (threadIdx.x < offset) partial[threadIdx.x] += partial[threadIdx.x + offset];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_w[frame * g.rows * g.cols + a] = partial[0];
  __syncthreads();
}

template <typename T>
__global__ void anchor_grad_w_kernel(const T* grad, const T* x, double* grad_w, int64_t frames, int64_t dim,
                                     AnchorGeometry g) {
  for (int64_t frame = blockIdx.y; frame < frames; frame += gridDim.y) anchor_grad_w_block(grad, x, grad_w, frame, dim, g);
}

template <typename Fn>
void dispatch(ScalarKind kind, Fn fn) {
  switch (kind) {
    case ScalarKind::kFloat32: fn(float{}); break;
    case ScalarKind::kFloat64: fn(double{}); break;
    case ScalarKind::kFloat16: fn(__half{}); break;
    case ScalarKind::kBFloat16: fn(__nv_bfloat16{}); break;
  }
}

}  // namespace

cudaError_t launch_anchor_scores(const void* scores, ScalarKind kind, void* out, int64_t frames,
                                 const AnchorGeometry& geometry, cudaStream_t stream) {
  const int64_t total = frames * geometry.rows * geometry.cols;
  if (total == 0) return cudaSuccess;
  dispatch(kind, [&](auto tag) {
    using T = decltype(tag);
    anchor_scores_kernel<T><<<grid_x_for(ceil_div(total, kThreads)), kThreads, 0, stream>>>(
        static_cast<const T*>(scores), static_cast<T*>(out), frames, geometry);
  });
  return cudaGetLastError();
}

cudaError_t launch_anchor_scores_backward(const void* grad, ScalarKind kind, void* out, int64_t frames,
                                          const AnchorGeometry& geometry, cudaStream_t stream) {
  const int64_t pixels = frames * geometry.height * geometry.width;
  if (pixels == 0) return cudaSuccess;
  dispatch(kind, [&](auto tag) {
    using T = decltype(tag);
    anchor_scores_backward_kernel<T><<<grid_x_for(ceil_div(pixels, kThreads)), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<T*>(out), frames, geometry);
  });
  return cudaGetLastError();
}

cudaError_t launch_anchor_gather(const void* x, ScalarKind kind, const void* weights, void* out, int64_t frames,
                                 int64_t dim, const AnchorGeometry& geometry, cudaStream_t stream) {
  const int64_t rows = frames * geometry.anchor_h * geometry.anchor_w;
  if (rows == 0 || dim == 0) return cudaSuccess;
  dispatch(kind, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    anchor_gather_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const A*>(weights), static_cast<T*>(out), dim, geometry);
  });
  return cudaGetLastError();
}

cudaError_t launch_anchor_gather_backward(const void* grad, const void* x, ScalarKind kind, const void* weights,
                                          void* grad_x, double* grad_weights, int64_t frames, int64_t dim,
                                          const AnchorGeometry& geometry, cudaStream_t stream) {
  if (frames == 0) return cudaSuccess;
  cudaError_t status = cudaSuccess;
  dispatch(kind, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    if (grad_x != nullptr && dim > 0) {
      const int64_t rows = frames * geometry.height * geometry.width;
      anchor_grad_x_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
          static_cast<const T*>(grad), static_cast<const A*>(weights), static_cast<T*>(grad_x), dim, geometry);
      status = first_error(status, cudaGetLastError());
    }
    if (grad_weights != nullptr) {
      const dim3 grid(static_cast<unsigned>(geometry.rows * geometry.cols), grid_y_for(frames));
      anchor_grad_w_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(grad), static_cast<const T*>(x),
                                                             grad_weights, frames, dim, geometry);
      status = first_error(status, cudaGetLastError());
    }
  });
  return status;
}

}  // namespace vidsel::cuda
