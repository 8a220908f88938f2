// Indicator-weighted selection Y^T x (STTS eq. 9) for sparse indicator matrices, CPU kernels.
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

#include <vector>

namespace vidsel {
namespace {

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
  AT_DISPATCH_FLOATING_TYPES(acc, "indicator_matmul_backward", [&] {
    if (need_x) {
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
  m.impl("indicator_matmul", &indicator_matmul_cpu);
  m.impl("indicator_matmul_backward", &indicator_matmul_backward_cpu);
}

}  // namespace vidsel
