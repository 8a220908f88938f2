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

// Every index in [0, upper), checked before a kernel dereferences it.
inline void check_index_range(const at::Tensor& index, int64_t upper, const char* name) {
  TORCH_CHECK(index.scalar_type() == at::kLong, "vidsel(cuda): ", name, " must be int64");
  if (index.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(index);
  TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < upper, "vidsel(cuda): ", name,
              " values must lie in [0, ", upper, ")");
}

}  // namespace vidsel::cuda
