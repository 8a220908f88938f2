// Gumbel-softmax top-k (MIST §3.2 segment selection, Appendix A), CPU kernels.
//
// Draw t of row b: perturbed = logits + g_t with g_t from the Philox stream (philox.h, counter
// (l / 4, t, b, kStreamGumbelTopk)); soft_t = softmax(perturbed / tau) over the allowed items,
// hard_t = one-hot of the first maximum. Without replacement the hard pick of each draw is masked
// out of the later draws (probability set to 0). Backward regenerates soft_t and applies the
// softmax Jacobian: grad_logits += soft_t * (G_t - <G_t, soft_t>) / tau (straight-through for hard).
#include "cpu/common.h"
#include "cpu/philox.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace vidsel {
namespace {

struct DrawScratch {
  std::vector<double> noise, soft;
  std::vector<char> allowed;
  philox::RowScratch rng;
  explicit DrawScratch(int64_t length) : noise(length), soft(length), allowed(length, 1), rng(length) {}
};

// Fills scratch.soft with draw t of row b and returns its hard pick (first maximum).
int64_t draw(const double* logits, int64_t length, double tau, philox::Key key, int64_t b, int64_t t,
             DrawScratch& scratch) {
  double* g = scratch.noise.data();
  double* soft = scratch.soft.data();
  philox::gumbel_row(g, scratch.rng, length, static_cast<uint32_t>(t), static_cast<uint32_t>(b),
                     philox::kStreamGumbelTopk, key);
  int64_t best = -1;
  double best_value = -std::numeric_limits<double>::infinity();
  for (int64_t l = 0; l < length; ++l) {
    g[l] = logits[l] + g[l];  // the perturbed logits, reusing the noise buffer
    // NaN ranks after every number: a NaN best is replaced by the first allowed number.
    const bool better = best < 0 || g[l] > best_value || (std::isnan(best_value) && !std::isnan(g[l]));
    if (scratch.allowed[l] && better) {
      best = l;
      best_value = g[l];
    }
  }
  const double top = best_value / tau;
  double total = 0;
  for (int64_t l = 0; l < length; ++l) {
    soft[l] = scratch.allowed[l] ? std::exp(g[l] / tau - top) : 0.0;
    total += soft[l];
  }
  for (int64_t l = 0; l < length; ++l) soft[l] /= total;
  return best;
}

void check_args(const at::Tensor& logits, int64_t k, double tau, bool replacement, int64_t seed) {
  VIDSEL_CHECK_CPU(logits, "logits");
  VIDSEL_CHECK_DIM(logits, 2, "logits");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "vidsel: logits must be floating point");
  const int64_t length = logits.size(1);
  TORCH_CHECK(k >= 1 && (replacement || k <= length), "vidsel: k=", k, " out of range for L=", length);
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "vidsel: tau must be finite and > 0");
  TORCH_CHECK(seed >= 0, "vidsel: seed must be >= 0");
  TORCH_CHECK(logits.size(0) <= UINT32_MAX && k <= UINT32_MAX, "vidsel: sizes exceed the Philox counter fields");
}

// Runs the k draws of every row; visit(b, t, soft, pick) sees each draw in order.
template <typename Visit>
void for_each_draw(const at::Tensor& logits, int64_t k, double tau, bool replacement, int64_t seed, Visit visit) {
  const int64_t batch = logits.size(0), length = logits.size(1);
  const double* ptr = logits.data_ptr<double>();
  const philox::Key key = philox::key_from_seed(seed);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    DrawScratch scratch(length);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(scratch.allowed.begin(), scratch.allowed.end(), 1);
      for (int64_t t = 0; t < k; ++t) {
        const int64_t pick = draw(ptr + b * length, length, tau, key, b, t, scratch);
        visit(b, t, scratch.soft.data(), pick);
        if (!replacement) scratch.allowed[pick] = 0;
      }
    }
  });
}

at::Tensor gumbel_topk_cpu(const at::Tensor& logits_in, int64_t k, double tau, bool hard, bool replacement,
                           int64_t seed) {
  check_args(logits_in, k, tau, replacement, seed);
  const at::Tensor logits = logits_in.to(at::kDouble).contiguous();
  const int64_t batch = logits.size(0), length = logits.size(1);
  at::Tensor out = new_output({batch, k, length}, logits.options());
  double* out_ptr = out.data_ptr<double>();
  for_each_draw(logits, k, tau, replacement, seed, [&](int64_t b, int64_t t, const double* soft, int64_t pick) {
    double* row = out_ptr + (b * k + t) * length;
    for (int64_t l = 0; l < length; ++l) row[l] = hard ? static_cast<double>(l == pick) : soft[l];
  });
  return out.to(logits_in.scalar_type());
}

at::Tensor gumbel_topk_backward_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in, int64_t k, double tau,
                                    bool replacement, int64_t seed) {
  check_args(logits_in, k, tau, replacement, seed);
  VIDSEL_CHECK_CPU(grad_in, "grad");
  const int64_t batch = logits_in.size(0), length = logits_in.size(1);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({batch, k, length}), "vidsel: grad must have shape (B, k, L)");
  const at::Tensor logits = logits_in.to(at::kDouble).contiguous();
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  at::Tensor out = at::zeros({batch, length}, logits.options());
  double* out_ptr = out.data_ptr<double>();
  const double* grad_ptr = grad.data_ptr<double>();
  for_each_draw(logits, k, tau, replacement, seed, [&](int64_t b, int64_t t, const double* soft, int64_t) {
    const double* g = grad_ptr + (b * k + t) * length;
    double inner = 0;
    for (int64_t l = 0; l < length; ++l) inner += g[l] * soft[l];
    double* row = out_ptr + b * length;  // row b is owned by one thread
    for (int64_t l = 0; l < length; ++l) row[l] += soft[l] * (g[l] - inner) / tau;
  });
  return out.to(logits_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CPU, m) {
  m.impl("gumbel_topk", &gumbel_topk_cpu);
  m.impl("gumbel_topk_backward", &gumbel_topk_backward_cpu);
}

}  // namespace vidsel
