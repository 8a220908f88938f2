// CPU kernels of the fused compressed-domain patch embedding (MM-ViT §3.2, eq. 1–4).
//
// The driver (compressed_patch_embed.h) runs the GEMMs; this file supplies the patch gather (im2col,
// reading motion straight from its block grid) and its adjoint (col2im, accumulating into a float
// buffer because several cells of a patch can read the same motion block). In float32 the forward
// takes its own path (embed_direct): GEMMs accumulating straight into the output slots.
#include "cpu/compressed_patch_embed.h"

#include "cpu/common.h"
#include "cpu/gemm.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <vector>

namespace vidsel {
namespace {

using compressed_embed::PatchGeometry;
using compressed_embed::source_offset;

// Patch n of one frame -> depth values (channel, cell row, cell column).
template <typename scalar_t>
inline void gather_patch(const scalar_t* frame, const PatchGeometry& g, int64_t n, scalar_t* dst) {
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

// Patch rows [row0, row0 + rows) of consecutive frames (row = frame * tokens + patch) -> cols (rows, depth).
template <typename scalar_t>
void im2col_kernel(const scalar_t* frames, const PatchGeometry& g, int64_t row0, int64_t rows, scalar_t* cols) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t row = row0 + r;
      gather_patch(frames + (row / g.tokens) * g.frame_size(), g, row % g.tokens, cols + r * g.depth());
    }
  });
}

// grad_frames[...] += cols[...]; jobs own whole frames (blocks never straddle frames).
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

// ---- float32 fast path: one pass writing each modality slot of the output ----
//
// Every job (handed out by a JobQueue) owns a block of kDirectRows tokens of one clip: it gathers their
// patches into a per-thread matrix (kept in L2), writes bias + PE into the output rows, and accumulates
// cols · Wᵀ on top with the float32 GEMM chosen per machine (cpu/gemm.h: vidsel's AVX-512 tiles or the
// BLAS torch links, each single-threaded inside the job). So each token is written once, straight into
// the output: no convolution result, channels-last input or per-chunk weight copies.
constexpr int64_t kDirectRows = 96;  // a multiple of the GEMM's 6-row tiles; 96 x 768 floats = 288 KiB

// Rows [row0, row0 + count) of one clip: patches into cols (count, depth), bias + PE into the slot rows.
void gather_block(const float* clip, const PatchGeometry& g, int64_t row0, int64_t count, const float* pos,
                  const float* bias, float* slot, int64_t dim, float* cols) {
  for (int64_t r = 0; r < count; ++r) {
    const int64_t row = row0 + r;
    gather_patch(clip + (row / g.tokens) * g.frame_size(), g, row % g.tokens, cols + r * g.depth());
    const float* pe = pos + row * dim;
    float* dst = slot + row * dim;
#pragma omp simd
    for (int64_t c = 0; c < dim; ++c) dst[c] = pe[c] + bias[c];
  }
}

bool embed_direct_float(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& weight2d,
                        const at::Tensor& bias, const at::Tensor& pos, at::Tensor& out, int64_t modality) {
  if (x.scalar_type() != at::kFloat) return false;
  const int64_t batch = x.size(0), frames = x.size(1), dim = weight2d.size(0), depth = g.depth();
  const int64_t rows = frames * g.tokens;
  TORCH_CHECK(x.is_contiguous() && x.size(2) * x.size(3) * x.size(4) == g.frame_size() && out.is_contiguous() &&
                  out.dim() == 5 && out.size(0) == batch && modality < out.size(1) && out.size(2) == frames &&
                  out.size(3) == g.tokens && out.size(4) == dim && weight2d.size(1) == depth &&
                  pos.numel() == rows * dim && bias.numel() == dim && out.scalar_type() == at::kFloat &&
                  pos.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat &&
                  weight2d.scalar_type() == at::kFloat,
              "vidsel(cpu): direct embedding bounds");
  const at::Tensor pos_c = pos.contiguous(), bias_c = bias.contiguous(), weight_c = weight2d.contiguous();
  const at::Tensor weight_t = weight_c.t().contiguous();  // Wᵀ (depth, dim): the GEMM's row-major B
  const cpu_gemm::Path path = cpu_gemm::choose(cpu_gemm::ShapeClass::kPatchProjection);
  const int64_t blocks = (rows + kDirectRows - 1) / kDirectRows, slot_stride = out.size(1) * rows * dim;
  const float *frames_ptr = x.data_ptr<float>(), *w = weight_t.data_ptr<float>();
  float* first_slot = out.data_ptr<float>() + modality * rows * dim;
  JobQueue queue(batch * blocks);
  on_workers(batch * blocks, [&](int64_t) {
    std::vector<float> cols(kDirectRows * depth);
    for (int64_t job; (job = queue.take()) >= 0;) {
      const int64_t b = job / blocks, row0 = (job % blocks) * kDirectRows;
      const int64_t count = std::min(kDirectRows, rows - row0);
      float* slot = first_slot + b * slot_stride;
      gather_block(frames_ptr + b * frames * g.frame_size(), g, row0, count, pos_c.data_ptr<float>(),
                   bias_c.data_ptr<float>(), slot, dim, cols.data());
      cpu_gemm::sgemm(path, false, false, count, dim, depth, 1.0f, cols.data(), depth, w, dim, 1.0f, slot + row0 * dim,
                      dim);
    }
  });
  return true;
}

// Backward of the projection weight, float32: grad_W (D, depth) = Σ over every clip's rows of gradᵀ · cols.
// One parallel region: the patch rows form chunks of kGradRows (a chunk stays in L2, never straddling
// clips) handed out by a JobQueue; each worker gathers its chunk and accumulates gradᵀ (a transposed
// operand, no copy) times the chunk, kGradOutRows output rows at a time, into its own (D, depth)
// partial with the GEMM chosen for this shape class; the partials are summed after. (A region per
// chunk made every thread wait for the slowest at each of the 2 x 7 chunk boundaries per modality.)
constexpr int64_t kGradRows = 256;
constexpr int64_t kGradOutRows = 96;

bool weight_grad_float(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& grad_m, at::Tensor& grad_weight) {
  if (x.scalar_type() != at::kFloat || grad_m.scalar_type() != at::kFloat) return false;
  const int64_t batch = x.size(0), frames = x.size(1), dim = grad_m.size(3), depth = g.depth();
  const int64_t rows = frames * g.tokens;
  TORCH_CHECK(x.is_contiguous() && x.size(2) * x.size(3) * x.size(4) == g.frame_size() && grad_m.dim() == 4 &&
                  grad_m.size(0) == batch && grad_m.size(1) == frames && grad_m.size(2) == g.tokens,
              "vidsel(cpu): weight gradient bounds");
  if (grad_m.stride(3) != 1 || grad_m.stride(2) != dim || grad_m.stride(1) != g.tokens * dim) return false;
  if (batch * rows == 0) {  // nothing flows back (an empty batch)
    grad_weight = at::zeros({dim, depth}, x.options());
    return true;
  }
  const cpu_gemm::Path path = cpu_gemm::choose(cpu_gemm::ShapeClass::kPatchGradient);
  const int64_t chunks_per_clip = (rows + kGradRows - 1) / kGradRows, jobs = batch * chunks_per_clip;
  const int64_t workers = worker_count(jobs);
  at::Tensor partials = at::empty({workers, dim, depth}, x.options());
  std::vector<char> used(workers, 0);
  const float *grad = grad_m.data_ptr<float>(), *clips = x.data_ptr<float>();
  float* partial_ptr = partials.data_ptr<float>();
  JobQueue queue(jobs);
  on_workers(jobs, [&](int64_t worker) {
    std::vector<float> cols(kGradRows * depth);
    float* gw = partial_ptr + worker * dim * depth;
    for (int64_t job; (job = queue.take()) >= 0;) {
      const int64_t b = job / chunks_per_clip, row0 = (job % chunks_per_clip) * kGradRows;
      const int64_t count = std::min(kGradRows, rows - row0);
      const float* clip = clips + b * frames * g.frame_size();
      for (int64_t r = 0; r < count; ++r) {
        const int64_t row = row0 + r;
        gather_patch(clip + (row / g.tokens) * g.frame_size(), g, row % g.tokens, cols.data() + r * depth);
      }
      const float* grad_rows = grad + b * grad_m.stride(0) + row0 * dim;
      for (int64_t i0 = 0; i0 < dim; i0 += kGradOutRows) {
        // gradᵀ rows i0.., columns row0..: grad is stored (count x dim) and read transposed.
        cpu_gemm::sgemm(path, true, false, std::min(kGradOutRows, dim - i0), depth, count, 1.0f, grad_rows + i0, dim,
                        cols.data(), depth, used[worker] ? 1.0f : 0.0f, gw + i0 * depth, depth);
      }
      used[worker] = 1;
    }
  });
  grad_weight = at::Tensor();
  for (int64_t w = 0; w < workers; ++w) {
    if (!used[w]) continue;  // a worker that found the queue empty
    grad_weight = grad_weight.defined() ? grad_weight.add_(partials.select(0, w)) : partials.select(0, w);
  }
  return true;
}

// out[b, 3, t, n, :] = tokens[b, t, :] for all n: one parallel pass of row copies, streamed past the cache
// (nothing reads these rows during the op; a separate broadcast copy_ of this 9 MiB block took 6 ms).
void replicate_audio_rows(const at::Tensor& tokens_in, at::Tensor& out) {
  const at::Tensor tokens = tokens_in.contiguous();
  TORCH_CHECK(out.is_contiguous() && out.dim() == 5 && out.size(1) == 4 &&
                  tokens.sizes() == at::IntArrayRef({out.size(0), out.size(2), out.size(4)}) &&
                  tokens.scalar_type() == out.scalar_type(),
              "vidsel(cpu): audio replication bounds");
  const int64_t frames = out.size(2), n = out.size(3), row_bytes = out.size(4) * out.element_size();
  const bool streaming = static_cast<int64_t>(out.nbytes()) >= kStreamingBytes;
  const char* src = static_cast<const char*>(tokens.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, out.size(0) * frames * n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bt = row / n, b = bt / frames, t = bt % frames;
      write_row(dst + (((b * 4 + 3) * frames + t) * n + row % n) * row_bytes, src + bt * row_bytes, row_bytes,
                streaming);
    }
    finish_streaming(streaming);
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
      im2col_kernel<scalar_t>(frames, g, 0, count * g.tokens, cols.data_ptr<scalar_t>());
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

  static bool embed_direct(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& weight2d,
                           const at::Tensor& bias, const at::Tensor& pos, at::Tensor& out, int64_t modality) {
    return embed_direct_float(x, g, weight2d, bias, pos, out, modality);
  }

  static void replicate_audio(const at::Tensor& tokens, at::Tensor& out) { replicate_audio_rows(tokens, out); }

  static bool weight_grad_direct(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& grad_m,
                                 at::Tensor& grad_weight) {
    return weight_grad_float(x, g, grad_m, grad_weight);
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
