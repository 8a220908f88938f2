// CUDA gather / scatter of the compressed-domain patch embedding (MM-ViT §3.2 eq. 1–4). Torch-free.
// One thread per element of the (rows, K) patch matrix; motion is read from its block grid.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/compressed_patch_embed.h"

namespace vidsel::cuda {
namespace {

constexpr int kThreads = 256;

__device__ inline int64_t source_offset(const PatchLayout& g, int64_t row, int64_t k) {
  const int64_t frame = row / g.tokens, n = row % g.tokens;
  const int64_t ph = n / g.grid_w, pw = n % g.grid_w;
  const int64_t ch = k / (g.cells * g.cells), ci = (k / g.cells) % g.cells, cj = k % g.cells;
  const int64_t y = (ph * g.patch + ci * g.cell) / g.scale, x = (pw * g.patch + cj * g.cell) / g.scale;
  return ((frame * g.channels + ch) * g.in_h + y) * g.in_w + x;
}

__device__ inline float to_acc(float v) { return v; }
__device__ inline double to_acc(double v) { return v; }
__device__ inline float to_acc(__half v) { return __half2float(v); }
__device__ inline float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void im2col_kernel(const T* x, T* cols, PatchLayout g, int64_t total) {
  const int64_t depth = g.channels * g.cells * g.cells;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    cols[i] = x[source_offset(g, i / depth, i % depth)];
  }
}

template <typename T, typename Acc>
__global__ void col2im_add_kernel(const T* cols, Acc* grad, PatchLayout g, int64_t total) {
  const int64_t depth = g.channels * g.cells * g.cells;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    atomicAdd(grad + source_offset(g, i / depth, i % depth), to_acc(cols[i]));
  }
}

int64_t total_elements(const PatchLayout& g, int64_t frames) {
  return frames * g.tokens * g.channels * g.cells * g.cells;
}

unsigned blocks_for(int64_t total) {
  const int64_t blocks = ceil_div(total, kThreads);
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

template <typename T>
void im2col(const void* x, void* cols, PatchLayout g, int64_t frames, cudaStream_t stream) {
  const int64_t total = total_elements(g, frames);
  if (total == 0) return;
  im2col_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(cols), g,
                                                                total);
}

template <typename T, typename Acc>
void col2im(const void* cols, void* grad, PatchLayout g, int64_t frames, cudaStream_t stream) {
  const int64_t total = total_elements(g, frames);
  if (total == 0) return;
  col2im_add_kernel<T, Acc><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(cols),
                                                                         static_cast<Acc*>(grad), g, total);
}

}  // namespace

void launch_patch_im2col(const void* x, void* cols, ScalarKind kind, PatchLayout layout, int64_t frames,
                         cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat32: im2col<float>(x, cols, layout, frames, stream); break;
    case ScalarKind::kFloat64: im2col<double>(x, cols, layout, frames, stream); break;
    case ScalarKind::kFloat16: im2col<__half>(x, cols, layout, frames, stream); break;
    case ScalarKind::kBFloat16: im2col<__nv_bfloat16>(x, cols, layout, frames, stream); break;
  }
}

void launch_patch_col2im_add(const void* cols, void* grad, ScalarKind kind, PatchLayout layout, int64_t frames,
                             cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat32: col2im<float, float>(cols, grad, layout, frames, stream); break;
    case ScalarKind::kFloat64: col2im<double, double>(cols, grad, layout, frames, stream); break;
    case ScalarKind::kFloat16: col2im<__half, float>(cols, grad, layout, frames, stream); break;
    case ScalarKind::kBFloat16: col2im<__nv_bfloat16, float>(cols, grad, layout, frames, stream); break;
  }
}

}  // namespace vidsel::cuda
