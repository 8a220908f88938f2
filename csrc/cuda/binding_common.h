// Helpers shared by the CUDA bindings (*_binding.cpp). These include torch; .cu files never do.
#pragma once

#include <ATen/ATen.h>

#include "cuda/common.h"

#define VIDSEL_CHECK_CUDA(t, name) \
  TORCH_CHECK((t).is_cuda(), "vidsel(cuda): ", name, " must be a CUDA tensor, got ", (t).device())

namespace vidsel::cuda {

// Maps a floating tensor's dtype onto the element kinds the torch-free launchers take.
inline ScalarKind scalar_kind(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScalarKind::kFloat32;
    case at::kDouble: return ScalarKind::kFloat64;
    case at::kHalf: return ScalarKind::kFloat16;
    case at::kBFloat16: return ScalarKind::kBFloat16;
    default: TORCH_CHECK(false, "vidsel(cuda): unsupported dtype ", t.scalar_type());
  }
}

// Raises for a failed launch (bad configuration, missing kernel image, too much shared memory ...).
inline void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "vidsel(cuda): ", op, " kernel launch failed: ", cudaGetErrorString(status));
}

// Index tensors are checked for dtype here; their values are checked on the device by the kernels
// that read them (a device-side assert, no host synchronisation), as PyTorch's own index kernels do.
inline void check_index_dtype(const at::Tensor& index, const char* name) {
  TORCH_CHECK(index.scalar_type() == at::kLong, "vidsel(cuda): ", name, " must be int64, got ", index.scalar_type());
}

}  // namespace vidsel::cuda
