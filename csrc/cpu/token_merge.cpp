// Row scatter/gather behind merge / unmerge (TESTA §3.2.2 "merge them by averaging"; ToMe merge_wavg).
//
//   scatter_rows: out[b, dst[b, i]] += w[b, i] * x[b, i]       (merge forward, unmerge backward)
//   gather_rows:  out[b, i]          = w[b, i] * y[b, dst[b, i]] (unmerge forward, merge backward)
//
// scatter_rows is one pass over x: work is split over (batch, feature chunk), so every task owns
// its slice of the output and accumulates without atomics; the slice stays in cache while the
// rows stream through.
#include "cpu/common.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace vidsel {
namespace {

constexpr int64_t kFeatureChunk = 128;

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

template <typename scalar_t>
void scatter_rows_kernel(const at::Tensor& x, const at::Tensor& dst, const at::Tensor& w, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2), n_out = out.size(1);
  const int64_t chunks = (d + kFeatureChunk - 1) / kFeatureChunk;
  const scalar_t* x_ptr = x.data_ptr<scalar_t>();
  const int64_t* dst_ptr = dst.data_ptr<int64_t>();
  const acc_t* w_ptr = w.data_ptr<acc_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, d0 = (task % chunks) * kFeatureChunk;
      const int64_t width = std::min(kFeatureChunk, d - d0);
      acc.assign(n_out * width, acc_t(0));
      for (int64_t i = 0; i < n; ++i) {
        const acc_t wi = w_ptr[b * n + i];
        const scalar_t* src = x_ptr + (b * n + i) * d + d0;
        acc_t* target = acc.data() + dst_ptr[b * n + i] * width;
        for (int64_t c = 0; c < width; ++c) target[c] += wi * static_cast<acc_t>(src[c]);
      }
      for (int64_t j = 0; j < n_out; ++j) {
        scalar_t* o = out_ptr + (b * n_out + j) * d + d0;
        const acc_t* a = acc.data() + j * width;
        for (int64_t c = 0; c < width; ++c) o[c] = static_cast<scalar_t>(a[c]);
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
  m.impl("scatter_rows", &scatter_rows_cpu);
  m.impl("gather_rows", &gather_rows_cpu);
}

}  // namespace vidsel
