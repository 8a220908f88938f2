// Launchers of the compressed-domain patch embedding's gather / scatter (MM-ViT §3.2 eq. 1–4). Torch-free.
// The GEMMs run in cuBLAS through ATen (csrc/cuda/compressed_patch_embed_binding.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace vidsel::cuda {

// How one modality's patches are read (mirror of vidsel::compressed_embed::PatchGeometry): frames of
// `channels` × in_h × in_w elements, each covering scale×scale pixels; a patch is cells×cells cells of
// `cell` pixels; column k = (channel, cell row, cell column).
struct PatchLayout {
  int64_t channels, in_h, in_w, scale, cell, cells, patch, grid_w, tokens;
};

// cols (frames * tokens, channels * cells^2) <- patch columns of `frames` consecutive frames at `x`.
cudaError_t launch_patch_im2col(const void* x, void* cols, ScalarKind kind, PatchLayout layout, int64_t frames,
                         cudaStream_t stream);

// grad (frames, channels, in_h, in_w) in float32 (float64 for kFloat64) += the adjoint of the gather
// applied to cols: each source element sums the cells that read it in a fixed order (no atomics).
cudaError_t launch_patch_col2im_add(const void* cols, void* grad, ScalarKind kind, PatchLayout layout, int64_t frames,
                             cudaStream_t stream);

}  // namespace vidsel::cuda
