// Philox4x32-10 counter-based random stream for the CPU kernels (Salmon et al., SC'11; Random123).
//
// The mapping (seed, counter) -> value is defined once, in vidsel/reference/philox.py, and
// reproduced bit for bit here, in csrc/cuda/philox.cuh and kernels/philox.py:
//   key = (seed & 0xffffffff, seed >> 32); counter = (l / 4, sample, batch row, stream)
//   u_w = (word_w + 0.5) * 2^-32 for the four output words w
//   normal: Box-Muller, l % 4 in {0,1} from (u_0, u_1), {2,3} from (u_2, u_3); even l -> cos, odd -> sin
//   gumbel: -log(-log(u_{l % 4}))
// Torch-free: plain C++ so the same header could serve any host code.
#pragma once

#include <cmath>
#include <cstdint>

namespace vidsel::philox {

constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr int kRounds = 10;
constexpr uint32_t kStreamPerturbedTopk = 1;  // STTS eq. 7-8 Gaussian noise
constexpr uint32_t kStreamGumbelTopk = 2;     // MIST Gumbel-softmax noise
constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr double kInv2Pow32 = 1.0 / 4294967296.0;

struct Key {
  uint32_t k0, k1;
};

inline Key key_from_seed(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return {static_cast<uint32_t>(s & 0xffffffffu), static_cast<uint32_t>(s >> 32)};
}

// One Philox4x32-10 block: counter (c[0..3]) -> 4 words, in place.
inline void philox4x32(uint32_t c[4], Key key) {
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kRoundA) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kRoundB) * c[2];
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = static_cast<uint32_t>(p1);
    c[2] = n2;
    c[3] = static_cast<uint32_t>(p0);
    k0 += kKeyA;
    k1 += kKeyB;
  }
}

inline double word_to_uniform(uint32_t w) { return (static_cast<double>(w) + 0.5) * kInv2Pow32; }

// Fills words[4 * j + w] (j < blocks) with the Philox words of counters (j, sample, row, stream).
// Structure-of-arrays rounds so the compiler vectorises across blocks.
inline void philox_row_words(uint32_t* words, int64_t blocks, uint32_t sample, uint32_t row, uint32_t stream,
                             Key key) {
  constexpr int64_t kLanes = 16;
  for (int64_t j0 = 0; j0 < blocks; j0 += kLanes) {
    uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) {
      c0[i] = static_cast<uint32_t>(j0 + i);
      c1[i] = sample;
      c2[i] = row;
      c3[i] = stream;
    }
    uint32_t k0 = key.k0, k1 = key.k1;
    for (int r = 0; r < kRounds; ++r) {
      for (int64_t i = 0; i < kLanes; ++i) {
        const uint64_t p0 = static_cast<uint64_t>(kRoundA) * c0[i];
        const uint64_t p1 = static_cast<uint64_t>(kRoundB) * c2[i];
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[i] ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[i] ^ k1;
        c0[i] = n0;
        c1[i] = static_cast<uint32_t>(p1);
        c2[i] = n2;
        c3[i] = static_cast<uint32_t>(p0);
      }
      k0 += kKeyA;
      k1 += kKeyB;
    }
    const int64_t count = blocks - j0 < kLanes ? blocks - j0 : kLanes;
    for (int64_t i = 0; i < count; ++i) {
      uint32_t* out = words + 4 * (j0 + i);
      out[0] = c0[i];
      out[1] = c1[i];
      out[2] = c2[i];
      out[3] = c3[i];
    }
  }
}

// Standard normals z[0..length) of (sample, row) of `stream`. `words` is scratch of 4*ceil(L/4).
inline void normal_row(double* z, uint32_t* words, int64_t length, uint32_t sample, uint32_t row, uint32_t stream,
                       Key key) {
  const int64_t blocks = (length + 3) / 4;
  philox_row_words(words, blocks, sample, row, stream, key);
  for (int64_t p = 0; p < 2 * blocks; ++p) {  // pair p uses words (2p, 2p+1) -> z[2p] (cos), z[2p+1] (sin)
    const double radius = std::sqrt(-2.0 * std::log(word_to_uniform(words[2 * p])));
    const double angle = kTwoPi * word_to_uniform(words[2 * p + 1]);
    const int64_t l = 2 * p;
    if (l < length) z[l] = radius * std::cos(angle);
    if (l + 1 < length) z[l + 1] = radius * std::sin(angle);
  }
}

// Standard Gumbel noise g[0..length) of (sample, row) of `stream`.
inline void gumbel_row(double* g, uint32_t* words, int64_t length, uint32_t sample, uint32_t row, uint32_t stream,
                       Key key) {
  philox_row_words(words, (length + 3) / 4, sample, row, stream, key);
  for (int64_t l = 0; l < length; ++l) g[l] = -std::log(-std::log(word_to_uniform(words[l])));
}

}  // namespace vidsel::philox
