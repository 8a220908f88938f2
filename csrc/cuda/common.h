// Torch-free helpers shared by vidsel's CUDA launchers (.cu files must not include torch headers).
//
// Every launcher returns the cudaError_t of its launches (cudaGetLastError after each), and its
// binding turns a failure into a RuntimeError naming the op (check_launch in binding_common.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vidsel::cuda {

// Element types the launchers accept; bindings map at::ScalarType onto these.
enum class ScalarKind : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// gridDim.y and gridDim.z are limited to 65535: kernels loop over that axis with a stride of gridDim.y
// (grid_y_for folds the launch), so any batch, group or frame count runs.
constexpr int64_t kMaxGridY = 65535;
inline unsigned grid_y_for(int64_t count) {
  return static_cast<unsigned>(count < kMaxGridY ? (count > 0 ? count : 1) : kMaxGridY);
}
// gridDim.x is limited to 2^31 - 1; element-wise kernels use grid-stride loops past this many blocks.
constexpr int64_t kMaxGridX = 1 << 20;
inline unsigned grid_x_for(int64_t blocks) {
  return static_cast<unsigned>(blocks < kMaxGridX ? (blocks > 0 ? blocks : 1) : kMaxGridX);
}

// First error of a sequence of launches: `status = first_error(status, cudaGetLastError())`.
inline cudaError_t first_error(cudaError_t so_far, cudaError_t next) { return so_far != cudaSuccess ? so_far : next; }

// Raises the dynamic shared-memory limit of `kernel` to `bytes` when it passes the 48 KB default.
// Returns cudaErrorInvalidValue when the device cannot give that much to one block.
template <typename Kernel>
cudaError_t allow_dynamic_shared(Kernel kernel, size_t bytes) {
  constexpr size_t kDefaultLimit = 48 * 1024;
  if (bytes <= kDefaultLimit) return cudaSuccess;
  int device = 0, optin = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (status != cudaSuccess) return status;
  if (bytes > static_cast<size_t>(optin)) return cudaErrorInvalidValue;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

// Ranking rule of every selection kernel (the reference's too): larger scores first, NaN after every
// number (-inf included), equal scores (and NaNs among themselves) by lower position.
// True when item (a, ia) ranks ahead of item (b, ib).
__host__ __device__ inline bool ranks_ahead(double a, int64_t ia, double b, int64_t ib) {
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan != b_nan) return b_nan;
  if (a_nan || a == b) return ia < ib;
  return a > b;
}

}  // namespace vidsel::cuda
