// Torch-free helpers shared by vidsel's CUDA launchers (.cu files must not include torch headers).
#pragma once

#include <cstdint>

namespace vidsel::cuda {

// Element types the launchers accept; bindings map at::ScalarType onto these.
enum class ScalarKind : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace vidsel::cuda
