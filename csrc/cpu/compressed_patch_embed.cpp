// CPU kernels of the fused compressed-domain patch embedding (MM-ViT §3.2, eq. 1–4).
//
// The driver (compressed_patch_embed.h) runs the GEMMs; this file supplies the patch gather (im2col,
// reading motion straight from its block grid) and its adjoint (col2im, accumulating into a float
// buffer because several cells of a patch can read the same motion block).
#include "cpu/compressed_patch_embed.h"

#include "cpu/common.h"

#include <ATen/OpMathType.h>

namespace vidsel {
namespace {

using compressed_embed::PatchGeometry;
using compressed_embed::source_offset;

template <typename scalar_t>
void im2col_kernel(const scalar_t* frames, const PatchGeometry& g, int64_t count, scalar_t* cols) {
  const int64_t depth = g.depth(), frame_size = g.frame_size();
  at::parallel_for(0, count * g.tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* frame = frames + (row / g.tokens) * frame_size;
      const int64_t n = row % g.tokens;
      scalar_t* dst = cols + row * depth;
      for (int64_t ch = 0; ch < g.channels; ++ch) {
        for (int64_t ci = 0; ci < g.cells; ++ci, dst += g.cells) {
          if (g.scale == 1) {  // dense input: a patch row is contiguous
            const scalar_t* src = frame + source_offset(g, n, ch, ci, 0);
            for (int64_t cj = 0; cj < g.cells; ++cj) dst[cj] = src[cj];
          } else {
            for (int64_t cj = 0; cj < g.cells; ++cj) dst[cj] = frame[source_offset(g, n, ch, ci, cj)];
          }
        }
      }
    }
  });
}

// grad_frames[...] += cols[...]; tasks own whole frames (blocks never straddle frames).
template <typename scalar_t, typename acc_t>
void col2im_kernel(const scalar_t* cols, const PatchGeometry& g, int64_t count, acc_t* grad_frames) {
  const int64_t depth = g.depth(), frame_size = g.frame_size();
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t f = begin; f < end; ++f) {
      acc_t* frame = grad_frames + f * frame_size;
      for (int64_t n = 0; n < g.tokens; ++n) {
        const scalar_t* src = cols + (f * g.tokens + n) * depth;
        for (int64_t ch = 0; ch < g.channels; ++ch) {
          for (int64_t ci = 0; ci < g.cells; ++ci, src += g.cells) {
            for (int64_t cj = 0; cj < g.cells; ++cj) {
              frame[source_offset(g, n, ch, ci, cj)] += static_cast<acc_t>(src[cj]);
            }
          }
        }
      }
    }
  });
}

struct CpuOps {
  static void im2col(const at::Tensor& x, const PatchGeometry& g, int64_t b, int64_t f0, int64_t count,
                     at::Tensor& cols) {
    TORCH_CHECK(x.is_contiguous() && cols.is_contiguous() && cols.size(0) >= count * g.tokens &&
                    cols.size(1) == g.depth() && f0 + count <= x.size(1) && b < x.size(0),
                "vidsel(cpu): im2col bounds");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "compressed_embed_im2col", [&] {
      const scalar_t* frames = x.data_ptr<scalar_t>() + (b * x.size(1) + f0) * g.frame_size();
      im2col_kernel<scalar_t>(frames, g, count, cols.data_ptr<scalar_t>());
    });
  }

  static void col2im_add(const at::Tensor& cols_in, const PatchGeometry& g, int64_t b, int64_t f0, int64_t count,
                         at::Tensor& grad) {
    const at::Tensor cols = cols_in.contiguous();
    TORCH_CHECK(grad.is_contiguous() && cols.size(0) == count * g.tokens && cols.size(1) == g.depth() &&
                    f0 + count <= grad.size(1) && b < grad.size(0),
                "vidsel(cpu): col2im bounds");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cols.scalar_type(), "compressed_embed_col2im", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      TORCH_CHECK(grad.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "vidsel(cpu): col2im buffer dtype");
      acc_t* frames = grad.data_ptr<acc_t>() + (b * grad.size(1) + f0) * g.frame_size();
      col2im_kernel<scalar_t, acc_t>(cols.data_ptr<scalar_t>(), g, count, frames);
    });
  }

  static at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return vidsel::new_output(sizes, options);
  }
};

void check_cpu(std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors) {
  for (const auto& [t, name] : tensors) VIDSEL_CHECK_CPU(*t, name);
}

std::tuple<at::Tensor, at::Tensor> compressed_patch_embed_cpu(const at::Tensor& iframe, const at::Tensor& motion,
                                                              const at::Tensor& residual,
                                                              const c10::optional<at::Tensor>& audio_feat,
                                                              at::TensorList visual, at::TensorList audio,
                                                              int64_t patch, bool expand_audio) {
  check_cpu({{&iframe, "iframe"}, {&motion, "motion"}, {&residual, "residual"}});
  return compressed_embed::embed_forward<CpuOps>(iframe, motion, residual, audio_feat, visual, audio, patch,
                                                 expand_audio);
}

std::vector<at::Tensor> compressed_patch_embed_backward_cpu(
    const at::Tensor& grad_tokens, const at::Tensor& grad_audio, const at::Tensor& iframe, const at::Tensor& motion,
    const at::Tensor& residual, const c10::optional<at::Tensor>& audio_feat, at::TensorList visual,
    at::TensorList audio, int64_t patch, bool expand_audio, std::array<bool, 4> input_mask) {
  check_cpu({{&grad_tokens, "grad_tokens"}, {&iframe, "iframe"}, {&motion, "motion"}, {&residual, "residual"}});
  return compressed_embed::embed_backward<CpuOps>(grad_tokens, grad_audio, iframe, motion, residual, audio_feat,
                                                  visual, audio, patch, expand_audio, input_mask);
}

}  // namespace
}  // namespace vidsel

TORCH_LIBRARY_IMPL(vidsel_C, CPU, m) {
  m.impl("compressed_patch_embed", &vidsel::compressed_patch_embed_cpu);
  m.impl("compressed_patch_embed_backward", &vidsel::compressed_patch_embed_backward_cpu);
}
