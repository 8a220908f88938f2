// The one TORCH_LIBRARY of vidsel: schemas of every compiled op (namespace vidsel_C).
// Kernels register per device with TORCH_LIBRARY_IMPL in their own files
// (csrc/cpu/<op>.cpp for CPU, csrc/cuda/<op>_binding.cpp for CUDA).
// The public, autograd-aware ops live in Python (vidsel/ops) and call these.
#include "cpu/common.h"

TORCH_LIBRARY(vidsel_C, m) {
  m.def("set_debug_fill(bool enabled) -> ()", &vidsel::set_debug_fill);

  // Token merging (TESTA §3.2.2, ToMe). partition: 0 = alternate, 1 = importance.
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

  // Block-causal chunk attention (Mirasol3B §3.3.1 eq. 8). lse: (B, H, Lq) logsumexp of the scores,
  // float32 (float64 for float64 inputs). grad_bias is (B, Lk) when bias_grad, else empty.
  m.def(
      "chunk_attention_fwd(Tensor q, Tensor k, Tensor v, int[] chunk_lens, Tensor? key_bias, float scale)"
      " -> (Tensor out, Tensor lse)");
  m.def(
      "chunk_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int[] chunk_lens,"
      " Tensor? key_bias, float scale, bool bias_grad)"
      " -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias)");

  // Random-sampling selection (STTS §3.2 eq. 7-8 perturbed top-k; MIST §3.2 / App. A Gumbel top-k).
  // Noise: Philox4x32-10 keyed by seed, mapping in vidsel/reference/philox.py; regenerated in backward.
  m.def("perturbed_topk(Tensor scores, int k, int num_samples, float sigma, int seed) -> Tensor");
  m.def(
      "perturbed_topk_backward(Tensor grad, Tensor scores, int k, int num_samples, float sigma, int seed)"
      " -> Tensor");
  m.def("gumbel_topk(Tensor logits, int k, float tau, bool hard, bool replacement, int seed) -> Tensor");
  m.def("gumbel_topk_backward(Tensor grad, Tensor logits, int k, float tau, bool replacement, int seed) -> Tensor");
  m.def("philox_noise(int seed, int batch, int samples, int length, int stream, int kind) -> Tensor");
}
