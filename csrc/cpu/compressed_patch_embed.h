// Fused compressed-domain patch embedding (MM-ViT §3.2, eq. 1–4): the device-independent driver.
//
// Per visual modality the patches of a chunk of frames are gathered into a (rows, K) matrix (im2col)
// and projected with ONE addmm whose additive term is PE + bias, written straight into the output
// slot of that modality (eq. 1–3). Motion arrives at block granularity g: with c = gcd(P, g) a patch
// is (P/c)^2 constant cells, so the gather reads one value per cell from the block grid and the weight
// is pre-summed over each c×c cell (K = 2 (P/c)^2 instead of 2 P^2). The dense H×W flow never exists.
// Audio (eq. 4) is one small addmm, replicated over the N positions only when expand_audio.
//
// The CPU kernels (csrc/cpu/compressed_patch_embed.cpp) and the CUDA binding
// (csrc/cuda/compressed_patch_embed_binding.cpp) instantiate these templates with their own gather /
// scatter kernels and output allocator; GEMMs are ATen's (MKL/oneDNN on CPU, cuBLAS on CUDA).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <tuple>
#include <vector>

namespace vidsel::compressed_embed {

// How one modality's patches are read. The input holds frames (B, T, C, in_h, in_w) whose elements
// cover `scale`×`scale` pixels (g for motion, 1 otherwise); a P×P patch splits into cells×cells constant
// cells of `cell` pixels; column k of the patch matrix is (channel, cell row, cell column).
struct PatchGeometry {
  int64_t channels, in_h, in_w, scale, cell, cells, patch, grid_w, tokens;
  int64_t depth() const { return channels * cells * cells; }
  int64_t frame_size() const { return channels * in_h * in_w; }
};

inline PatchGeometry make_geometry(const at::Tensor& x, int64_t height, int64_t width, int64_t patch) {
  const int64_t scale = height / x.size(3);
  const int64_t cell = std::gcd(patch, scale);
  return {x.size(2), x.size(3), x.size(4), scale, cell, patch / cell, patch, width / patch,
          (height / patch) * (width / patch)};
}

// Element offset inside one frame of column (ch, ci, cj) of token n.
inline int64_t source_offset(const PatchGeometry& g, int64_t n, int64_t ch, int64_t ci, int64_t cj) {
  const int64_t ph = n / g.grid_w, pw = n % g.grid_w;
  const int64_t y = (ph * g.patch + ci * g.cell) / g.scale;
  const int64_t x = (pw * g.patch + cj * g.cell) / g.scale;
  return (ch * g.in_h + y) * g.in_w + x;
}

// E'_M: the motion weight (D, 2, P, P) summed over c×c cells -> (D, 2 (P/c)^2). As c² adds of small
// strided slices: each stays under ATen's parallel grain, so no thread wake-ups (a reduction over size-c
// axes or a tiny GEMM costs milliseconds of threading overhead here).
inline at::Tensor presum_weight(const at::Tensor& weight, const PatchGeometry& g) {
  const int64_t dim = weight.size(0);
  if (g.cell == 1) return weight.reshape({dim, g.depth()});
  const at::Tensor cells = weight.reshape({dim, g.channels, g.cells, g.cell, g.cells, g.cell});
  at::Tensor sum = cells.select(5, 0).select(3, 0).contiguous();
  for (int64_t i = 0; i < g.cell; ++i) {
    for (int64_t j = (i == 0 ? 1 : 0); j < g.cell; ++j) sum.add_(cells.select(5, j).select(3, i));
  }
  return sum.reshape({dim, g.depth()});
}

// Adjoint of presum_weight: every pixel of a cell receives the cell's gradient.
inline at::Tensor expand_weight_grad(const at::Tensor& grad, const PatchGeometry& g) {
  const int64_t dim = grad.size(0);
  if (g.cell == 1) return grad.reshape({dim, g.channels, g.patch, g.patch});
  return grad.reshape({dim, g.channels, g.cells, 1, g.cells, 1})
      .expand({dim, g.channels, g.cells, g.cell, g.cells, g.cell})
      .reshape({dim, g.channels, g.patch, g.patch});
}

inline at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Frames per chunk: ~800 patch rows keeps the im2col buffer small (2.3 MiB at K = 768) while the GEMM
// (800 × K × D) stays large enough to run at full speed.
inline int64_t frames_per_chunk(const PatchGeometry& g, int64_t frames) {
  return std::clamp<int64_t>(800 / std::max<int64_t>(g.tokens, 1), 1, std::max<int64_t>(frames, 1));
}

// A contiguous (rows, depth) view of the workspace, growing it when too small.
inline at::Tensor workspace_view(at::Tensor& workspace, int64_t rows, int64_t depth, const at::TensorOptions& options) {
  if (!workspace.defined() || workspace.numel() < rows * depth) workspace = at::empty({rows * depth}, options);
  return workspace.narrow(0, 0, rows * depth).view({rows, depth});
}

// Full-resolution modalities (I-frame, residual) where Ops::embed_direct declines (CUDA; CPU float64 or
// builds without AVX-512):
// the patch projection is a convolution with stride P, which cuDNN / oneDNN run faster than im2col + one
// GEMM (measured on CPU: ~10 ms vs ~18 ms per modality at B=2, T=8, 224², D=768). Chunks of frames bound
// the temporary.
inline void embed_full_resolution(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& weight2d,
                                  const at::Tensor& bias, const at::Tensor& pos_rows, at::Tensor& out,
                                  int64_t modality) {
  const int64_t frames = x.size(1), dim = weight2d.size(0), n = g.tokens;
  const at::Tensor weight4d = weight2d.reshape({dim, g.channels, g.patch, g.patch});
  const int64_t chunk = std::min<int64_t>(frames, 4);  // bounds the (chunk, D, h, w) temporaries
  for (int64_t b = 0; b < x.size(0); ++b) {
    for (int64_t f0 = 0; f0 < frames; f0 += chunk) {
      const int64_t count = std::min(chunk, frames - f0);
      // Channels-last input gives a channels-last (count, D, h, w) result: memory order (count, N, D).
      const at::Tensor frames_cl = x.select(0, b).narrow(0, f0, count).contiguous(at::MemoryFormat::ChannelsLast);
      const at::Tensor projected = at::conv2d(frames_cl, weight4d, {}, {g.patch, g.patch});
      at::Tensor slot = out.select(0, b).select(0, modality).narrow(0, f0, count).view({count, n, dim});
      at::add_out(slot, pos_rows.narrow(0, f0 * n, count * n).view({count, n, dim}), bias);
      slot.add_(projected.flatten(2).transpose(1, 2));
    }
  }
}

// Ops must provide:
//   static void im2col(const at::Tensor& x, const PatchGeometry&, int64_t b, int64_t f0, int64_t count, at::Tensor& cols)
//   static void col2im_add(const at::Tensor& cols, const PatchGeometry&, int64_t b, int64_t f0, int64_t count,
//                          at::Tensor& grad)   // grad: (B, T, C, in_h, in_w) in accumulate_type, +=
//   static at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions&)
//   static bool embed_direct(x, g, weight2d, bias, pos (T, N, D), out, modality)
//       // a device fast path writing the whole modality slot of `out`; false: not applicable, use the generic path
//   static void replicate_audio(const at::Tensor& tokens /* (B, T, D) */, at::Tensor& out /* (B, 4, T, N, D) */)
//   static bool weight_grad_direct(x, g, grad_m (B, T, N, D), grad_weight)
//       // weight gradient (D, depth) of any modality without input gradients; false: use the generic path
// workspace: im2col buffer reused across modalities (re-allocating MBs per call costs page faults).
template <class Ops>
void embed_modality(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& weight2d, const at::Tensor& bias,
                    const at::Tensor& pos, at::Tensor& out, int64_t modality, at::Tensor& workspace) {
  const int64_t batch = x.size(0), frames = x.size(1), dim = weight2d.size(0), n = g.tokens;
  if (Ops::embed_direct(x, g, weight2d, bias, pos, out, modality)) return;
  const at::Tensor weight_t = weight2d.t();
  const at::Tensor pos_rows = pos.reshape({frames * n, dim});
  if (g.scale == 1 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) {
    embed_full_resolution(x, g, weight2d, bias, pos_rows, out, modality);
    return;
  }
  const int64_t chunk = frames_per_chunk(g, frames);
  at::Tensor cols = workspace_view(workspace, chunk * n, g.depth(), x.options());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t f0 = 0; f0 < frames; f0 += chunk) {
      const int64_t count = std::min(chunk, frames - f0);
      Ops::im2col(x, g, b, f0, count, cols);
      at::Tensor slot = out.select(0, b).select(0, modality).narrow(0, f0, count).view({count * n, dim});
      // PE + bias written once into the output slot, then the GEMM accumulates onto it in place.
      at::add_out(slot, pos_rows.narrow(0, f0 * n, count * n), bias);
      slot.addmm_(cols.narrow(0, 0, count * n), weight_t);
    }
  }
}

inline void check_params(const at::Tensor& iframe, const at::Tensor& motion, const at::Tensor& residual,
                         const c10::optional<at::Tensor>& audio_feat, at::TensorList visual, at::TensorList audio,
                         int64_t patch) {
  TORCH_CHECK(iframe.dim() == 5 && iframe.size(2) == 3, "vidsel: iframe must be (B, T, 3, H, W)");
  TORCH_CHECK(patch > 0, "vidsel: patch must be positive");
  const int64_t batch = iframe.size(0), frames = iframe.size(1), height = iframe.size(3), width = iframe.size(4);
  TORCH_CHECK(batch > 0 && frames > 0, "vidsel: iframe needs B >= 1 and T >= 1");
  TORCH_CHECK(height > 0 && width > 0 && height % patch == 0 && width % patch == 0,
              "vidsel: iframe H and W must be positive multiples of patch");
  TORCH_CHECK(residual.sizes() == iframe.sizes(), "vidsel: residual must have the shape of iframe");
  TORCH_CHECK(motion.dim() == 5 && motion.size(0) == batch && motion.size(1) == frames && motion.size(2) == 2,
              "vidsel: motion must be (B, T, 2, H/g, W/g)");
  TORCH_CHECK(motion.size(3) > 0 && motion.size(4) > 0 && height % motion.size(3) == 0 &&
                  width % motion.size(4) == 0 && height / motion.size(3) == width / motion.size(4),
              "vidsel: motion must be (B, T, 2, H/g, W/g) for one block size g");
  TORCH_CHECK(visual.size() == 9, "vidsel: expected 9 visual params");
  TORCH_CHECK(audio.size() == (audio_feat.has_value() ? 3u : 0u), "vidsel: audio params must be 3 with audio, else 0");
  const int64_t dim = visual[0].size(0), n = (height / patch) * (width / patch);
  const int64_t channels[3] = {3, 2, 3};
  for (int m = 0; m < 3; ++m) {
    TORCH_CHECK(visual[3 * m].sizes() == at::IntArrayRef({dim, channels[m], patch, patch}), "vidsel: weight ", m,
                " must be (D, C, P, P)");
    TORCH_CHECK(visual[3 * m + 1].sizes() == at::IntArrayRef({dim}), "vidsel: bias ", m, " must be (D,)");
    TORCH_CHECK(visual[3 * m + 2].sizes() == at::IntArrayRef({frames, n, dim}), "vidsel: pos ", m,
                " must be (T, N, D)");
  }
  if (audio_feat.has_value()) {
    TORCH_CHECK(audio_feat->dim() == 3 && audio_feat->size(0) == batch && audio_feat->size(1) == frames,
                "vidsel: audio_feat must be (B, T, F)");
    TORCH_CHECK(audio[0].sizes() == at::IntArrayRef({dim, audio_feat->size(2)}), "vidsel: audio weight must be (D, F)");
    TORCH_CHECK(audio[1].sizes() == at::IntArrayRef({dim}), "vidsel: audio bias must be (D,)");
    TORCH_CHECK(audio[2].sizes() == at::IntArrayRef({frames, dim}), "vidsel: audio pos must be (T, D)");
  }
  std::vector<at::Tensor> all = {motion, residual};
  all.insert(all.end(), visual.begin(), visual.end());
  all.insert(all.end(), audio.begin(), audio.end());
  if (audio_feat.has_value()) all.push_back(*audio_feat);
  for (const auto& t : all) {
    TORCH_CHECK(t.scalar_type() == iframe.scalar_type(), "vidsel: all inputs and params must share iframe's dtype");
    TORCH_CHECK(t.device() == iframe.device(), "vidsel: all inputs and params must share iframe's device");
  }
}

template <class Ops>
std::tuple<at::Tensor, at::Tensor> embed_forward(const at::Tensor& iframe_in, const at::Tensor& motion_in,
                                                 const at::Tensor& residual_in,
                                                 const c10::optional<at::Tensor>& audio_feat, at::TensorList visual,
                                                 at::TensorList audio, int64_t patch, bool expand_audio) {
  check_params(iframe_in, motion_in, residual_in, audio_feat, visual, audio, patch);
  const at::Tensor inputs[3] = {iframe_in.contiguous(), motion_in.contiguous(), residual_in.contiguous()};
  const int64_t batch = iframe_in.size(0), frames = iframe_in.size(1), dim = visual[0].size(0);
  const int64_t height = iframe_in.size(3), width = iframe_in.size(4), n = (height / patch) * (width / patch);
  const bool replicate = audio_feat.has_value() && expand_audio;
  at::Tensor out = Ops::new_output({batch, replicate ? 4 : 3, frames, n, dim}, iframe_in.options());
  at::Tensor workspace;
  for (int64_t m = 0; m < 3; ++m) {
    const PatchGeometry g = make_geometry(inputs[m], height, width, patch);
    embed_modality<Ops>(inputs[m], g, presum_weight(visual[3 * m], g), visual[3 * m + 1], visual[3 * m + 2], out, m,
                        workspace);
  }
  if (!audio_feat.has_value()) return {out, iframe_in.new_empty({0})};
  const at::Tensor feat = audio_feat->contiguous().view({batch * frames, audio_feat->size(2)});
  at::Tensor audio_tokens = at::addmm(audio[1], feat, audio[0].t()).view({batch, frames, dim}).add_(audio[2]);
  if (replicate) Ops::replicate_audio(audio_tokens, out);
  return {out, audio_tokens};
}

// Backward of embed_full_resolution: the convolution's own input / weight gradients, per clip.
inline void convolution_grads(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& weight,
                              const at::Tensor& grad_m, bool need_input, at::Tensor& grad_input,
                              at::Tensor& grad_weight) {
  const int64_t frames = x.size(1), dim = weight.size(0), grid_h = g.tokens / g.grid_w;
  for (int64_t b = 0; b < x.size(0); ++b) {
    // (T, N, D) tokens are a channels-last (T, D, h, w) gradient map: a view, no copy.
    const at::Tensor grad_map = grad_m.select(0, b).view({frames, grid_h, g.grid_w, dim}).permute({0, 3, 1, 2});
    const auto [grad_x, grad_w, unused_bias] = at::convolution_backward(
        grad_map, x.select(0, b), weight, c10::nullopt, {g.patch, g.patch}, {0, 0}, {1, 1}, false, {0, 0}, 1,
        {need_input, true, false});
    if (need_input) grad_input.select(0, b).copy_(grad_x);
    grad_weight = grad_weight.defined() ? grad_weight.add_(grad_w) : grad_w;
  }
}

// Gradients of one visual modality: {input (or undefined), weight (D, C, P, P), bias (D,), pos (T, N, D)}.
template <class Ops>
std::vector<at::Tensor> modality_backward(const at::Tensor& x, const PatchGeometry& g, const at::Tensor& weight,
                                          const at::Tensor& grad_tokens, int64_t modality, bool need_input,
                                          at::Tensor& workspace) {
  const int64_t batch = x.size(0), frames = x.size(1), dim = weight.size(0), n = g.tokens;
  const at::Tensor grad_m = grad_tokens.select(1, modality);  // (B, T, N, D)
  const at::Tensor weight2d = presum_weight(weight, g);
  const auto acc = accumulate_type(x.scalar_type());
  at::Tensor grad_weight;
  at::Tensor grad_input = need_input ? at::zeros(x.sizes(), x.options().dtype(acc)) : at::Tensor();
  if (!need_input && Ops::weight_grad_direct(x, g, grad_m, grad_weight)) {
    // the device fast path computed the (D, depth) weight gradient (motion: of the cell-summed weight)
  } else if (g.scale == 1 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble)) {
    convolution_grads(x, g, weight, grad_m, need_input, grad_input, grad_weight);
  } else {
  const int64_t chunk = frames_per_chunk(g, frames);
  at::Tensor cols = workspace_view(workspace, chunk * n, g.depth(), x.options());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t f0 = 0; f0 < frames; f0 += chunk) {
      const int64_t count = std::min(chunk, frames - f0);
      Ops::im2col(x, g, b, f0, count, cols);
      const at::Tensor grad_rows = grad_m.select(0, b).narrow(0, f0, count).reshape({count * n, dim});
      const at::Tensor patches = cols.narrow(0, 0, count * n);
      if (!grad_weight.defined()) {
        grad_weight = at::mm(grad_rows.t(), patches).to(acc);
      } else if (acc == x.scalar_type()) {
        grad_weight.addmm_(grad_rows.t(), patches);
      } else {
        grad_weight.add_(at::mm(grad_rows.t(), patches));
      }
      if (need_input) Ops::col2im_add(at::mm(grad_rows, weight2d), g, b, f0, count, grad_input);
    }
  }
  }
  // Reduce over the batch first (outer axis, fast), then over (T, N) of the contiguous result. The first two
  // clips are summed in one pass (a copy then an add would write the (T, N, D) result twice).
  const bool pair = batch > 1 && acc == x.scalar_type();
  at::Tensor grad_pos = pair ? at::add(grad_m.select(0, 0), grad_m.select(0, 1))
                             : grad_m.select(0, 0).to(acc, /*non_blocking=*/false, /*copy=*/true);
  for (int64_t b = pair ? 2 : 1; b < batch; ++b) grad_pos.add_(grad_m.select(0, b));
  return {need_input ? grad_input.to(x.scalar_type()) : at::Tensor(),
          expand_weight_grad(grad_weight, g).to(x.scalar_type()), grad_pos.view({-1, dim}).sum(0).to(x.scalar_type()),
          grad_pos.to(x.scalar_type())};
}

// Returns the 16 gradients (iframe, motion, residual, audio_feat, 9 visual params, 3 audio params);
// empty tensors stand for absent audio and inputs outside input_mask.
template <class Ops>
std::vector<at::Tensor> embed_backward(const at::Tensor& grad_tokens_in, const at::Tensor& grad_audio,
                                       const at::Tensor& iframe, const at::Tensor& motion,
                                       const at::Tensor& residual, const c10::optional<at::Tensor>& audio_feat,
                                       at::TensorList visual, at::TensorList audio, int64_t patch, bool expand_audio,
                                       std::array<bool, 4> input_mask) {
  check_params(iframe, motion, residual, audio_feat, visual, audio, patch);
  const int64_t batch = iframe.size(0), frames = iframe.size(1), dim = visual[0].size(0);
  const int64_t height = iframe.size(3), width = iframe.size(4), n = (height / patch) * (width / patch);
  const bool replicate = audio_feat.has_value() && expand_audio;
  TORCH_CHECK(grad_tokens_in.sizes() == at::IntArrayRef({batch, replicate ? 4 : 3, frames, n, dim}),
              "vidsel: grad_tokens has the wrong shape");
  TORCH_CHECK(grad_tokens_in.scalar_type() == iframe.scalar_type() && grad_tokens_in.device() == iframe.device(),
              "vidsel: grad_tokens must match iframe's dtype and device");
  const at::Tensor grad_tokens = grad_tokens_in.contiguous();
  // Placeholders must be distinct tensors: custom-op outputs may not alias each other.
  const auto empty = [&] { return iframe.new_empty({0}); };
  const at::Tensor inputs[3] = {iframe.contiguous(), motion.contiguous(), residual.contiguous()};
  std::vector<at::Tensor> input_grads = {empty(), empty(), empty(), empty()}, param_grads;
  at::Tensor workspace;
  for (int64_t m = 0; m < 3; ++m) {
    const PatchGeometry g = make_geometry(inputs[m], height, width, patch);
    auto grads = modality_backward<Ops>(inputs[m], g, visual[3 * m], grad_tokens, m, input_mask[m], workspace);
    if (input_mask[m]) input_grads[m] = grads[0];
    param_grads.insert(param_grads.end(), grads.begin() + 1, grads.end());
  }
  if (!audio_feat.has_value()) {
    param_grads.insert(param_grads.end(), {empty(), empty(), empty()});
  } else {
    TORCH_CHECK(grad_audio.sizes() == at::IntArrayRef({batch, frames, dim}), "vidsel: grad_audio must be (B, T, D)");
    at::Tensor grad_a = grad_audio.to(accumulate_type(iframe.scalar_type()));
    if (replicate) grad_a = grad_a + grad_tokens.select(1, 3).to(grad_a.scalar_type()).sum(2);
    grad_a = grad_a.to(iframe.scalar_type()).reshape({batch * frames, dim});
    const at::Tensor feat = audio_feat->contiguous().view({batch * frames, audio_feat->size(2)});
    if (input_mask[3]) input_grads[3] = at::mm(grad_a, audio[0]).view(audio_feat->sizes());
    param_grads.push_back(at::mm(grad_a.t(), feat));
    param_grads.push_back(grad_a.sum(0));
    param_grads.push_back(grad_a.view({batch, frames, dim}).sum(0));
  }
  input_grads.insert(input_grads.end(), param_grads.begin(), param_grads.end());
  return input_grads;
}

}  // namespace vidsel::compressed_embed
