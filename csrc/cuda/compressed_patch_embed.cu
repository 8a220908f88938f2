// CUDA gather / scatter of the compressed-domain patch embedding (MM-ViT §3.2 eq. 1–4). Torch-free.
// im2col: one thread per element of the (rows, K) patch matrix; motion is read from its block grid.
// col2im: one thread per source element, summing the patch elements that read it in a fixed order
// (several cells read the same motion block), so the input gradient is the same bits every run.
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

__device__ inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Calls visit(cell_index, offset) for every (patch index p, cell c) of one axis whose pixel
// p * patch + c * cell falls in source element `source` (pixels [source * scale, (source + 1) * scale)).
template <typename Visit>
__device__ void for_readers(const PatchLayout& g, int64_t source, int64_t patches, Visit visit) {
  const int64_t first_pixel = source * g.scale, end_pixel = first_pixel + g.scale;
  const int64_t p_lo = max(int64_t(0), floor_div(first_pixel - (g.cells - 1) * g.cell, g.patch));
  const int64_t p_hi = min(patches - 1, (end_pixel - 1) / g.patch);
  for (int64_t p = p_lo; p <= p_hi; ++p) {
    const int64_t c_lo = max(int64_t(0), -floor_div(p * g.patch - first_pixel, g.cell));
    const int64_t c_hi = min(g.cells, -floor_div(p * g.patch - end_pixel, g.cell));
    for (int64_t c = c_lo; c < c_hi; ++c) visit(p, c);
  }
}

template <typename T, typename Acc>
__global__ void col2im_add_kernel(const T* cols, Acc* grad, PatchLayout g, int64_t total) {
  const int64_t depth = g.channels * g.cells * g.cells, grid_h = g.tokens / g.grid_w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % g.in_w, y = (i / g.in_w) % g.in_h;
    const int64_t ch = (i / (g.in_w * g.in_h)) % g.channels, frame = i / (g.in_w * g.in_h * g.channels);
    Acc sum = 0;
    for_readers(g, y, grid_h, [&](int64_t ph, int64_t ci) {
      for_readers(g, x, g.grid_w, [&](int64_t pw, int64_t cj) {
        const int64_t row = frame * g.tokens + ph * g.grid_w + pw, k = (ch * g.cells + ci) * g.cells + cj;
        sum += to_acc(cols[row * depth + k]);
      });
    });
    grad[i] += sum;
  }
}

int64_t total_elements(const PatchLayout& g, int64_t frames) {
  return frames * g.tokens * g.channels * g.cells * g.cells;
}

int64_t source_elements(const PatchLayout& g, int64_t frames) { return frames * g.channels * g.in_h * g.in_w; }

unsigned blocks_for(int64_t total) { return grid_x_for(ceil_div(total, kThreads)); }

template <typename T>
cudaError_t im2col(const void* x, void* cols, PatchLayout g, int64_t frames, cudaStream_t stream) {
  const int64_t total = total_elements(g, frames);
  if (total == 0) return cudaSuccess;
  im2col_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(cols), g,
                                                                total);
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t col2im(const void* cols, void* grad, PatchLayout g, int64_t frames, cudaStream_t stream) {
  const int64_t total = source_elements(g, frames);
  if (total == 0 || g.tokens == 0) return cudaSuccess;
  col2im_add_kernel<T, Acc><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(cols),
                                                                         static_cast<Acc*>(grad), g, total);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_patch_im2col(const void* x, void* cols, ScalarKind kind, PatchLayout layout, int64_t frames,
                                cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat32: return im2col<float>(x, cols, layout, frames, stream);
    case ScalarKind::kFloat64: return im2col<double>(x, cols, layout, frames, stream);
    case ScalarKind::kFloat16: return im2col<__half>(x, cols, layout, frames, stream);
    case ScalarKind::kBFloat16: return im2col<__nv_bfloat16>(x, cols, layout, frames, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_patch_col2im_add(const void* cols, void* grad, ScalarKind kind, PatchLayout layout, int64_t frames,
                                    cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat32: return col2im<float, float>(cols, grad, layout, frames, stream);
    case ScalarKind::kFloat64: return col2im<double, double>(cols, grad, layout, frames, stream);
    case ScalarKind::kFloat16: return col2im<__half, float>(cols, grad, layout, frames, stream);
    case ScalarKind::kBFloat16: return col2im<__nv_bfloat16, float>(cols, grad, layout, frames, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vidsel::cuda
