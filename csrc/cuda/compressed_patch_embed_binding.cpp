// CUDA binding of the compressed-domain patch embedding (MM-ViT §3.2 eq. 1–4): the shared driver
// (csrc/cpu/compressed_patch_embed.h) with the CUDA gather / scatter launchers; GEMMs via cuBLAS (ATen).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/binding_common.h"
#include "cpu/compressed_patch_embed.h"
#include "cuda/compressed_patch_embed.h"

namespace vidsel::cuda {
namespace {

using compressed_embed::PatchGeometry;

PatchLayout layout_of(const PatchGeometry& g) {
  return {g.channels, g.in_h, g.in_w, g.scale, g.cell, g.cells, g.patch, g.grid_w, g.tokens};
}

struct CudaOps {
  static void im2col(const at::Tensor& x, const PatchGeometry& g, int64_t b, int64_t f0, int64_t count,
                     at::Tensor& cols) {
    TORCH_CHECK(x.is_contiguous() && cols.is_contiguous() && cols.size(0) >= count * g.tokens &&
                    cols.size(1) == g.depth() && f0 + count <= x.size(1) && b < x.size(0) &&
                    cols.scalar_type() == x.scalar_type(),
                "vidsel(cuda): im2col bounds");
    const auto* frames = static_cast<const char*>(x.data_ptr()) + (b * x.size(1) + f0) * g.frame_size() * x.element_size();
    check_launch(launch_patch_im2col(frames, cols.data_ptr(), scalar_kind(x), layout_of(g), count,
                                     c10::cuda::getCurrentCUDAStream()),
                 "compressed_patch_embed (im2col)");
  }

  static void col2im_add(const at::Tensor& cols_in, const PatchGeometry& g, int64_t b, int64_t f0, int64_t count,
                         at::Tensor& grad) {
    const at::Tensor cols = cols_in.contiguous();
    const auto acc = compressed_embed::accumulate_type(cols.scalar_type());
    TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == acc && cols.size(0) == count * g.tokens &&
                    cols.size(1) == g.depth() && f0 + count <= grad.size(1) && b < grad.size(0),
                "vidsel(cuda): col2im bounds");
    auto* frames = static_cast<char*>(grad.data_ptr()) + (b * grad.size(1) + f0) * g.frame_size() * grad.element_size();
    check_launch(launch_patch_col2im_add(cols.data_ptr(), frames, scalar_kind(cols), layout_of(g), count,
                                         c10::cuda::getCurrentCUDAStream()),
                 "compressed_patch_embed_backward (col2im)");
  }

  static at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }

  // No device-specific fast path: the driver's convolution / im2col + GEMM paths run on cuDNN / cuBLAS.
  static bool embed_direct(const at::Tensor&, const PatchGeometry&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, at::Tensor&, int64_t) {
    return false;
  }

  static bool weight_grad_direct(const at::Tensor&, const PatchGeometry&, const at::Tensor&, at::Tensor&) {
    return false;
  }

  static void replicate_audio(const at::Tensor& tokens, at::Tensor& out) {
    out.select(1, 3).copy_(tokens.unsqueeze(2).expand({out.size(0), out.size(2), out.size(3), out.size(4)}));
  }
};

std::tuple<at::Tensor, at::Tensor> compressed_patch_embed_cuda(const at::Tensor& iframe, const at::Tensor& motion,
                                                               const at::Tensor& residual,
                                                               const c10::optional<at::Tensor>& audio_feat,
                                                               at::TensorList visual, at::TensorList audio,
                                                               int64_t patch, bool expand_audio) {
  VIDSEL_CHECK_CUDA(iframe, "iframe");
  scalar_kind(iframe);
  const c10::cuda::CUDAGuard guard(iframe.device());
  return compressed_embed::embed_forward<CudaOps>(iframe, motion, residual, audio_feat, visual, audio, patch,
                                                  expand_audio);
}

std::vector<at::Tensor> compressed_patch_embed_backward_cuda(
    const at::Tensor& grad_tokens, const at::Tensor& grad_audio, const at::Tensor& iframe, const at::Tensor& motion,
    const at::Tensor& residual, const c10::optional<at::Tensor>& audio_feat, at::TensorList visual,
    at::TensorList audio, int64_t patch, bool expand_audio, std::array<bool, 4> input_mask) {
  VIDSEL_CHECK_CUDA(iframe, "iframe");
  VIDSEL_CHECK_CUDA(grad_tokens, "grad_tokens");
  scalar_kind(iframe);
  const c10::cuda::CUDAGuard guard(iframe.device());
  return compressed_embed::embed_backward<CudaOps>(grad_tokens, grad_audio, iframe, motion, residual, audio_feat,
                                                   visual, audio, patch, expand_audio, input_mask);
}

}  // namespace
}  // namespace vidsel::cuda

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("compressed_patch_embed", &vidsel::cuda::compressed_patch_embed_cuda);
  m.impl("compressed_patch_embed_backward", &vidsel::cuda::compressed_patch_embed_backward_cuda);
}
