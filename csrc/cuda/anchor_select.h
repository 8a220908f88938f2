// Launchers of anchor-based spatial selection (STTS §3.3). Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace vidsel::cuda {

// Anchor grid of one frame: anchors of (anchor_h, anchor_w) every (stride_h, stride_w), rows x cols.
struct AnchorGeometry {
  int64_t height, width, anchor_h, anchor_w, stride_h, stride_w, rows, cols;
};

// scores (frames, H, W) of `kind` -> out (frames, G) same kind: window means summed in float64.
cudaError_t launch_anchor_scores(const void* scores, ScalarKind kind, void* out, int64_t frames,
                                 const AnchorGeometry& geometry, cudaStream_t stream);

// grad (frames, G) -> out (frames, H, W), both of `kind`.
cudaError_t launch_anchor_scores_backward(const void* grad, ScalarKind kind, void* out, int64_t frames,
                                   const AnchorGeometry& geometry, cudaStream_t stream);

// x (frames, H, W, D) of `kind`; weights (frames, G) float32 (float64 for float64 x).
// out (frames, h, w, D) = sum_g weights[f, g] x[f, window g]; zero weights are skipped.
cudaError_t launch_anchor_gather(const void* x, ScalarKind kind, const void* weights, void* out, int64_t frames, int64_t dim,
                          const AnchorGeometry& geometry, cudaStream_t stream);

// grad (frames, h, w, D) of `kind`. grad_x (frames, H, W, D) of `kind` when not null;
// grad_weights (frames, G) float64 when not null.
cudaError_t launch_anchor_gather_backward(const void* grad, const void* x, ScalarKind kind, const void* weights,
                                   void* grad_x, double* grad_weights, int64_t frames, int64_t dim,
                                   const AnchorGeometry& geometry, cudaStream_t stream);

}  // namespace vidsel::cuda
