// The one TORCH_LIBRARY of vidsel: schemas of every compiled op (namespace vidsel_C).
// Kernels register per device with TORCH_LIBRARY_IMPL in their own files
// (csrc/cpu/<op>.cpp for CPU, csrc/cuda/<op>_binding.cpp for CUDA).
// The public, autograd-aware ops live in Python (vidsel/ops) and call these.
#include "cpu/common.h"
#include "cpu/gemm.h"
#include "cpu/gemm_f32.h"

#include <string>

namespace {
// What the CPU kernels were compiled for (python -m vidsel.info): without AVX-512 only the BLAS is a GEMM
// contender (cpu/gemm.h), several times slower than vidsel's tiles on AMD CPUs.
std::string cpu_features() {
  std::string features;
#if defined(VIDSEL_HAVE_AVX512_GEMM)
  features += "avx512 (vidsel GEMM)";
#else
  features += "no avx512 (BLAS GEMM)";
#endif
#if defined(__AVX2__)
  features += ", avx2";
#endif
#if defined(_OPENMP)
  features += ", openmp";
#endif
  return features;
}
}  // namespace

namespace vidsel::cpu_gemm {
at::Tensor gemm_on_path(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool trans_a, bool trans_b,
                        double beta, std::string path);
}

TORCH_LIBRARY(vidsel_C, m) {
  // Utilities (no tensors, no device kernels).
  m.def("set_debug_fill(bool enabled) -> ()", &vidsel::set_debug_fill);
  m.def("cpu_features() -> str", &cpu_features);
  // Runtime GEMM choice (csrc/cpu/gemm.h): one line per shape class; force "auto" | "vidsel" | "blas".
  m.def("cpu_gemm_report() -> str[]", &vidsel::cpu_gemm::report);
  m.def("set_cpu_gemm_mode(str mode) -> ()", [](std::string mode) { vidsel::cpu_gemm::set_mode(mode); });
  m.def("cpu_gemm_mode() -> str", &vidsel::cpu_gemm::mode);
  m.def("cpu_gemm_on_path(Tensor a, Tensor b, Tensor c, bool trans_a, bool trans_b, float beta, str path) -> Tensor",
        &vidsel::cpu_gemm::gemm_on_path);

  // Token merging (TESTA §3.2.2, ToMe). partition: 0 = alternate (ToMe parity), 1 = importance,
  // 2 = alternate with the parity restarted after the protected tokens.
  m.def(
      "bipartite_match(Tensor metric, int r, int partition, Tensor? importance, int protected_tokens)"
      " -> (Tensor kept_index, Tensor merged_index, Tensor merged_into, Tensor dst_index)");
  m.def("scatter_rows(Tensor x, Tensor dst_index, Tensor? weight, int n_out) -> Tensor");
  m.def("gather_rows(Tensor y, Tensor dst_index, Tensor? weight) -> Tensor");

  // Token selection (STTS §3.2-3.3, MIST §3.2): hard top-k gather and anchor-based spatial selection.
  m.def("topk_gather(Tensor x, Tensor scores, int k, bool sorted_by_index) -> (Tensor selected, Tensor index)");
  m.def("topk_gather_backward(Tensor grad, Tensor index, int n) -> Tensor");
  m.def("anchor_scores(Tensor scores, int anchor_h, int anchor_w, int stride_h, int stride_w) -> Tensor");
  m.def(
      "anchor_scores_backward(Tensor grad, int height, int width, int anchor_h, int anchor_w, int stride_h,"
      " int stride_w) -> Tensor");
  m.def("anchor_gather(Tensor x, Tensor weights, int anchor_h, int anchor_w, int stride_h, int stride_w) -> Tensor");
  m.def(
      "anchor_gather_backward(Tensor grad, Tensor x, Tensor weights, int stride_h, int stride_w, bool need_grad_x,"
      " bool need_grad_weights) -> (Tensor grad_x, Tensor grad_weights)");

  // Block-causal chunk attention (Mirasol3B §3.3.1 eq. 8). The chunk layout comes from Python
  // (vidsel/reference/chunk_attention.py:chunk_layout): key_end (Lq,) int64, query row i sees keys
  // [0, key_end[i]); first_row (Lk,) int64, the first query row that sees key j. lse: (B, H, Lq)
  // logsumexp of the scores, float32 (float64 for float64 inputs). grad_bias is (B, Lk) when bias_grad,
  // else empty.
  m.def(
      "chunk_attention(Tensor q, Tensor k, Tensor v, Tensor key_end, Tensor? key_bias, float scale)"
      " -> (Tensor out, Tensor lse)");
  m.def(
      "chunk_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
      " Tensor key_end, Tensor first_row, Tensor? key_bias, float scale, bool bias_grad)"
      " -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias)");

  // Random-sampling selection (STTS §3.2 eq. 7-8 perturbed top-k; MIST §3.2 / App. A Gumbel top-k).
  // Noise: Philox4x32-10 keyed by seed, mapping in vidsel/reference/philox.py; regenerated in backward.
  m.def("perturbed_topk(Tensor scores, int k, int num_samples, float sigma, int seed) -> Tensor");
  m.def(
      "perturbed_topk_backward(Tensor grad, Tensor scores, int k, int num_samples, float sigma, int seed)"
      " -> Tensor");
  // Y^T x for sparse indicators (STTS eq. 9); grad_indicators is restricted to the support of Y.
  m.def("indicator_matmul(Tensor indicators, Tensor x) -> Tensor");
  m.def(
      "indicator_matmul_backward(Tensor grad, Tensor indicators, Tensor x, bool need_x, bool need_indicators)"
      " -> (Tensor grad_x, Tensor grad_indicators)");
  m.def("gumbel_topk(Tensor logits, int k, float tau, bool hard, bool replacement, int seed) -> Tensor");
  m.def("gumbel_topk_backward(Tensor grad, Tensor logits, int k, float tau, bool replacement, int seed) -> Tensor");
  // Test hook: (B, S, L) float64 noise of the stream on like's device; kind 0 uniform, 1 normal, 2 gumbel.
  m.def("philox_noise(Tensor like, int seed, int batch, int samples, int length, int stream, int kind) -> Tensor");

  // Compressed-domain patch embedding (MM-ViT §3.2 eq. 1-4). visual_params: 9 tensors (weight, bias, pos)
  // of iframe, motion, residual; audio_params: 3 (weight, bias, pos) with audio, else empty. Returns
  // tokens (B, 3|4, T, N, D) and audio tokens (B, T, D) (empty without audio). The backward returns 16
  // gradients (4 inputs, 12 params); empty ones for absent audio and inputs outside input_mask.
  m.def(
      "compressed_patch_embed(Tensor iframe, Tensor motion, Tensor residual, Tensor? audio_feat,"
      " Tensor[] visual_params, Tensor[] audio_params, int patch, bool expand_audio) -> (Tensor, Tensor)");
  m.def(
      "compressed_patch_embed_backward(Tensor grad_tokens, Tensor grad_audio, Tensor iframe, Tensor motion,"
      " Tensor residual, Tensor? audio_feat, Tensor[] visual_params, Tensor[] audio_params, int patch,"
      " bool expand_audio, bool[4] input_mask) -> Tensor[]");
}
