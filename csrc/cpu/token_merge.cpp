// Row scatter/gather behind merge / unmerge (TESTA §3.2.2 "merge them by averaging"; ToMe merge_wavg).
//
//   scatter_rows: out[b, dst[b, i]] += w[b, i] * x[b, i]       (merge forward, unmerge backward)
//   gather_rows:  out[b, i]          = w[b, i] * y[b, dst[b, i]] (unmerge forward, merge backward)
//
// scatter_rows is one pass over x: the sources of every output row are grouped first (a counting
// sort of dst_index, O(N) per batch row, stable so sums run in input order), then every output row
// is summed from its sources while it sits in L1 and written once. No zero-fill pass, no atomics.
#include "cpu/common.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace vidsel {
namespace {

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
  m.impl("scatter_rows", &scatter_rows_cpu);
  m.impl("gather_rows", &gather_rows_cpu);
}

}  // namespace vidsel
