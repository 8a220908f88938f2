// Small single-threaded float32 GEMM for the attention tiles (AVX-512 register tiles).
//
// Why not the BLAS sgemm: PyTorch's x86 wheels ship MKL, which takes its AVX2 code path on AMD CPUs
// (about 100 GFLOP/s per core here, against 245 for AVX-512 FMAs), and its per-call overhead shows on
// the 256 x 512 x 64 products of an attention tile. These kernels are called from inside
// at::parallel_for, one tile per thread, so they never spawn threads themselves.
//
// C (m x n, row-major, ldc) = alpha * A B + beta * C with beta in {0, 1}, where
//   A (m x k) is any strided view: A(i, p) = a[i * a_row + p * a_col] (so A^T needs no copy), and
//   B (k x n) is row-major with contiguous rows: B(p, j) = b[p * ldb + j].
// A B^T with B stored row-major (n x k) is first transposed into a per-thread panel (pack_transposed).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#define VIDSEL_HAVE_AVX512_GEMM 1

namespace vidsel {
namespace gemm_f32 {

constexpr int kRows = 6;          // rows of a register tile
constexpr int kVectors = 4;       // 16-float vectors per tile row: 6 x 64 floats = 24 accumulators
constexpr int64_t kDepthBlock = 128;  // k per pass so a B panel (128 x 64 floats) stays in L1

struct StridedA {
  const float* ptr;
  int64_t row, col;  // element strides
};

// Lanes of the last vector that are inside the matrix.
inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << remaining) - 1u);
}

// One register tile: rows [0, ROWS) x vectors [0, VECS) of C, the last vector masked by `last_mask`.
template <int ROWS, int VECS>
inline void tile(int64_t k, float alpha, StridedA a, const float* b, int64_t ldb, bool accumulate, float* c,
                 int64_t ldc, __mmask16 last_mask) {
  __m512 acc[ROWS][VECS];
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < VECS; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < k; ++p) {
    const float* b_row = b + p * ldb;
    __m512 bv[VECS];
#pragma GCC unroll 4
    for (int v = 0; v < VECS; ++v) {
      bv[v] = v == VECS - 1 ? _mm512_maskz_loadu_ps(last_mask, b_row + 16 * v) : _mm512_loadu_ps(b_row + 16 * v);
    }
    const float* a_col = a.ptr + p * a.col;
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const __m512 av = _mm512_set1_ps(a_col[r * a.row]);
#pragma GCC unroll 4
      for (int v = 0; v < VECS; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  const __m512 alpha_v = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < VECS; ++v) {
      float* dst = c + r * ldc + 16 * v;
      const __mmask16 mask = v == VECS - 1 ? last_mask : __mmask16(0xFFFF);
      __m512 result = _mm512_mul_ps(acc[r][v], alpha_v);
      if (accumulate) result = _mm512_add_ps(result, _mm512_maskz_loadu_ps(mask, dst));
      _mm512_mask_storeu_ps(dst, mask, result);
    }
  }
}

template <int ROWS>
inline void tile_rows(int vecs, int64_t k, float alpha, StridedA a, const float* b, int64_t ldb, bool accumulate,
                      float* c, int64_t ldc, __mmask16 last_mask) {
  switch (vecs) {
    case 1: return tile<ROWS, 1>(k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    case 2: return tile<ROWS, 2>(k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    case 3: return tile<ROWS, 3>(k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    default: return tile<ROWS, 4>(k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
  }
}

inline void tile_any(int rows, int vecs, int64_t k, float alpha, StridedA a, const float* b, int64_t ldb,
                     bool accumulate, float* c, int64_t ldc, __mmask16 last_mask) {
  switch (rows) {
    case 1: return tile_rows<1>(vecs, k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    case 2: return tile_rows<2>(vecs, k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    case 3: return tile_rows<3>(vecs, k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    case 4: return tile_rows<4>(vecs, k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    case 5: return tile_rows<5>(vecs, k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
    default: return tile_rows<6>(vecs, k, alpha, a, b, ldb, accumulate, c, ldc, last_mask);
  }
}

// C = alpha A B + beta C (beta 0 or 1; with beta 0, C is only written, never read).
inline void gemm(int64_t m, int64_t n, int64_t k, float alpha, StridedA a, const float* b, int64_t ldb, float beta,
                 float* c, int64_t ldc) {
  if (k == 0) {  // an empty product: C = beta C
    if (beta == 0.0f) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    }
    return;
  }
  constexpr int64_t panel = 16 * kVectors;
  for (int64_t p0 = 0; p0 < k; p0 += kDepthBlock) {
    const int64_t depth = std::min(kDepthBlock, k - p0);
    const bool accumulate = p0 > 0 || beta != 0.0f;
    const StridedA a_block{a.ptr + p0 * a.col, a.row, a.col};
    const float* b_block = b + p0 * ldb;
    for (int64_t j0 = 0; j0 < n; j0 += panel) {
      const int64_t cols = std::min(panel, n - j0);
      const int vecs = int((cols + 15) / 16);
      const __mmask16 last_mask = tail_mask(cols - 16 * (vecs - 1));
      for (int64_t i0 = 0; i0 < m; i0 += kRows) {
        const int rows = int(std::min<int64_t>(kRows, m - i0));
        const StridedA a_tile{a_block.ptr + i0 * a.row, a.row, a.col};
        tile_any(rows, vecs, depth, alpha, a_tile, b_block + j0, ldb, accumulate, c + i0 * ldc + j0, ldc,
                 last_mask);
      }
    }
  }
}

// out[c] = column c of the 16 x 16 block rows[0..16) (in-register transpose: 4 x 4 float transposes
// inside each 128-bit lane, then a 4 x 4 transpose of the lanes).
inline void transpose16(const __m512 rows[16], __m512 out[16]) {
  __m512 u[16];
  for (int g = 0; g < 4; ++g) {
    const __m512 lo_ab = _mm512_unpacklo_ps(rows[4 * g], rows[4 * g + 1]);  // a0 b0 a1 b1 per lane
    const __m512 hi_ab = _mm512_unpackhi_ps(rows[4 * g], rows[4 * g + 1]);  // a2 b2 a3 b3
    const __m512 lo_cd = _mm512_unpacklo_ps(rows[4 * g + 2], rows[4 * g + 3]);
    const __m512 hi_cd = _mm512_unpackhi_ps(rows[4 * g + 2], rows[4 * g + 3]);
    u[4 * g + 0] = _mm512_shuffle_ps(lo_ab, lo_cd, _MM_SHUFFLE(1, 0, 1, 0));  // a0 b0 c0 d0
    u[4 * g + 1] = _mm512_shuffle_ps(lo_ab, lo_cd, _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * g + 2] = _mm512_shuffle_ps(hi_ab, hi_cd, _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * g + 3] = _mm512_shuffle_ps(hi_ab, hi_cd, _MM_SHUFFLE(3, 2, 3, 2));
  }
  // Column 4 l + c takes lane l of u[c], u[4 + c], u[8 + c], u[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 x2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
    const __m512 x3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    out[c] = _mm512_shuffle_f32x4(x0, x2, 0x88);
    out[4 + c] = _mm512_shuffle_f32x4(x0, x2, 0xDD);
    out[8 + c] = _mm512_shuffle_f32x4(x1, x3, 0x88);
    out[12 + c] = _mm512_shuffle_f32x4(x1, x3, 0xDD);
  }
}

// dst (k x n, row stride n) = src^T, src (n x k) row-major with row stride ld_src; 16 x 16 blocks,
// ragged edges masked.
inline void pack_transposed(const float* src, int64_t ld_src, int64_t n, int64_t k, float* dst) {
  __m512 rows[16], cols[16];
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t block_rows = std::min<int64_t>(16, n - j0);
    const __mmask16 store_mask = tail_mask(block_rows);
    for (int64_t p0 = 0; p0 < k; p0 += 16) {
      const int64_t block_cols = std::min<int64_t>(16, k - p0);
      const __mmask16 load_mask = tail_mask(block_cols);
      for (int64_t r = 0; r < 16; ++r) {
        rows[r] = r < block_rows ? _mm512_maskz_loadu_ps(load_mask, src + (j0 + r) * ld_src + p0) : _mm512_setzero_ps();
      }
      transpose16(rows, cols);
      for (int64_t c = 0; c < block_cols; ++c) _mm512_mask_storeu_ps(dst + (p0 + c) * n + j0, store_mask, cols[c]);
    }
  }
}

// C = alpha A B^T + beta C with A (m x k) strided and B (n x k) row-major: B^T is packed per thread.
inline void gemm_b_transposed(int64_t m, int64_t n, int64_t k, float alpha, StridedA a, const float* b,
                              int64_t ldb, float beta, float* c, int64_t ldc) {
  thread_local std::vector<float> packed;
  if (packed.size() < size_t(n * k)) packed.resize(size_t(n * k));
  pack_transposed(b, ldb, n, k, packed.data());
  gemm(m, n, k, alpha, a, packed.data(), n, beta, c, ldc);
}

}  // namespace gemm_f32
}  // namespace vidsel

#endif  // __AVX512F__
