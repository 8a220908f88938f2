// Token merging (TESTA §3.2.2 "geometry-based" / "importance-based" aggregation; ToMe), CPU kernels.
//
// Bipartite soft matching:
//   Fused: cosine similarity, per-row max/argmax and the top-r pick happen tile by tile; the
//   (|A| x |B|) similarity matrix is never stored. Per batch row the kernel keeps only the
//   L2-normalised A rows, a transposed copy of the normalised B rows and one best score per A row.
//   float32 similarity blocks (64 A rows x up to 1024 B rows) run on the GEMM chosen per machine
//   (cpu/gemm.h) and are reduced to max/argmax while in cache; float64 uses the register tile below.
//   A GEMM rounds an entry differently depending on where it sits in its tiles (MKL does), so the
//   GEMM only finds the candidates: every entry within rounding of a block's maximum is recomputed
//   as a fixed-order sum over C (pair_dot), and the winner is chosen on those values. Duplicated
//   rows then give bit-equal similarities wherever they sit, as in the reference.
//   Ranking rule (the reference's): larger first, NaN after every number, ties to the lower index;
//   similarities within snap_band() of 1 count as 1 (a token and its duplicate tie at 1).
//
// Row scatter/gather behind merge / unmerge ("merge them by averaging"; ToMe merge_wavg):
//
//   scatter_rows: out[b, dst[b, i]] += w[b, i] * x[b, i]       (merge forward, unmerge backward)
//   gather_rows:  out[b, i]          = w[b, i] * y[b, dst[b, i]] (unmerge forward, merge backward)
//
// scatter_rows is one pass over x: the sources of every output row are grouped first (a counting
// sort of dst_index, O(N) per batch row, stable so sums run in input order), then every output row
// is summed from its sources while it sits in L1 and written once. No zero-fill pass, no atomics.
#include "cpu/common.h"
#include "cpu/gemm.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

namespace vidsel {
namespace {

// ---------------------------------------------------------------- bipartite matching

// Micro-tile: kRowTile A rows x kColTile B columns of accumulators, sized to stay in the 32 vector
// registers of AVX-512 (16 for float: 8 rows x 2 zmm; 16 for double: 4 rows x 4 zmm).
template <typename acc_t>
constexpr int64_t kRowTile = sizeof(acc_t) == 4 ? 8 : 4;
constexpr int64_t kColTile = 32;
constexpr double kNormEps = 1e-12;  // as torch.nn.functional.normalize

// kAlternate counts parity from position 0 (ToMe/TESTA: a protected CLS is A's first slot);
// kAlternateAfterProtected restarts it after the protected tokens.
enum PartitionKind : int64_t { kAlternate = 0, kImportance = 1, kAlternateAfterProtected = 2 };

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// True when (a, ia) ranks ahead of (b, ib): larger first, NaN after every number, ties by index.
template <typename T>
bool ranks_ahead(T a, int64_t ia, T b, int64_t ib) {
  const bool a_nan = std::isnan(a), b_nan = std::isnan(b);
  if (a_nan != b_nan) return b_nan;
  if (a_nan || a == b) return ia < ib;
  return a > b;
}

// The reference's snap_to_one: within 8 (C + 4) u of 1 a cosine of C channels counts as exactly 1.
template <typename acc_t>
acc_t snap_band(int64_t c_dim) {
  return acc_t(8 * (c_dim + 4)) * std::numeric_limits<acc_t>::epsilon() / 2;
}

template <typename acc_t>
acc_t snap_to_one(acc_t v, acc_t band) { return acc_t(1) - v <= band ? acc_t(1) : v; }

// Sources (A) and destinations (B) of one batch row, as token positions in ascending order.
struct Partition {
  std::vector<int64_t> a_pos;
  std::vector<int64_t> b_pos;
};

Partition alternate_partition(int64_t n, int64_t protected_tokens, int64_t partition) {
  const int64_t parity_origin = partition == kAlternateAfterProtected ? protected_tokens : 0;
  Partition p;
  for (int64_t i = protected_tokens; i < n; ++i) {
    ((i - parity_origin) % 2 == 0 ? p.a_pos : p.b_pos).push_back(i);
  }
  return p;
}

// A = the r least important non-protected tokens (ties: lower position first), B = the others.
template <typename imp_t>
Partition importance_partition(const imp_t* importance, int64_t n, int64_t r, int64_t protected_tokens) {
  std::vector<int64_t> order(n - protected_tokens);
  std::iota(order.begin(), order.end(), protected_tokens);
  // Ascending with NaN after every number (as torch.sort), ties by position.
  auto less_important = [&](int64_t i, int64_t j) { return ranks_ahead(-importance[i], i, -importance[j], j); };
  std::nth_element(order.begin(), order.begin() + r, order.end(), less_important);
  Partition p;
  p.a_pos.assign(order.begin(), order.begin() + r);
  p.b_pos.assign(order.begin() + r, order.end());
  std::sort(p.a_pos.begin(), p.a_pos.end());
  std::sort(p.b_pos.begin(), p.b_pos.end());
  return p;
}

template <typename acc_t>
void normalise_into(const acc_t* row, int64_t c_dim, acc_t* out, int64_t out_stride) {
  acc_t sq = 0;
  for (int64_t c = 0; c < c_dim; ++c) sq += row[c] * row[c];
  // A division as F.normalize (a reciprocal multiply would not give exactly +-1 for C = 1).
  const acc_t norm = std::max<acc_t>(std::sqrt(sq), acc_t(kNormEps));
  for (int64_t c = 0; c < c_dim; ++c) out[c * out_stride] = row[c] / norm;
}

// Packed, normalised operands of one batch row: A row-major (na_pad x C), B transposed (C x nb_pad).
template <typename acc_t>
struct PackedRow {
  std::vector<acc_t> a;
  std::vector<acc_t> bt;
  int64_t na = 0, nb = 0, na_pad = 0, nb_pad = 0;
};

template <typename acc_t>
void pack_row(const acc_t* metric, int64_t c_dim, const Partition& part, PackedRow<acc_t>& packed) {
  packed.na = part.a_pos.size();
  packed.nb = part.b_pos.size();
  packed.na_pad = round_up(std::max<int64_t>(packed.na, 1), kRowTile<acc_t>);
  packed.nb_pad = round_up(std::max<int64_t>(packed.nb, 1), kColTile);
  packed.a.assign(packed.na_pad * c_dim, acc_t(0));
  packed.bt.assign(c_dim * packed.nb_pad, acc_t(0));
  for (int64_t i = 0; i < packed.na; ++i) {
    normalise_into(metric + part.a_pos[i] * c_dim, c_dim, packed.a.data() + i * c_dim, 1);
  }
  for (int64_t j = 0; j < packed.nb; ++j) {
    normalise_into(metric + part.b_pos[j] * c_dim, c_dim, packed.bt.data() + j, packed.nb_pad);
  }
}

// For kRowTile A rows: the best cosine similarity over all B rows and its index (first on ties).
template <typename acc_t>
void best_partner_tile(const acc_t* a, const acc_t* bt, int64_t c_dim, int64_t nb, int64_t nb_pad,
                       acc_t* best, int64_t* best_index) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity(), band = snap_band<acc_t>(c_dim);
  acc_t lane_best[kRowTile<acc_t>][kColTile];
  int32_t lane_index[kRowTile<acc_t>][kColTile];
  for (int64_t m = 0; m < kRowTile<acc_t>; ++m) {
    for (int64_t n = 0; n < kColTile; ++n) {
      lane_best[m][n] = neg_inf;
      lane_index[m][n] = 0;
    }
  }
  for (int64_t j0 = 0; j0 < nb_pad; j0 += kColTile) {
    acc_t acc[kRowTile<acc_t>][kColTile] = {};
    for (int64_t c = 0; c < c_dim; ++c) {
      const acc_t* b_row = bt + c * nb_pad + j0;
      for (int64_t m = 0; m < kRowTile<acc_t>; ++m) {
        const acc_t a_mc = a[m * c_dim + c];
        for (int64_t n = 0; n < kColTile; ++n) acc[m][n] += a_mc * b_row[n];
      }
    }
    for (int64_t m = 0; m < kRowTile<acc_t>; ++m) {
      for (int64_t n = 0; n < kColTile; ++n) {
        const int32_t j = static_cast<int32_t>(j0 + n);
        const acc_t v = j < nb ? snap_to_one(acc[m][n], band) : neg_inf;
        const bool better = v > lane_best[m][n];  // strict: keeps the first j within a lane; never NaN
        lane_best[m][n] = better ? v : lane_best[m][n];
        lane_index[m][n] = better ? j : lane_index[m][n];
      }
    }
  }
  for (int64_t m = 0; m < kRowTile<acc_t>; ++m) {
    acc_t v = neg_inf;
    int32_t j = std::numeric_limits<int32_t>::max();
    for (int64_t n = 0; n < kColTile; ++n) {
      const acc_t lv = lane_best[m][n];
      if (lv > v || (lv == v && lane_index[m][n] < j)) {
        v = lv;
        j = lane_index[m][n];
      }
    }
    best[m] = v == neg_inf ? std::numeric_limits<acc_t>::quiet_NaN() : v;  // a cosine is never -inf: all NaN
    best_index[m] = j;
  }
}

constexpr int64_t kSimRows = 64;    // A rows per float32 similarity block (a multiple of kRowTile<float>)
constexpr int64_t kSimCols = 1024;  // B rows per block: 64 x 1024 floats = 256 KiB, stays in L2

// One similarity of normalised rows, a fixed-order sum (the same bits for every (i, j)).
float pair_dot(const float* a_row, const float* bt_col, int64_t c_dim, int64_t nb_pad) {
  float dot = 0;
  for (int64_t c = 0; c < c_dim; ++c) dot += a_row[c] * bt_col[c * nb_pad];
  return dot;
}

// float32: for `rows` A rows, the best cosine similarity over all B rows and its index (ranking rule).
void best_partner_block(cpu_gemm::Path path, const float* a, const float* bt, int64_t c_dim, int64_t rows,
                        int64_t nb, int64_t nb_pad, float* best, int64_t* best_index) {
  thread_local std::vector<float> sim;
  sim.resize(kSimRows * kSimCols);
  const float band = snap_band<float>(c_dim);
  // GEMM and pair_dot each round a cosine by at most ~(C + 2) u; the winner after snapping is
  // within the band of 1 or within twice that rounding of the block maximum.
  const float window = band + snap_band<float>(c_dim) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    best[r] = std::numeric_limits<float>::quiet_NaN();  // stays NaN when every similarity is NaN
    best_index[r] = 0;
  }
  for (int64_t j0 = 0; j0 < nb; j0 += kSimCols) {
    const int64_t cols = std::min(kSimCols, nb - j0);
    cpu_gemm::sgemm(path, false, false, rows, cols, c_dim, 1.0f, a, c_dim, bt + j0, nb_pad, 0.0f, sim.data(), cols);
    for (int64_t r = 0; r < rows; ++r) {
      const float* s = sim.data() + r * cols;
      float row_max = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < cols; ++j) row_max = s[j] > row_max ? s[j] : row_max;  // NaN never wins
      if (row_max == -std::numeric_limits<float>::infinity()) continue;  // only NaN in this block
      for (int64_t j = 0; j < cols; ++j) {
        if (!(s[j] >= row_max - window)) continue;
        const float v = snap_to_one(pair_dot(a + r * c_dim, bt + j0 + j, c_dim, nb_pad), band);
        if (ranks_ahead(v, j0 + j, best[r], best_index[r])) {
          best[r] = v;
          best_index[r] = j0 + j;
        }
      }
    }
  }
}

// Writes the four index outputs of one batch row given which A rows merge and into which B row.
void write_matching(int64_t n, const Partition& part, const std::vector<int64_t>& merging_a,
                    const std::vector<int64_t>& partner, int64_t* kept, int64_t* merged,
                    int64_t* merged_into, int64_t* dst) {
  std::vector<int64_t> target(n, -1);
  for (int64_t a : merging_a) target[part.a_pos[a]] = part.b_pos[partner[a]];
  int64_t slot = 0, k = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (target[i] < 0) {
      kept[slot] = i;
      dst[i] = slot++;
    } else {
      merged[k] = i;
      merged_into[k] = target[i];
      ++k;
    }
  }
  // Destinations are B tokens, which never merge themselves, so their slot is already final.
  for (int64_t i = 0; i < k; ++i) dst[merged[i]] = dst[merged_into[i]];
}

template <typename acc_t>
std::vector<at::Tensor> bipartite_match_impl(const at::Tensor& metric, int64_t r, int64_t partition,
                                             const c10::optional<at::Tensor>& importance,
                                             int64_t protected_tokens) {
  const int64_t batch = metric.size(0), n = metric.size(1), c_dim = metric.size(2);
  const auto index_opts = metric.options().dtype(at::kLong);
  at::Tensor kept = new_output({batch, n - r}, index_opts);
  at::Tensor merged = new_output({batch, r}, index_opts);
  at::Tensor merged_into = new_output({batch, r}, index_opts);
  at::Tensor dst = new_output({batch, n}, index_opts);

  std::vector<Partition> parts(batch);
  at::Tensor imp;
  if (partition == kImportance) imp = importance->to(at::kDouble).contiguous();
  for (int64_t b = 0; b < batch; ++b) {
    parts[b] = partition != kImportance
                   ? alternate_partition(n, protected_tokens, partition)
                   : importance_partition(imp.data_ptr<double>() + b * n, n, r, protected_tokens);
  }

  const acc_t* metric_ptr = metric.data_ptr<acc_t>();
  std::vector<PackedRow<acc_t>> packed(batch);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) pack_row(metric_ptr + b * n * c_dim, c_dim, parts[b], packed[b]);
  });

  // Similarity + row max/argmax, parallel over (batch row, A tile) so B=1 still uses every thread.
  const int64_t na_pad = packed.empty() ? 0 : packed[0].na_pad;
  const int64_t tiles_per_row = na_pad / kRowTile<acc_t>;
  std::vector<std::vector<acc_t>> best(batch, std::vector<acc_t>(na_pad));
  std::vector<std::vector<int64_t>> partner(batch, std::vector<int64_t>(na_pad));
  if (r > 0 && std::is_same_v<acc_t, float>) {
    const cpu_gemm::Path path = cpu_gemm::choose(cpu_gemm::ShapeClass::kSimilarity);
    const int64_t na = packed.empty() ? 0 : packed[0].na, blocks = (na + kSimRows - 1) / kSimRows;
    JobQueue queue(batch * blocks);  // dynamic: a descheduled thread's blocks are taken over
    on_workers(batch * blocks, [&](int64_t) {
      for (int64_t t; (t = queue.take()) >= 0;) {
        const int64_t b = t / blocks, row0 = (t % blocks) * kSimRows;
        const PackedRow<acc_t>& p = packed[b];
        best_partner_block(path, reinterpret_cast<const float*>(p.a.data()) + row0 * c_dim,
                           reinterpret_cast<const float*>(p.bt.data()), c_dim, std::min(kSimRows, na - row0), p.nb,
                           p.nb_pad, reinterpret_cast<float*>(best[b].data()) + row0, partner[b].data() + row0);
      }
    });
  } else if (r > 0) {
    at::parallel_for(0, batch * tiles_per_row, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / tiles_per_row, row0 = (t % tiles_per_row) * kRowTile<acc_t>;
        const PackedRow<acc_t>& p = packed[b];
        best_partner_tile(p.a.data() + row0 * c_dim, p.bt.data(), c_dim, p.nb, p.nb_pad,
                          best[b].data() + row0, partner[b].data() + row0);
      }
    });
  }

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t na = packed[b].na;
      std::vector<int64_t> merging(na);
      std::iota(merging.begin(), merging.end(), 0);
      if (partition != kImportance) {
        // Top-r pairs by similarity (ties: lower position first) without a full sort.
        const std::vector<acc_t>& s = best[b];
        auto more_similar = [&](int64_t i, int64_t j) { return ranks_ahead(s[i], i, s[j], j); };
        std::nth_element(merging.begin(), merging.begin() + r, merging.end(), more_similar);
        merging.resize(r);
      }
      write_matching(n, parts[b], merging, partner[b], kept.data_ptr<int64_t>() + b * (n - r),
                     merged.data_ptr<int64_t>() + b * r, merged_into.data_ptr<int64_t>() + b * r,
                     dst.data_ptr<int64_t>() + b * n);
    }
  });
  return {kept, merged, merged_into, dst};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bipartite_match_cpu(
    const at::Tensor& metric_in, int64_t r, int64_t partition, const c10::optional<at::Tensor>& importance,
    int64_t protected_tokens) {
  VIDSEL_CHECK_CPU(metric_in, "metric");
  VIDSEL_CHECK_DIM(metric_in, 3, "metric");
  TORCH_CHECK(at::isFloatingType(metric_in.scalar_type()), "vidsel: metric must be floating point");
  const int64_t n = metric_in.size(1);
  TORCH_CHECK(protected_tokens >= 0 && protected_tokens <= n, "vidsel: protected_tokens out of range");
  TORCH_CHECK(partition == kAlternate || partition == kImportance || partition == kAlternateAfterProtected,
              "vidsel: unknown partition ", partition);
  const int64_t free_tokens = n - protected_tokens;
  if (partition != kImportance) {
    TORCH_CHECK(r >= 0 && r <= free_tokens / 2, "vidsel: r=", r, " must be in [0, ", free_tokens / 2, "]");
  } else {
    TORCH_CHECK(r >= 0 && r < std::max<int64_t>(free_tokens, 1), "vidsel: r=", r, " out of range");
    TORCH_CHECK(importance.has_value(), "vidsel: partition=importance needs an importance tensor");
    TORCH_CHECK(importance->sizes() == at::IntArrayRef({metric_in.size(0), n}),
                "vidsel: importance must have shape (B, N)");
  }
  const bool is_double = metric_in.scalar_type() == at::kDouble;
  const at::Tensor metric = metric_in.to(is_double ? at::kDouble : at::kFloat).contiguous();
  std::vector<at::Tensor> out = is_double
      ? bipartite_match_impl<double>(metric, r, partition, importance, protected_tokens)
      : bipartite_match_impl<float>(metric, r, partition, importance, protected_tokens);
  return {out[0], out[1], out[2], out[3]};
}

// ---------------------------------------------------------------- row scatter / gather

void check_rows_args(const at::Tensor& x, const at::Tensor& dst, const c10::optional<at::Tensor>& weight,
                     const char* x_name) {
  VIDSEL_CHECK_CPU(x, x_name);
  VIDSEL_CHECK_CPU(dst, "dst_index");
  VIDSEL_CHECK_DIM(x, 3, x_name);
  VIDSEL_CHECK_DIM(dst, 2, "dst_index");
  TORCH_CHECK(dst.size(0) == x.size(0), "vidsel: dst_index batch ", dst.size(0), " != ", x_name, " batch ",
              x.size(0));
  if (weight.has_value()) {
    VIDSEL_CHECK_CPU(*weight, "weight");
    TORCH_CHECK(weight->sizes() == dst.sizes(), "vidsel: weight must have the shape of dst_index");
  }
}

// Weights as a contiguous opmath tensor (all ones when absent) so kernels have a single code path.
template <typename scalar_t>
at::Tensor weights_or_ones(const c10::optional<at::Tensor>& weight, const at::Tensor& dst) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto opts = dst.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  return weight.has_value() ? weight->to(opts).contiguous() : at::ones(dst.sizes(), opts);
}

// Input rows grouped by destination: sources of output j of batch b are
// order[b][offsets[b][j] .. offsets[b][j + 1]), ascending in input position.
struct SourcesByDestination {
  std::vector<int64_t> offsets;  // (batch, n_out + 1)
  std::vector<int64_t> order;    // (batch, n)
};

SourcesByDestination group_by_destination(const int64_t* dst, int64_t batch, int64_t n, int64_t n_out) {
  SourcesByDestination groups{std::vector<int64_t>(batch * (n_out + 1), 0), std::vector<int64_t>(batch * n)};
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t* offsets = groups.offsets.data() + b * (n_out + 1);
      const int64_t* row_dst = dst + b * n;
      for (int64_t i = 0; i < n; ++i) ++offsets[row_dst[i] + 1];
      for (int64_t j = 0; j < n_out; ++j) offsets[j + 1] += offsets[j];
      std::vector<int64_t> cursor(offsets, offsets + n_out);
      int64_t* order = groups.order.data() + b * n;
      for (int64_t i = 0; i < n; ++i) order[cursor[row_dst[i]]++] = i;
    }
  });
  return groups;
}

// Merged-in sources sit anywhere in x, which breaks the hardware prefetcher's streams: ask for the
// rows of an output a few rows ahead (latency, not bandwidth, bounds this loop otherwise).
constexpr int64_t kPrefetchRows = 2;

template <typename scalar_t>
void prefetch_sources(const SourcesByDestination& groups, const scalar_t* x, int64_t row, int64_t n, int64_t n_out,
                      int64_t d) {
  const int64_t b = row / n_out, j = row % n_out;
  const int64_t* offsets = groups.offsets.data() + b * (n_out + 1);
  const int64_t* sources = groups.order.data() + b * n;
  const int64_t bytes = d * int64_t(sizeof(scalar_t));
  for (int64_t s = offsets[j]; s < offsets[j + 1]; ++s) {
    const char* src = reinterpret_cast<const char*>(x + (b * n + sources[s]) * d);
    for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(src + line, 0, 3);
  }
}

template <typename scalar_t>
void scatter_rows_kernel(const at::Tensor& x, const at::Tensor& dst, const at::Tensor& w, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2), n_out = out.size(1);
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  const acc_t* w_ptr = w.data_ptr<acc_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  const SourcesByDestination groups = group_by_destination(dst.data_ptr<int64_t>(), batch, n, n_out);
  at::parallel_for(0, batch * n_out, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(std::is_same_v<acc_t, scalar_t> ? 0 : d);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n_out, j = row % n_out;
      const int64_t* offsets = groups.offsets.data() + b * (n_out + 1);
      const int64_t* sources = groups.order.data() + b * n;
      if (row + kPrefetchRows < end) prefetch_sources(groups, x_ptr, row + kPrefetchRows, n, n_out, d);
      // float/double accumulate straight into the output row (it stays in L1); half types in acc.
      acc_t* target = std::is_same_v<acc_t, scalar_t> ? reinterpret_cast<acc_t*>(out_ptr) + row * d : acc.data();
      if (offsets[j] == offsets[j + 1]) std::fill(target, target + d, acc_t(0));
      for (int64_t s = offsets[j]; s < offsets[j + 1]; ++s) {
        const int64_t i = sources[s];
        const acc_t wi = w_ptr[b * n + i];
        const scalar_t* src = x_ptr + (b * n + i) * d;
        if (s == offsets[j]) {
          for (int64_t c = 0; c < d; ++c) target[c] = wi * static_cast<acc_t>(src[c]);
        } else {
          for (int64_t c = 0; c < d; ++c) target[c] += wi * static_cast<acc_t>(src[c]);
        }
      }
      if constexpr (!std::is_same_v<acc_t, scalar_t>) {
        scalar_t* o = reinterpret_cast<scalar_t*>(out_ptr) + row * d;
        for (int64_t c = 0; c < d; ++c) o[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

template <typename scalar_t>
void gather_rows_kernel(const at::Tensor& y, const at::Tensor& dst, const at::Tensor& w, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = dst.size(0), n = dst.size(1), d = y.size(2), m = y.size(1);
  const scalar_t* y_ptr = y.data_ptr<scalar_t>();
  const int64_t* dst_ptr = dst.data_ptr<int64_t>();
  const acc_t* w_ptr = w.data_ptr<acc_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  at::parallel_for(0, batch * n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n;
      const acc_t wi = w_ptr[row];
      const scalar_t* src = y_ptr + (b * m + dst_ptr[row]) * d;
      scalar_t* o = out_ptr + row * d;
      for (int64_t c = 0; c < d; ++c) o[c] = static_cast<scalar_t>(wi * static_cast<acc_t>(src[c]));
    }
  });
}

at::Tensor scatter_rows_cpu(const at::Tensor& x_in, const at::Tensor& dst_in,
                            const c10::optional<at::Tensor>& weight, int64_t n_out) {
  check_rows_args(x_in, dst_in, weight, "x");
  TORCH_CHECK(dst_in.size(1) == x_in.size(1), "vidsel: dst_index must have shape (B, N) of x");
  TORCH_CHECK(n_out >= 0, "vidsel: n_out must be >= 0");
  const at::Tensor x = x_in.contiguous(), dst = dst_in.contiguous();
  check_index_range(dst, n_out, "dst_index");
  at::Tensor out = new_output({x.size(0), n_out, x.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vidsel_scatter_rows", [&] {
    scatter_rows_kernel<scalar_t>(x, dst, weights_or_ones<scalar_t>(weight, dst), out);
  });
  return out;
}

at::Tensor gather_rows_cpu(const at::Tensor& y_in, const at::Tensor& dst_in,
                           const c10::optional<at::Tensor>& weight) {
  check_rows_args(y_in, dst_in, weight, "y");
  const at::Tensor y = y_in.contiguous(), dst = dst_in.contiguous();
  check_index_range(dst, y.size(1), "dst_index");
  at::Tensor out = new_output({dst.size(0), dst.size(1), y.size(2)}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "vidsel_gather_rows", [&] {
    gather_rows_kernel<scalar_t>(y, dst, weights_or_ones<scalar_t>(weight, dst), out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CPU, m) {
  m.impl("bipartite_match", &bipartite_match_cpu);
  m.impl("scatter_rows", &scatter_rows_cpu);
  m.impl("gather_rows", &gather_rows_cpu);
}

}  // namespace vidsel
