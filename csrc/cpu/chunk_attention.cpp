// Block-causal chunk attention (Mirasol3B §3.3.1, eq. 8): a query in time chunk t attends to every
// key of chunks <= t, full attention inside its own chunk.
//
// Flash-style on the CPU: every job owns one (batch, head, query tile); a queue (cpu/common.h JobQueue)
// hands them out, longest key prefixes first, so a descheduled thread's share is taken over. A query
// tile never crosses a chunk boundary unless the chunks are tiny, so all its rows see the same key
// prefix [0, chunk_end) and the key loop simply stops there: tiles above the chunk diagonal are never
// visited. Scores of one
// (query tile x key block) live in a small per-thread buffer; the softmax is online (running max and
// sum), the logsumexp is saved for the backward, which recomputes the scores. No L x L tensor exists.
// The two products of every block run single-threaded inside our parallel region: float32 on the GEMM
// path chosen per machine (cpu/gemm.h), float64 on the BLAS dgemm; the softmax loops are
// `omp simd` with a polynomial exp.
// The backward runs one job per (batch, head), which owns that head's dK / dV / dbias; with fewer
// heads than 2x threads it splits query tiles over threads with per-thread key-gradient buffers.
#include "cpu/common.h"
#include "cpu/gemm.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

extern "C" {
// Fortran BLAS (column-major), exported by libtorch_cpu.
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace vidsel {
namespace {

constexpr int64_t kQueryTile = 256;     // rows of a query tile (cut early at chunk boundaries)
constexpr int64_t kMinTileRows = 32;    // tiny chunks are packed into one tile, masked per row
constexpr int64_t kKeyBlock = 512;      // keys per score block in the forward
constexpr int64_t kBwdQueryTile = 128;  // the backward keeps 2 score-sized buffers per block
constexpr int64_t kBwdKeyBlock = 256;

// Row-major C (m x n) = alpha * op(A) op(B) + beta * C, where op(A) is m x k and op(B) is k x n.
// trans_a: A is stored k x m; trans_b: B is stored n x k. float32 runs on the GEMM path chosen at run time
// for attention tiles (cpu/gemm.h: vidsel's AVX-512 tiles or the BLAS; the ops pick it before their
// parallel region, so this is a cached lookup), float64 on the BLAS dgemm.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cpu_gemm::sgemm(cpu_gemm::choose(cpu_gemm::ShapeClass::kAttentionTile), trans_a, trans_b, m, n, k, alpha, a, lda,
                  b, ldb, beta, c, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int mm = int(n), nn = int(m), kk = int(k), la = int(ldb), lb = int(lda), lc = int(ldc);
  dgemm_(&ta, &tb, &mm, &nn, &kk, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

// exp(x) for x <= 0 (softmax arguments), branch-free so `omp simd` loops vectorise it:
// 2^(x log2 e) = 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by a degree-6 Taylor series
// of e^(f ln 2) (relative error < 2e-7, about float epsilon).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.44269504088896341f;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (t + magic) - magic;
  const float r = (t - n) * 0.693147180559945309f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// max of s[0..n): 16 independent lanes so the compiler emits vector max (a plain max reduction
// stays scalar without -ffast-math).
template <typename T>
T max_of(const T* s, int64_t n) {
  constexpr int64_t kLanes = 16;
  T lanes[kLanes];
  std::fill(lanes, lanes + kLanes, -std::numeric_limits<T>::infinity());
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = lanes[l] > s[c + l] ? lanes[l] : s[c + l];
  }
  for (; c < n; ++c) lanes[0] = lanes[0] > s[c] ? lanes[0] : s[c];
  T best = lanes[0];
  for (int64_t l = 1; l < kLanes; ++l) best = best > lanes[l] ? best : lanes[l];
  return best;
}

struct Tile {
  int64_t begin, end;  // query rows [begin, end)
};

// Query tiles: at most `max_rows` rows, cut at chunk boundaries once they hold kMinTileRows rows.
std::vector<Tile> make_tiles(const std::vector<int64_t>& key_end, int64_t max_rows) {
  std::vector<Tile> tiles;
  const int64_t lq = int64_t(key_end.size());
  int64_t begin = 0;
  for (int64_t row = 1; row <= lq; ++row) {
    const int64_t rows = row - begin;
    const bool boundary = row == lq || key_end[row] != key_end[row - 1];
    if (row == lq || rows == max_rows || (boundary && rows >= kMinTileRows)) {
      tiles.push_back({begin, row});
      begin = row;
    }
  }
  return tiles;
}

template <typename T>
struct Problem {
  const T *q, *k, *v, *bias;  // bias: (B, Lk) or nullptr
  int64_t batch, heads, lq, lk, dim;
  T scale;
  std::vector<int64_t> key_end;
  std::vector<Tile> tiles;

  // Strides (batch, head, row) of q, k, v: any layout whose last dimension is contiguous is read in
  // place (streaming slices of a cache, heads split from a fused qkv projection), the row stride is the
  // BLAS leading dimension.
  int64_t q_stride[3], k_stride[3], v_stride[3];

  static const T* row_ptr(const T* base, const int64_t* stride, int64_t bh, int64_t heads, int64_t row) {
    return base + (bh / heads) * stride[0] + (bh % heads) * stride[1] + row * stride[2];
  }
  const T* q_rows(int64_t bh, int64_t row) const { return row_ptr(q, q_stride, bh, heads, row); }
  const T* k_rows(int64_t bh, int64_t col) const { return row_ptr(k, k_stride, bh, heads, col); }
  const T* v_rows(int64_t bh, int64_t col) const { return row_ptr(v, v_stride, bh, heads, col); }
};

// scores (rows x cols, ld) of key block [j0, j0 + cols): add the key bias, and turn keys beyond each
// row's chunk end into -inf. Returns nothing; rows with no visible key in the block are all -inf.
template <typename T>
void bias_and_mask(const Problem<T>& p, int64_t b, const Tile& tile, int64_t j0, int64_t cols, T* scores,
                   int64_t ld) {
  const T* bias = p.bias ? p.bias + b * p.lk + j0 : nullptr;
  const bool needs_mask = p.key_end[tile.begin] < j0 + cols;
  for (int64_t r = 0; r < tile.end - tile.begin; ++r) {
    T* s = scores + r * ld;
    if (bias) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) s[c] += bias[c];
    }
    if (needs_mask) {
      const int64_t visible = std::clamp<int64_t>(p.key_end[tile.begin + r] - j0, 0, cols);
      for (int64_t c = visible; c < cols; ++c) s[c] = -std::numeric_limits<T>::infinity();
    }
  }
}

// Calls visit(r0, r1, visible) for each run of tile rows [r0, r1) sharing one chunk end, with the
// number of keys of block [j0, j0 + cols) they see. The P-side products run per run over the
// visible keys only, so a masked key never contributes, not even a NaN or inf in k or v (0 * NaN).
template <typename T, typename Visit>
void for_each_row_run(const Problem<T>& p, const Tile& tile, int64_t j0, int64_t cols, Visit visit) {
  for (int64_t r0 = 0; r0 < tile.end - tile.begin;) {
    const int64_t key_end = p.key_end[tile.begin + r0];
    int64_t r1 = r0 + 1;
    while (tile.begin + r1 < tile.end && p.key_end[tile.begin + r1] == key_end) ++r1;
    const int64_t visible = std::clamp<int64_t>(key_end - j0, 0, cols);
    if (visible > 0) visit(r0, r1, visible);
    r0 = r1;
  }
}

// ---------------------------------------------------------------- forward

template <typename T>
void forward_tile(const Problem<T>& p, int64_t bh, const Tile& tile, T* out, T* lse, std::vector<T>& scores,
                  std::vector<T>& acc, std::vector<T>& row_max, std::vector<T>& row_sum) {
  const int64_t b = bh / p.heads, rows = tile.end - tile.begin, d = p.dim;
  const int64_t key_stop = p.key_end[tile.end - 1];
  const T neg_inf = -std::numeric_limits<T>::infinity();
  std::fill(acc.begin(), acc.begin() + rows * d, T(0));
  std::fill(row_max.begin(), row_max.begin() + rows, neg_inf);
  std::fill(row_sum.begin(), row_sum.begin() + rows, T(0));
  const T* q_tile = p.q_rows(bh, tile.begin);
  for (int64_t j0 = 0; j0 < key_stop; j0 += kKeyBlock) {
    const int64_t cols = std::min(kKeyBlock, key_stop - j0);
    T* s_buf = scores.data();
    gemm(false, true, rows, cols, d, p.scale, q_tile, p.q_stride[2], p.k_rows(bh, j0), p.k_stride[2], T(0), s_buf,
         cols);
    bias_and_mask(p, b, tile, j0, cols, s_buf, cols);
    for (int64_t r = 0; r < rows; ++r) {
      T* s = s_buf + r * cols;
      const T block_max = max_of(s, cols);
      const T new_max = std::max(row_max[r], block_max);
      // A row with nothing visible yet keeps max -inf: use 0 so exp(-inf - 0) = 0, not NaN.
      const T shift = new_max == neg_inf ? T(0) : new_max;
      T block_sum = 0;
#pragma omp simd reduction(+ : block_sum)
      for (int64_t c = 0; c < cols; ++c) {
        const T e = s[c] == neg_inf ? T(0) : exp_nonpositive(s[c] - shift);
        s[c] = e;
        block_sum += e;
      }
      const T rescale = row_max[r] == neg_inf ? T(0) : std::exp(row_max[r] - shift);
      row_sum[r] = row_sum[r] * rescale + block_sum;
      row_max[r] = new_max;
      if (rescale != T(1)) {
        T* a = acc.data() + r * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) a[c] *= rescale;
      }
    }
    for_each_row_run(p, tile, j0, cols, [&](int64_t r0, int64_t r1, int64_t visible) {
      gemm(false, false, r1 - r0, d, visible, T(1), s_buf + r0 * cols, cols, p.v_rows(bh, j0), p.v_stride[2], T(1),
           acc.data() + r0 * d, d);
    });
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T inv = T(1) / row_sum[r];
    const T* a = acc.data() + r * d;
    T* o = out + (bh * p.lq + tile.begin + r) * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) o[c] = a[c] * inv;
    lse[bh * p.lq + tile.begin + r] = row_max[r] + std::log(row_sum[r]);
  }
}

template <typename T>
void forward_kernel(const Problem<T>& p, T* out, T* lse) {
  const int64_t n_tiles = int64_t(p.tiles.size()), bh_count = p.batch * p.heads;
  int64_t max_rows = 0;
  for (const Tile& t : p.tiles) max_rows = std::max(max_rows, t.end - t.begin);
  // Late tiles (the longest key prefixes) first, so the queue ends on short jobs.
  JobQueue queue(bh_count * n_tiles);
  on_workers(bh_count * n_tiles, [&](int64_t) {
    std::vector<T> scores(max_rows * kKeyBlock), acc(max_rows * p.dim), row_max(max_rows), row_sum(max_rows);
    for (int64_t job; (job = queue.take()) >= 0;) {
      const int64_t bh = job % bh_count, tile = n_tiles - 1 - job / bh_count;
      forward_tile(p, bh, p.tiles[tile], out, lse, scores, acc, row_max, row_sum);
    }
  });
}

// ---------------------------------------------------------------- backward

template <typename T>
struct Grads {
  const T *grad_out, *out, *lse;
  T *grad_q, *grad_k, *grad_v, *grad_bias_heads;  // grad_bias_heads: (B, H, Lk) or nullptr
};

// Per-thread scratch of the backward: two score-sized blocks, the dQ tile and delta.
template <typename T>
struct BackwardScratch {
  std::vector<T> probs, dprobs, dq_acc, delta;
  BackwardScratch(int64_t max_rows, int64_t dim)
      : probs(max_rows * kBwdKeyBlock), dprobs(max_rows * kBwdKeyBlock), dq_acc(max_rows * dim), delta(max_rows) {}
};

// Where one (batch, head)'s key-side gradients accumulate: grad_k, grad_v (Lk, Dh), grad_bias (Lk) or null.
template <typename T>
struct KeyGrads {
  T *k, *v, *bias;
};

// One query tile of one (batch, head): writes its dQ rows, adds its share of dK, dV and dbias.
template <typename T>
void backward_tile(const Problem<T>& p, const Grads<T>& g, int64_t bh, const Tile& tile, KeyGrads<T> out,
                   BackwardScratch<T>& scratch) {
  const int64_t b = bh / p.heads, d = p.dim;
  const int64_t rows = tile.end - tile.begin, key_stop = p.key_end[tile.end - 1];
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const T* q_tile = p.q_rows(bh, tile.begin);
  const T* do_tile = g.grad_out + (bh * p.lq + tile.begin) * d;
  const T* o_tile = g.out + (bh * p.lq + tile.begin) * d;
  const T* lse = g.lse + bh * p.lq + tile.begin;
  T* delta = scratch.delta.data();
  T* dq_acc = scratch.dq_acc.data();
  for (int64_t r = 0; r < rows; ++r) {  // delta_i = <dO_i, O_i> = sum_j P_ij dP_ij
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < d; ++c) dot += do_tile[r * d + c] * o_tile[r * d + c];
    delta[r] = dot;
  }
  std::fill(dq_acc, dq_acc + rows * d, T(0));
  for (int64_t j0 = 0; j0 < key_stop; j0 += kBwdKeyBlock) {
    const int64_t cols = std::min(kBwdKeyBlock, key_stop - j0);
    T* pr = scratch.probs.data();
    T* dp = scratch.dprobs.data();
    gemm(false, true, rows, cols, d, p.scale, q_tile, p.q_stride[2], p.k_rows(bh, j0), p.k_stride[2], T(0), pr,
         cols);
    bias_and_mask(p, b, tile, j0, cols, pr, cols);
    gemm(false, true, rows, cols, d, T(1), do_tile, d, p.v_rows(bh, j0), p.v_stride[2], T(0), dp, cols);
    for (int64_t r = 0; r < rows; ++r) {
      T* s = pr + r * cols;
      T* ds = dp + r * cols;
      const T shift = lse[r], dr = delta[r];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        const T prob = s[c] == neg_inf ? T(0) : exp_nonpositive(s[c] - shift);
        s[c] = prob;
        ds[c] = prob * (ds[c] - dr);  // dS = P * (dP - delta)
      }
    }
    for_each_row_run(p, tile, j0, cols, [&](int64_t r0, int64_t r1, int64_t n) {
      const T* pr_run = pr + r0 * cols;
      const T* dp_run = dp + r0 * cols;
      gemm(true, false, n, d, r1 - r0, T(1), pr_run, cols, do_tile + r0 * d, d, T(1), out.v + j0 * d, d);  // dV += P^T dO
      gemm(false, false, r1 - r0, d, n, p.scale, dp_run, cols, p.k_rows(bh, j0), p.k_stride[2], T(1),
           dq_acc + r0 * d, d);  // dQ += dS K
      gemm(true, false, n, d, r1 - r0, p.scale, dp_run, cols, q_tile + r0 * p.q_stride[2], p.q_stride[2], T(1),
           out.k + j0 * d, d);  // dK += dS^T Q
      if (out.bias) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* ds = dp + r * cols;
#pragma omp simd
          for (int64_t c = 0; c < n; ++c) out.bias[j0 + c] += ds[c];
        }
      }
    });
  }
  std::copy(dq_acc, dq_acc + rows * d, g.grad_q + (bh * p.lq + tile.begin) * d);
}

// Enough (batch, head) pairs for every thread: each job owns one head's dK / dV / dbias, no atomics.
template <typename T>
void backward_by_head(const Problem<T>& p, const Grads<T>& g, int64_t max_rows) {
  const int64_t d = p.dim;
  JobQueue queue(p.batch * p.heads);
  on_workers(p.batch * p.heads, [&](int64_t) {
    BackwardScratch<T> scratch(max_rows, d);
    for (int64_t bh; (bh = queue.take()) >= 0;) {
      KeyGrads<T> out{g.grad_k + bh * p.lk * d, g.grad_v + bh * p.lk * d,
                      g.grad_bias_heads ? g.grad_bias_heads + bh * p.lk : nullptr};
      std::fill(out.k, out.k + p.lk * d, T(0));
      std::fill(out.v, out.v + p.lk * d, T(0));
      if (out.bias) std::fill(out.bias, out.bias + p.lk, T(0));
      for (const Tile& tile : p.tiles) backward_tile(p, g, bh, tile, out, scratch);
    }
  });
}

// Few (batch, head) pairs (streaming, B = H = 1): split the query tiles over threads; each thread
// accumulates dK / dV / dbias in its own buffer (threads x B*H*Lk*(2 Dh + 1), still O(L)), summed after.
template <typename T>
void backward_by_tile(const Problem<T>& p, const Grads<T>& g, int64_t max_rows, int64_t threads) {
  const int64_t d = p.dim, bh_count = p.batch * p.heads, n_tiles = int64_t(p.tiles.size());
  const int64_t kv_size = bh_count * p.lk * d, per_thread = 2 * kv_size + bh_count * p.lk;
  std::vector<T> partial(threads * per_thread, T(0));
  JobQueue queue(bh_count * n_tiles);
  on_workers(bh_count * n_tiles, [&](int64_t worker) {
    BackwardScratch<T> scratch(max_rows, d);
    T* mine = partial.data() + worker * per_thread;
    for (int64_t job; (job = queue.take()) >= 0;) {
      const int64_t bh = job % bh_count, tile = n_tiles - 1 - job / bh_count;
      KeyGrads<T> out{mine + bh * p.lk * d, mine + kv_size + bh * p.lk * d,
                      g.grad_bias_heads ? mine + 2 * kv_size + bh * p.lk : nullptr};
      backward_tile(p, g, bh, p.tiles[tile], out, scratch);
    }
  });
  at::parallel_for(0, per_thread, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T sum = 0;
      for (int64_t t = 0; t < threads; ++t) sum += partial[t * per_thread + i];
      if (i < kv_size) {
        g.grad_k[i] = sum;
      } else if (i < 2 * kv_size) {
        g.grad_v[i - kv_size] = sum;
      } else if (g.grad_bias_heads) {
        g.grad_bias_heads[i - 2 * kv_size] = sum;
      }
    }
  });
}

template <typename T>
void backward_kernel(const Problem<T>& p, const Grads<T>& g) {
  int64_t max_rows = 0;
  for (const Tile& t : p.tiles) max_rows = std::max(max_rows, t.end - t.begin);
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && p.batch * p.heads < 2 * threads && p.tiles.size() > 1) {
    backward_by_tile(p, g, max_rows, threads);
  } else {
    backward_by_head(p, g, max_rows);
  }
}

// ---------------------------------------------------------------- argument checks and entry points

// key_end (Lq,) int64 comes from vidsel/reference/chunk_attention.py:chunk_layout (query row i, at key
// position Lk - Lq + i, sees keys [0, key_end[i]), the end of its chunk: eq. 8). Its values are only
// bounds-checked here: non-decreasing in [1, Lk], so no tile reads past k.
void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_end,
                          const c10::optional<at::Tensor>& key_bias) {
  VIDSEL_CHECK_CPU(q, "q");
  VIDSEL_CHECK_CPU(k, "k");
  VIDSEL_CHECK_CPU(v, "v");
  VIDSEL_CHECK_DIM(q, 4, "q");
  VIDSEL_CHECK_DIM(k, 4, "k");
  VIDSEL_CHECK_DIM(v, 4, "v");
  TORCH_CHECK(k.sizes() == v.sizes(), "vidsel: k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "vidsel: q ", q.sizes(), " and k ", k.sizes(), " must agree in B, H and Dh");
  TORCH_CHECK(q.size(2) <= k.size(2), "vidsel: q has more positions (", q.size(2), ") than k (", k.size(2), ")");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "vidsel: q, k, v must share a dtype");
  VIDSEL_CHECK_CPU(key_end, "key_end");
  TORCH_CHECK(key_end.scalar_type() == at::kLong && key_end.dim() == 1 && key_end.size(0) == q.size(2),
              "vidsel: key_end must be an int64 tensor of shape (Lq,) = (", q.size(2), ",), got ",
              key_end.scalar_type(), " ", key_end.sizes());
  const at::Tensor ends = key_end.contiguous();
  const int64_t* end = ends.data_ptr<int64_t>();
  for (int64_t i = 0; i < q.size(2); ++i) {
    TORCH_CHECK(end[i] >= 1 && end[i] <= k.size(2) && (i == 0 || end[i] >= end[i - 1]),
                "vidsel: key_end must be non-decreasing in [1, Lk=", k.size(2), "], got ", end[i], " at row ", i);
  }
  TORCH_CHECK(k.size(2) * std::max<int64_t>(k.size(3), 1) < std::numeric_limits<int>::max(),
              "vidsel: sequence too long for 32-bit BLAS strides");
  if (key_bias.has_value()) {
    VIDSEL_CHECK_CPU(*key_bias, "key_bias");
    TORCH_CHECK(key_bias->dim() == 2 && key_bias->size(0) == k.size(0) && key_bias->size(1) == k.size(2),
                "vidsel: key_bias must have shape (B, Lk) = (", k.size(0), ", ", k.size(2), "), got ",
                key_bias->sizes());
  }
}

// Kernels run in float (double for double inputs); half/bfloat16 are converted once (O(L) memory).
at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// t in the compute type with a contiguous last dimension and strides that fit 32-bit BLAS (no copy
// when it already qualifies).
at::Tensor rows_in_place(const at::Tensor& t, at::ScalarType type) {
  at::Tensor out = t.to(type);
  const bool fits = out.stride(3) == 1 && out.stride(2) >= std::max<int64_t>(out.size(3), 1) &&
                    out.stride(2) < std::numeric_limits<int>::max();
  return fits ? out : out.contiguous();
}

template <typename T>
Problem<T> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor* bias,
                        const at::Tensor& key_end, double scale, int64_t max_tile_rows) {
  Problem<T> p;
  p.q = q.data_ptr<T>();
  p.k = k.data_ptr<T>();
  p.v = v.data_ptr<T>();
  p.bias = bias ? bias->data_ptr<T>() : nullptr;
  p.batch = q.size(0);
  p.heads = q.size(1);
  p.lq = q.size(2);
  p.lk = k.size(2);
  p.dim = q.size(3);
  p.scale = T(scale);
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
  }
  const at::Tensor ends = key_end.contiguous();
  p.key_end.assign(ends.data_ptr<int64_t>(), ends.data_ptr<int64_t>() + p.lq);
  p.tiles = make_tiles(p.key_end, max_tile_rows);
  return p;
}

std::tuple<at::Tensor, at::Tensor> chunk_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& key_end,
                                                        const c10::optional<at::Tensor>& key_bias, double scale) {
  check_attention_args(q, k, v, key_end, key_bias);
  cpu_gemm::choose(cpu_gemm::ShapeClass::kAttentionTile);  // calibrates once, outside the parallel region
  const auto type = compute_type(q);
  const at::Tensor qc = rows_in_place(q, type), kc = rows_in_place(k, type), vc = rows_in_place(v, type);
  at::Tensor bias;
  if (key_bias.has_value()) bias = key_bias->to(type).contiguous();
  at::Tensor out = new_output(q.sizes(), qc.options());
  at::Tensor lse = new_output({q.size(0), q.size(1), q.size(2)}, qc.options());
  if (q.numel() > 0 && q.size(2) > 0) {
    AT_DISPATCH_FLOATING_TYPES(type, "vidsel_chunk_attention", [&] {
      const auto p = make_problem<scalar_t>(qc, kc, vc, bias.defined() ? &bias : nullptr, key_end, scale,
                                            kQueryTile);
      forward_kernel(p, out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    });
  }
  return {out.to(q.scalar_type()), lse};
}

// first_row (Lk,) of the layout serves the key-major GPU kernels; the query tiles here need key_end only.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chunk_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& key_end, const at::Tensor& /*first_row*/,
    const c10::optional<at::Tensor>& key_bias, double scale, bool bias_grad) {
  check_attention_args(q, k, v, key_end, key_bias);
  VIDSEL_CHECK_CPU(grad_out, "grad_out");
  VIDSEL_CHECK_CPU(out, "out");
  VIDSEL_CHECK_CPU(lse, "lse");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "vidsel: grad_out and out must have q's shape");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
              "vidsel: lse must have shape (B, H, Lq)");
  TORCH_CHECK(!bias_grad || key_bias.has_value(), "vidsel: bias_grad needs key_bias");
  cpu_gemm::choose(cpu_gemm::ShapeClass::kAttentionTile);
  const auto type = compute_type(q);
  const at::Tensor qc = rows_in_place(q, type), kc = rows_in_place(k, type), vc = rows_in_place(v, type);
  const at::Tensor go = grad_out.to(type).contiguous(), oc = out.to(type).contiguous(), lc = lse.to(type).contiguous();
  at::Tensor bias;
  if (key_bias.has_value()) bias = key_bias->to(type).contiguous();
  at::Tensor grad_q = new_output(q.sizes(), qc.options());
  at::Tensor grad_k = new_output(k.sizes(), kc.options());
  at::Tensor grad_v = new_output(v.sizes(), vc.options());
  at::Tensor grad_bias_heads = bias_grad ? new_output({k.size(0), k.size(1), k.size(2)}, kc.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(type, "vidsel_chunk_attention_backward", [&] {
    const auto p = make_problem<scalar_t>(qc, kc, vc, bias.defined() ? &bias : nullptr, key_end, scale,
                                          kBwdQueryTile);
    Grads<scalar_t> g{go.data_ptr<scalar_t>(),   oc.data_ptr<scalar_t>(),     lc.data_ptr<scalar_t>(),
                      grad_q.data_ptr<scalar_t>(), grad_k.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>(),
                      bias_grad ? grad_bias_heads.data_ptr<scalar_t>() : nullptr};
    if (q.size(2) == 0) {  // no queries: nothing flows back
      grad_k.zero_();
      grad_v.zero_();
      if (bias_grad) grad_bias_heads.zero_();
    } else if (k.numel() > 0) {
      backward_kernel(p, g);
    }
  });
  at::Tensor grad_bias = bias_grad ? grad_bias_heads.sum(1).to(key_bias->scalar_type())
                                   : at::empty({0}, q.options());
  return {grad_q.to(q.scalar_type()), grad_k.to(k.scalar_type()), grad_v.to(v.scalar_type()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CPU, m) {
  m.impl("chunk_attention", &chunk_attention_cpu);
  m.impl("chunk_attention_backward", &chunk_attention_backward_cpu);
}

}  // namespace vidsel
