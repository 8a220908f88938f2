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

#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

// The transforms must inline into the `omp simd` loops to vectorise; in a large translation unit GCC's
// growth limits may otherwise emit them out of line (one scalar call per element: 5x slower).
#if defined(__GNUC__)
#define VIDSEL_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define VIDSEL_ALWAYS_INLINE inline
#endif

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

VIDSEL_ALWAYS_INLINE double word_to_uniform(uint32_t w) { return (static_cast<double>(w) + 0.5) * kInv2Pow32; }

// Fills words[4 * j + w] (j < blocks) with the Philox words of counters (j, sample, row, stream).
// One block per SIMD lane: the ten rounds unroll and the loop over blocks vectorises.
inline void philox_row_words(uint32_t* words, int64_t blocks, uint32_t sample, uint32_t row, uint32_t stream,
                             Key key) {
#pragma omp simd
  for (int64_t j = 0; j < blocks; ++j) {
    uint32_t c0 = static_cast<uint32_t>(j), c1 = sample, c2 = row, c3 = stream;
    uint32_t k0 = key.k0, k1 = key.k1;
#pragma GCC unroll 10
    for (int r = 0; r < kRounds; ++r) {
      const uint64_t p0 = static_cast<uint64_t>(kRoundA) * c0;
      const uint64_t p1 = static_cast<uint64_t>(kRoundB) * c2;
      c0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
      c2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      k0 += kKeyA;
      k1 += kKeyB;
    }
    words[4 * j] = c0;
    words[4 * j + 1] = c1;
    words[4 * j + 2] = c2;
    words[4 * j + 3] = c3;
  }
}

// Branch-free float64 log for x > 0 (normal numbers), ~1 ulp: x = 2^e m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(f), f = (m - 1) / (m + 1), |f| < 0.1716, by its odd series to f^23 (error < 1e-17).
// Written with 64-bit integer ops and selects only, so loops over it vectorise (no libm call).
VIDSEL_ALWAYS_INLINE double log_positive(double x) {
  const uint64_t bits = std::bit_cast<uint64_t>(x);
  double m = std::bit_cast<double>((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);  // m in [1, 2)
  // exponent as a double without an int->double conversion: 2^52 + biased exponent, minus the offsets
  double e = std::bit_cast<double>((bits >> 52) | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0);
  const bool high = m > 1.4142135623730950488;
  m = high ? 0.5 * m : m;
  e = high ? e + 1.0 : e;
  const double f = (m - 1.0) / (m + 1.0);
  const double s = f * f;
  double series = 1.0 / 23;
  series = series * s + 1.0 / 21;
  series = series * s + 1.0 / 19;
  series = series * s + 1.0 / 17;
  series = series * s + 1.0 / 15;
  series = series * s + 1.0 / 13;
  series = series * s + 1.0 / 11;
  series = series * s + 1.0 / 9;
  series = series * s + 1.0 / 7;
  series = series * s + 1.0 / 5;
  series = series * s + 1.0 / 3;
  const double log_m = 2.0 * f + 2.0 * f * s * series;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // ln 2 split so e * kLn2Hi is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  return e * kLn2Hi + (log_m + e * kLn2Lo);
}

// (cos, sin) of 2 pi c for c in [0, 1], branch-free: c - q/4 -> angle in [-pi/4, pi/4], Taylor
// series to degree 18/19 (error < 1e-17), then the quadrant q rotates the pair.
VIDSEL_ALWAYS_INLINE void cos_sin_2pi(double c, double& cos_out, double& sin_out) {
  const double centred = c - std::nearbyint(c);             // [-1/2, 1/2], exact (floor would not vectorise)
  const double quarter = std::nearbyint(4.0 * centred);      // q in {-2, ..., 2}
  const double a = kTwoPi * (centred - 0.25 * quarter);          // exact subtraction, |a| <= pi/4
  const double a2 = a * a;
  double sin_poly = -1.0 / 121645100408832000.0;  // -1/19!
  sin_poly = sin_poly * a2 + 1.0 / 355687428096000.0;
  sin_poly = sin_poly * a2 - 1.0 / 1307674368000.0;
  sin_poly = sin_poly * a2 + 1.0 / 6227020800.0;
  sin_poly = sin_poly * a2 - 1.0 / 39916800.0;
  sin_poly = sin_poly * a2 + 1.0 / 362880.0;
  sin_poly = sin_poly * a2 - 1.0 / 5040.0;
  sin_poly = sin_poly * a2 + 1.0 / 120.0;
  sin_poly = sin_poly * a2 - 1.0 / 6.0;
  const double sin_a = a + a * a2 * sin_poly;
  double cos_poly = 1.0 / 6402373705728000.0;  // 1/18!
  cos_poly = cos_poly * a2 - 1.0 / 20922789888000.0;
  cos_poly = cos_poly * a2 + 1.0 / 87178291200.0;
  cos_poly = cos_poly * a2 - 1.0 / 479001600.0;
  cos_poly = cos_poly * a2 + 1.0 / 3628800.0;
  cos_poly = cos_poly * a2 - 1.0 / 40320.0;
  cos_poly = cos_poly * a2 + 1.0 / 720.0;
  cos_poly = cos_poly * a2 - 1.0 / 24.0;
  cos_poly = cos_poly * a2 + 0.5;
  const double cos_a = 1.0 - a2 * cos_poly;
  // rotate by q * pi/2: q = 0 -> (c, s); 1 -> (-s, c); +-2 -> (-c, -s); -1 -> (s, -c).
  // Bitwise | (not ||) keeps the selects branch-free so the caller's loop vectorises.
  const bool plus_one = quarter == 1.0, minus_one = quarter == -1.0, half_turn = quarter * quarter == 4.0;
  const bool odd = plus_one | minus_one;
  const double cos_base = odd ? sin_a : cos_a;
  const double sin_base = odd ? cos_a : sin_a;
  const bool flip_cos = plus_one | half_turn;
  const bool flip_sin = minus_one | half_turn;
  cos_out = flip_cos ? -cos_base : cos_base;
  sin_out = flip_sin ? -sin_base : sin_base;
}

// radius[0..n) <- sqrt(radius): explicit AVX when available (GCC will not vectorise std::sqrt while
// -fmath-errno is on, and the scalar loop costs as much as the rest of the Box-Muller transform).
inline void sqrt_in_place(double* values, int64_t n) {
  int64_t i = 0;
#if defined(__AVX__)
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(values + i, _mm256_sqrt_pd(_mm256_loadu_pd(values + i)));
#endif
  for (; i < n; ++i) values[i] = std::sqrt(values[i]);
}

// Scratch of one row draw: the Philox words and the Box-Muller intermediates.
struct RowScratch {
  std::vector<uint32_t> words;    // 4 * ceil(L / 4)
  std::vector<double> trig;       // cos/sin per item, padded length
  std::vector<double> radius;     // one per pair
  explicit RowScratch(int64_t length) {
    const int64_t blocks = (length + 3) / 4;
    words.resize(4 * blocks);
    trig.resize(4 * blocks);
    radius.resize(2 * blocks);
  }
};

// Standard normals z[0..length) of (sample, row) of `stream`. The transcendental part vectorises;
// the square roots run in their own loop because libm's errno handling of sqrt keeps GCC from
// vectorising any loop containing it.
inline void normal_row(double* z, RowScratch& scratch, int64_t length, uint32_t sample, uint32_t row, uint32_t stream,
                       Key key) {
  const int64_t blocks = (length + 3) / 4, pairs = 2 * blocks;
  const uint32_t* words = scratch.words.data();
  double* trig = scratch.trig.data();
  double* radius = scratch.radius.data();
  philox_row_words(scratch.words.data(), blocks, sample, row, stream, key);
#pragma omp simd
  for (int64_t p = 0; p < pairs; ++p) {  // pair p: words (2p, 2p+1) -> z[2p] (cos), z[2p+1] (sin)
    radius[p] = -2.0 * log_positive(word_to_uniform(words[2 * p]));
    double cos_v, sin_v;
    cos_sin_2pi(word_to_uniform(words[2 * p + 1]), cos_v, sin_v);
    trig[2 * p] = cos_v;
    trig[2 * p + 1] = sin_v;
  }
  sqrt_in_place(radius, pairs);
#pragma omp simd
  for (int64_t l = 0; l < length; ++l) z[l] = radius[l / 2] * trig[l];
}

// Standard Gumbel noise g[0..length) of (sample, row) of `stream`.
inline void gumbel_row(double* g, RowScratch& scratch, int64_t length, uint32_t sample, uint32_t row,
                       uint32_t stream, Key key) {
  const uint32_t* words = scratch.words.data();
  philox_row_words(scratch.words.data(), (length + 3) / 4, sample, row, stream, key);
#pragma omp simd
  for (int64_t l = 0; l < length; ++l) g[l] = -log_positive(-log_positive(word_to_uniform(words[l])));
}

}  // namespace vidsel::philox
