// Philox4x32-10 for the CUDA kernels: the stream of vidsel/reference/philox.py (torch-free).
// key = (seed & 0xffffffff, seed >> 32); item l of (row, sample) uses counter (l / 4, sample, row,
// stream) and word l % 4; u = (word + 0.5) * 2^-32; normal = Box-Muller on words (0,1) / (2,3)
// (even l cosine, odd l sine); gumbel = -log(-log(u)). All transforms in double.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vidsel::cuda::philox {

constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr uint32_t kStreamPerturbedTopk = 1;
constexpr uint32_t kStreamGumbelTopk = 2;

struct Words {
  uint32_t w[4];
};

__host__ __device__ inline Words philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed & 0xffffffffull), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kRoundA) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kRoundB) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = static_cast<uint32_t>(p1);
    c2 = n2;
    c3 = static_cast<uint32_t>(p0);
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return {{c0, c1, c2, c3}};
}

__host__ __device__ inline double to_uniform(uint32_t word) {
  return (static_cast<double>(word) + 0.5) * 2.3283064365386962890625e-10;
}

__device__ inline double uniform_at(uint64_t seed, int64_t item, uint32_t sample, uint32_t row, uint32_t stream) {
  const Words words = philox4x32(static_cast<uint32_t>(item / 4), sample, row, stream, seed);
  return to_uniform(words.w[item % 4]);
}

__device__ inline double normal_at(uint64_t seed, int64_t item, uint32_t sample, uint32_t row, uint32_t stream) {
  const Words words = philox4x32(static_cast<uint32_t>(item / 4), sample, row, stream, seed);
  const int lane = static_cast<int>(item % 4);
  const double radius = sqrt(-2.0 * log(to_uniform(words.w[lane < 2 ? 0 : 2])));
  const double angle = 6.283185307179586476925286766559 * to_uniform(words.w[lane < 2 ? 1 : 3]);
  return radius * (lane % 2 == 0 ? cos(angle) : sin(angle));
}

__device__ inline double gumbel_at(uint64_t seed, int64_t item, uint32_t sample, uint32_t row, uint32_t stream) {
  return -log(-log(uniform_at(seed, item, sample, row, stream)));
}

}  // namespace vidsel::cuda::philox
