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
}
