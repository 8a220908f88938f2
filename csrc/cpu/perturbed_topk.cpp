// Perturbed-maximum top-k (STTS §3.2 eq. 7-8; Berthet et al. 2020), fused CPU kernels.
//
// Per (batch row b, sample s) the kernel draws Z_s from the Philox stream (philox.h), perturbs the
// scores, finds the k-th largest value by a branch-free quickselect (ties go to the lower position)
// and walks the L items in input order:
//   forward   counts[b, i, l] += 1 when l is the i-th selected item          -> P = counts / n
//   backward  g_s = sum_i G[b, i, l_i];  acc[b, :] += g_s Z_s                  -> grad = acc / (n sigma)
// The noise is regenerated in backward; only O(L) scratch per thread exists, never (B, n, L) noise
// or (B, n, k, L) one-hots. Work is split over (row, chunk of samples) jobs with private
// accumulators, summed per row afterwards in a fixed order (deterministic).
//
// perturbed_topk_select's product Y^T x (STTS eq. 9) for sparse indicator matrices.
//
// The perturbed top-k indicators P (B, k, L) are mostly zeros (slot i only ever holds items whose
// rank is near i: ~6% non-zeros for the STTS setting L=196, k=98, sigma=0.1), so the products skip
// zero entries instead of running dense GEMMs:
//   forward          out[b, i] = sum_l P[b, i, l] x[b, l]                       (B, k, D)
//   backward x       grad_x[b, l] = sum_i P[b, i, l] G[b, i]                    (B, L, D)
//   backward P       grad_P[b, i, l] = <G[b, i], x[b, l]> where P[b, i, l] != 0, else 0
// grad_P is the gradient restricted to the support of P: exactly what the perturbed top-k backward
// (eq. 8) reads, since it only visits (slot, item) pairs some sample selected (P > 0 there).
#include "cpu/common.h"
#include "cpu/gemm.h"
#include "cpu/philox.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace vidsel {
namespace {

// ---------------------------------------------------------------- perturbed top-k

// Scratch of one job: the perturbed values, the noise, selection buffers and the Philox scratch.
struct SampleScratch {
  std::vector<double> values, noise, buffer_a, buffer_b, numbers;  // numbers: the non-NaN values
  std::vector<int64_t> selected;  // the k selected positions, ascending (+1 slot for branch-free writes)
  philox::RowScratch rng;
  explicit SampleScratch(int64_t length, int64_t k)
      : values(length), noise(length), buffer_a(length), buffer_b(length), numbers(length), selected(length + 1),
        rng(length) {}
};

// The k-th largest of values[0..n) (k >= 1) by quickselect with branch-free three-way partitions:
// each pass writes the elements above the pivot to the front of the other buffer and those below
// to its back, so random data costs no branch mispredictions (std::nth_element's main cost here).
double kth_largest(const double* values, int64_t n, int64_t k, double* buffer_a, double* buffer_b) {
  const double* src = values;
  double* const buffers[2] = {buffer_a, buffer_b};
  int next = 0;  // partitions alternate between the buffers: src always lives in the other one
  while (n > 16) {
    double* dst = buffers[next];
    next ^= 1;
    const double x = src[0], y = src[n / 2], z = src[n - 1];
    const double pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));  // median of three
    int64_t above = 0, below = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double v = src[i];
      dst[above] = v;
      dst[n - 1 - below] = v;
      above += v > pivot;
      below += v < pivot;
    }
    if (k <= above) {
      src = dst;
      n = above;
    } else if (k <= n - below) {
      return pivot;
    } else {
      k -= n - below;
      src = dst + (n - below);
      n = below;
    }
  }
  double small[16];
  std::copy(src, src + n, small);
  std::nth_element(small, small + (k - 1), small + n, std::greater<double>());
  return small[k - 1];
}

// Draws sample s of row b and fills scratch.selected with its top-k positions in input order.
void select_sample(const double* scores, int64_t length, int64_t k, double sigma, philox::Key key, int64_t b,
                   int64_t s, SampleScratch& scratch) {
  double* z = scratch.noise.data();
  double* v = scratch.values.data();
  philox::normal_row(z, scratch.rng, length, static_cast<uint32_t>(s), static_cast<uint32_t>(b),
                     philox::kStreamPerturbedTopk, key);
  int64_t count = 0;  // non-NaN perturbed values
  for (int64_t l = 0; l < length; ++l) {
    v[l] = scores[l] + sigma * z[l];
    scratch.numbers[count] = v[l];
    count += !std::isnan(v[l]);
  }
  int64_t* selected = scratch.selected.data();
  if (count < k) {  // NaN ranks after every number: all numbers, then the first NaNs by position
    int64_t nan_left = k - count, i = 0;
    for (int64_t l = 0; l < length && i < k; ++l) {
      const bool taken = !std::isnan(v[l]) || nan_left-- > 0;
      if (taken) selected[i++] = l;
    }
    return;
  }
  // Threshold = k-th largest number; items above it are in, ties at it go to the lowest positions.
  // Comparisons with NaN are false, so NaN items are never taken here.
  const double* ranked = count == length ? v : scratch.numbers.data();
  const double threshold = kth_largest(ranked, count, k, scratch.buffer_a.data(), scratch.buffer_b.data());
  int64_t above = 0;
  for (int64_t l = 0; l < length; ++l) above += v[l] > threshold;
  int64_t ties_left = k - above, i = 0;
  for (int64_t l = 0; l < length; ++l) {
    const bool tie_taken = (v[l] == threshold) & (ties_left > 0);
    ties_left -= tie_taken;
    selected[i] = l;  // branch-free: committed only when taken
    i += (v[l] > threshold) | tie_taken;
  }
}

struct JobGrid {
  int64_t chunks, per_chunk;  // samples of each row split into `chunks` chunks of `per_chunk`
};

JobGrid job_grid(int64_t batch, int64_t num_samples) {
  const int64_t rows = std::max<int64_t>(batch, 1);  // B = 0: an empty grid, no division by zero
  const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads() + rows - 1) / rows);
  const int64_t chunks = std::min<int64_t>(num_samples, want);
  return {chunks, (num_samples + chunks - 1) / chunks};
}

void check_args(const at::Tensor& scores, int64_t k, int64_t num_samples, double sigma, int64_t seed) {
  VIDSEL_CHECK_CPU(scores, "scores");
  VIDSEL_CHECK_DIM(scores, 2, "scores");
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), "vidsel: scores must be floating point");
  TORCH_CHECK(k >= 1 && k <= scores.size(1), "vidsel: k=", k, " must be in [1, L=", scores.size(1), "]");
  TORCH_CHECK(num_samples >= 1, "vidsel: num_samples must be >= 1");
  TORCH_CHECK(sigma >= 0 && std::isfinite(sigma), "vidsel: sigma must be finite and >= 0");
  TORCH_CHECK(seed >= 0, "vidsel: seed must be >= 0");
  TORCH_CHECK(scores.size(0) <= UINT32_MAX && num_samples <= UINT32_MAX && scores.size(1) / 4 <= UINT32_MAX,
              "vidsel: perturbed_topk sizes exceed the 32-bit Philox counter fields");
}

at::Tensor perturbed_topk_cpu(const at::Tensor& scores_in, int64_t k, int64_t num_samples, double sigma,
                              int64_t seed) {
  check_args(scores_in, k, num_samples, sigma, seed);
  const at::Tensor scores = scores_in.to(at::kDouble).contiguous();
  const int64_t batch = scores.size(0), length = scores.size(1);
  const JobGrid grid = job_grid(batch, num_samples);
  const philox::Key key = philox::key_from_seed(seed);
  std::vector<int32_t> counts(batch * grid.chunks * k * length, 0);
  const double* scores_ptr = scores.data_ptr<double>();
  at::parallel_for(0, batch * grid.chunks, 1, [&](int64_t begin, int64_t end) {
    SampleScratch scratch(length, k);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / grid.chunks, s0 = (job % grid.chunks) * grid.per_chunk;
      const int64_t s1 = std::min(num_samples, s0 + grid.per_chunk);
      int32_t* job_counts = counts.data() + job * k * length;
      for (int64_t s = s0; s < s1; ++s) {
        select_sample(scores_ptr + b * length, length, k, sigma, key, b, s, scratch);
        for (int64_t i = 0; i < k; ++i) job_counts[i * length + scratch.selected[i]] += 1;
      }
    }
  });
  // Written straight in the output dtype (count / n rounded once from float64, as the reference does).
  at::Tensor out = new_output({batch, k, length}, scores_in.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "perturbed_topk", [&] {
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t e = 0; e < k * length; ++e) {
          int64_t total = 0;
          for (int64_t c = 0; c < grid.chunks; ++c) total += counts[((b * grid.chunks + c) * k * length) + e];
          out_ptr[b * k * length + e] = static_cast<scalar_t>(static_cast<double>(total) / num_samples);
        }
      }
    });
  });
  return out;
}

at::Tensor perturbed_topk_backward_cpu(const at::Tensor& grad_in, const at::Tensor& scores_in, int64_t k,
                                       int64_t num_samples, double sigma, int64_t seed) {
  check_args(scores_in, k, num_samples, sigma, seed);
  VIDSEL_CHECK_CPU(grad_in, "grad");
  const int64_t batch = scores_in.size(0), length = scores_in.size(1);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({batch, k, length}), "vidsel: grad must have shape (B, k, L) = (",
              batch, ", ", k, ", ", length, "), got ", grad_in.sizes());
  if (sigma == 0) return at::zeros_like(scores_in);
  const at::Tensor scores = scores_in.to(at::kDouble).contiguous();
  const at::Tensor grad = grad_in.contiguous();  // read in its own dtype: no float64 copy
  const JobGrid grid = job_grid(batch, num_samples);
  const philox::Key key = philox::key_from_seed(seed);
  std::vector<double> partial(batch * grid.chunks * length, 0.0);
  const double* scores_ptr = scores.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "perturbed_topk_backward", [&] {
  const scalar_t* grad_ptr = grad.data_ptr<scalar_t>();
  at::parallel_for(0, batch * grid.chunks, 1, [&](int64_t begin, int64_t end) {
    SampleScratch scratch(length, k);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / grid.chunks, s0 = (job % grid.chunks) * grid.per_chunk;
      const int64_t s1 = std::min(num_samples, s0 + grid.per_chunk);
      const scalar_t* g_row = grad_ptr + b * k * length;
      double* acc = partial.data() + job * length;
      for (int64_t s = s0; s < s1; ++s) {
        select_sample(scores_ptr + b * length, length, k, sigma, key, b, s, scratch);
        double g_s = 0;  // <G, Y_s>
        for (int64_t i = 0; i < k; ++i) g_s += static_cast<double>(g_row[i * length + scratch.selected[i]]);
        const double* z = scratch.noise.data();
        for (int64_t l = 0; l < length; ++l) acc[l] += g_s * z[l];
      }
    }
  });
  });
  at::Tensor out = new_output({batch, length}, scores.options());
  double* out_ptr = out.data_ptr<double>();
  const double scale = 1.0 / (static_cast<double>(num_samples) * sigma);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t l = 0; l < length; ++l) {
      double total = 0;
      for (int64_t c = 0; c < grid.chunks; ++c) total += partial[(b * grid.chunks + c) * length + l];
      out_ptr[b * length + l] = total * scale;
    }
  }
  return out.to(scores_in.scalar_type());
}

// Test hook: the raw stream, so tests can compare it with vidsel/reference/philox.py.
// kind 0 = uniform, 1 = normal, 2 = gumbel; returns (B, S, L) float64 (`like` only picks the device).
at::Tensor philox_noise_cpu(const at::Tensor& like, int64_t seed, int64_t batch, int64_t samples, int64_t length, int64_t stream,
                            int64_t kind) {
  TORCH_CHECK(seed >= 0 && batch >= 0 && samples >= 0 && length >= 0 && kind >= 0 && kind <= 2,
              "vidsel: philox_noise arguments out of range");
  at::Tensor out = new_output({batch, samples, length}, at::TensorOptions().dtype(at::kDouble));
  const philox::Key key = philox::key_from_seed(seed);
  philox::RowScratch rng(length);
  double* ptr = out.data_ptr<double>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < samples; ++s) {
      double* row = ptr + (b * samples + s) * length;
      const auto s32 = static_cast<uint32_t>(s), b32 = static_cast<uint32_t>(b), st = static_cast<uint32_t>(stream);
      if (kind == 1) {
        philox::normal_row(row, rng, length, s32, b32, st, key);
      } else if (kind == 2) {
        philox::gumbel_row(row, rng, length, s32, b32, st, key);
      } else {
        philox::philox_row_words(rng.words.data(), (length + 3) / 4, s32, b32, st, key);
        for (int64_t l = 0; l < length; ++l) row[l] = philox::word_to_uniform(rng.words[l]);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- indicator products Y^T x

// <a, b> with kLanes independent partial sums: a single running sum is a dependency chain the
// compiler may not reorder (no -ffast-math), the lanes vectorise.
template <typename acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  constexpr int64_t kLanes = 16;
  acc_t lanes[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += a[d + j] * b[d + j];
  }
  acc_t total = 0;
  for (; d < n; ++d) total += a[d] * b[d];
  for (int64_t j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

template <typename acc_t>
void select_rows(const acc_t* p, const acc_t* x, acc_t* out, int64_t batch, int64_t k, int64_t length, int64_t dim) {
  at::parallel_for(0, batch * k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / k;
      acc_t* out_row = out + row * dim;
      for (int64_t d = 0; d < dim; ++d) out_row[d] = 0;
      const acc_t* weights = p + row * length;
      for (int64_t l = 0; l < length; ++l) {
        const acc_t w = weights[l];
        if (w == 0) continue;
        const acc_t* x_row = x + (b * length + l) * dim;
        for (int64_t d = 0; d < dim; ++d) out_row[d] += w * x_row[d];
      }
    }
  });
}

template <typename acc_t>
void scatter_rows_t(const acc_t* p, const acc_t* grad, acc_t* grad_x, int64_t batch, int64_t k, int64_t length,
                    int64_t dim) {
  at::parallel_for(0, batch * length, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / length, l = item % length;
      acc_t* out_row = grad_x + item * dim;
      for (int64_t d = 0; d < dim; ++d) out_row[d] = 0;
      for (int64_t i = 0; i < k; ++i) {
        const acc_t w = p[(b * k + i) * length + l];
        if (w == 0) continue;
        const acc_t* g_row = grad + (b * k + i) * dim;
        for (int64_t d = 0; d < dim; ++d) out_row[d] += w * g_row[d];
      }
    }
  });
}

template <typename acc_t>
void support_dots(const acc_t* p, const acc_t* grad, const acc_t* x, acc_t* grad_p, int64_t batch, int64_t k,
                  int64_t length, int64_t dim) {
  at::parallel_for(0, batch * k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / k;
      const acc_t* g_row = grad + row * dim;
      for (int64_t l = 0; l < length; ++l) {
        grad_p[row * length + l] = p[row * length + l] != 0 ? dot(g_row, x + (b * length + l) * dim, dim) : acc_t(0);
      }
    }
  });
}

// float32 with dense indicators (perturbed top-k averages many samples): the products are GEMMs on the
// path chosen per machine, in (64 x 256) output blocks. Sparse (hard) indicators keep the row loops,
// which skip zero weights.
constexpr int64_t kBlockRows = 64, kBlockCols = 256;

// A GEMM multiplies the zero weights too, so a non-finite entry of the other operand would leak through
// 0 * inf: the GEMM path runs only when that operand is finite (zero-weight terms never contribute).
bool dense_indicators(const at::Tensor& p, const at::Tensor& operand) {
  return p.scalar_type() == at::kFloat && p.numel() > 0 && at::count_nonzero(p).item<int64_t>() * 8 >= p.numel() &&
         at::isfinite(operand).all().item<bool>();
}

// C[b] (m x n) = op(A[b]) B[b] for every batch; op(A) = A, or A^T when trans_a (A[b] stored k x m).
void batched_gemm(bool trans_a, const float* a, int64_t lda, const float* b, float* c, int64_t batch, int64_t m,
                  int64_t n, int64_t k) {
  const cpu_gemm::Path path = cpu_gemm::choose(cpu_gemm::ShapeClass::kIndicator);
  const int64_t row_blocks = (m + kBlockRows - 1) / kBlockRows, col_blocks = (n + kBlockCols - 1) / kBlockCols;
  at::parallel_for(0, batch * row_blocks * col_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bi = job / (row_blocks * col_blocks), rest = job % (row_blocks * col_blocks);
      const int64_t row0 = (rest / col_blocks) * kBlockRows, col0 = (rest % col_blocks) * kBlockCols;
      const float* a_b = a + bi * m * k + (trans_a ? row0 : row0 * lda);
      cpu_gemm::sgemm(path, trans_a, false, std::min(kBlockRows, m - row0), std::min(kBlockCols, n - col0), k, 1.0f,
                      a_b, lda, b + bi * k * n + col0, n, 0.0f, c + bi * m * n + row0 * n + col0, n);
    }
  });
}

at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_pair(const at::Tensor& p, const at::Tensor& x) {
  VIDSEL_CHECK_CPU(p, "indicators");
  VIDSEL_CHECK_CPU(x, "x");
  VIDSEL_CHECK_DIM(p, 3, "indicators");
  VIDSEL_CHECK_DIM(x, 3, "x");
  TORCH_CHECK(at::isFloatingType(p.scalar_type()) && at::isFloatingType(x.scalar_type()),
              "vidsel: indicators and x must be floating point");
  TORCH_CHECK(p.size(0) == x.size(0) && p.size(2) == x.size(1), "vidsel: indicators (B, k, L) and x (B, L, D) ",
              "disagree: ", p.sizes(), " vs ", x.sizes());
}

at::Tensor indicator_matmul_cpu(const at::Tensor& p_in, const at::Tensor& x_in) {
  check_pair(p_in, x_in);
  const at::ScalarType acc = acc_type(x_in);
  const at::Tensor p = p_in.to(acc).contiguous(), x = x_in.to(acc).contiguous();
  const int64_t batch = p.size(0), k = p.size(1), length = p.size(2), dim = x.size(2);
  at::Tensor out = new_output({batch, k, dim}, x.options());
  if (dense_indicators(p, x)) {
    batched_gemm(false, p.data_ptr<float>(), length, x.data_ptr<float>(), out.data_ptr<float>(), batch, k, dim, length);
    return out.to(x_in.scalar_type());
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "indicator_matmul", [&] {
    select_rows<scalar_t>(p.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), batch, k,
                          length, dim);
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> indicator_matmul_backward_cpu(const at::Tensor& grad_in, const at::Tensor& p_in,
                                                                 const at::Tensor& x_in, bool need_x,
                                                                 bool need_indicators) {
  check_pair(p_in, x_in);
  VIDSEL_CHECK_CPU(grad_in, "grad");
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == p_in.size(0) && grad_in.size(1) == p_in.size(1) &&
                  grad_in.size(2) == x_in.size(2),
              "vidsel: grad must have shape (B, k, D)");
  const at::ScalarType acc = acc_type(x_in);
  const at::Tensor p = p_in.to(acc).contiguous(), x = x_in.to(acc).contiguous(), grad = grad_in.to(acc).contiguous();
  const int64_t batch = p.size(0), k = p.size(1), length = p.size(2), dim = x.size(2);
  at::Tensor grad_x, grad_p;
  if (need_x) grad_x = new_output({batch, length, dim}, x.options());
  if (need_indicators) grad_p = new_output({batch, k, length}, x.options());
  const bool dense = need_x && dense_indicators(p, grad);
  if (dense) {
    batched_gemm(true, p.data_ptr<float>(), length, grad.data_ptr<float>(), grad_x.data_ptr<float>(), batch, length,
                 dim, k);
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "indicator_matmul_backward", [&] {
    if (need_x && !dense) {
      scatter_rows_t<scalar_t>(p.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), batch,
                               k, length, dim);
    }
    if (need_indicators) {
      support_dots<scalar_t>(p.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                             grad_p.data_ptr<scalar_t>(), batch, k, length, dim);
    }
  });
  at::Tensor empty = at::empty({0}, x_in.options());
  return {need_x ? grad_x.to(x_in.scalar_type()) : empty, need_indicators ? grad_p.to(p_in.scalar_type()) : empty};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CPU, m) {
  m.impl("perturbed_topk", &perturbed_topk_cpu);
  m.impl("perturbed_topk_backward", &perturbed_topk_backward_cpu);
  m.impl("philox_noise", &philox_noise_cpu);
  m.impl("indicator_matmul", &indicator_matmul_cpu);
  m.impl("indicator_matmul_backward", &indicator_matmul_backward_cpu);
}

}  // namespace vidsel
