// Hard top-k fused with the row gather (STTS eq. 4 at inference, "implemented with slicing"; MIST
// eq. 5 Top_j region selection), and its backward.
//
//   topk_gather:          index[b] = the k largest scores[b] (ties to the lower position),
//                         selected[b, j] = x[b, index[b, j]]
//   topk_gather_backward: grad_x[b, index[b, j]] = grad[b, j], every other row zero
//
// One job per group selects with nth_element on an index array (O(N)) and copies whole rows with
// memcpy; the backward writes every row of grad_x exactly once (copy or zero), no zero-fill pass.
#include "cpu/common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace vidsel {
namespace {

// Orders positions by descending score, NaN after every number, then ascending position: a strict
// total order even with NaN scores.
template <typename scalar_t>
struct HigherScoreFirst {
  const scalar_t* s;
  bool operator()(int64_t a, int64_t b) const {
    const double sa = static_cast<double>(s[a]), sb = static_cast<double>(s[b]);
    const bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na || nb) return na == nb ? a < b : nb;
    return sa > sb || (sa == sb && a < b);
  }
};

template <typename scalar_t>
void select_topk(const scalar_t* scores, int64_t n, int64_t k, bool sorted_by_index, std::vector<int64_t>& order,
                 int64_t* index_out) {
  order.resize(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  const HigherScoreFirst<scalar_t> higher{scores};
  if (k < n) std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), higher);
  if (sorted_by_index) {
    std::sort(order.begin(), order.begin() + k);
  } else {
    std::sort(order.begin(), order.begin() + k, higher);
  }
  std::copy(order.begin(), order.begin() + k, index_out);
}

std::tuple<at::Tensor, at::Tensor> topk_gather_cpu(const at::Tensor& x_in, const at::Tensor& scores_in, int64_t k,
                                                   bool sorted_by_index) {
  VIDSEL_CHECK_CPU(x_in, "x");
  VIDSEL_CHECK_CPU(scores_in, "scores");
  VIDSEL_CHECK_DIM(x_in, 3, "x");
  VIDSEL_CHECK_DIM(scores_in, 2, "scores");
  const int64_t groups = x_in.size(0), n = x_in.size(1), d = x_in.size(2);
  TORCH_CHECK(scores_in.size(0) == groups && scores_in.size(1) == n, "vidsel: scores must have shape (B, N) = (",
              groups, ", ", n, ") of x, got ", scores_in.sizes());
  TORCH_CHECK(at::isFloatingType(scores_in.scalar_type()), "vidsel: scores must be floating point");
  TORCH_CHECK(k >= 1 && k <= n, "vidsel: k=", k, " must be in [1, N=", n, "]");
  const at::Tensor x = x_in.contiguous(), scores = scores_in.contiguous();
  at::Tensor selected = new_output({groups, k, d}, x.options());
  at::Tensor index = new_output({groups, k}, x.options().dtype(at::kLong));
  const int64_t row_bytes = d * static_cast<int64_t>(x.element_size());
  const char* x_ptr = static_cast<const char*>(x.data_ptr());
  char* out_ptr = static_cast<char*>(selected.data_ptr());
  int64_t* index_ptr = index.data_ptr<int64_t>();
  const bool streaming = selected.nbytes() >= kStreamingBytes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "vidsel_topk_gather", [&] {
    const scalar_t* s_ptr = scores.data_ptr<scalar_t>();
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> order;
      for (int64_t b = begin; b < end; ++b) {
        int64_t* idx = index_ptr + b * k;
        select_topk(s_ptr + b * n, n, k, sorted_by_index, order, idx);
        for (int64_t j = 0; j < k; ++j) {
          write_row(out_ptr + (b * k + j) * row_bytes, x_ptr + (b * n + idx[j]) * row_bytes, row_bytes, streaming);
        }
      }
      finish_streaming(streaming);
    });
  });
  return {selected, index};
}

at::Tensor topk_gather_backward_cpu(const at::Tensor& grad_in, const at::Tensor& index_in, int64_t n) {
  VIDSEL_CHECK_CPU(grad_in, "grad");
  VIDSEL_CHECK_CPU(index_in, "index");
  VIDSEL_CHECK_DIM(grad_in, 3, "grad");
  VIDSEL_CHECK_DIM(index_in, 2, "index");
  const int64_t groups = grad_in.size(0), k = grad_in.size(1), d = grad_in.size(2);
  TORCH_CHECK(index_in.size(0) == groups && index_in.size(1) == k, "vidsel: index must have shape (B, k) of grad");
  TORCH_CHECK(n >= k, "vidsel: n=", n, " must be >= k=", k);
  const at::Tensor grad = grad_in.contiguous(), index = index_in.contiguous();
  check_index_range(index, n, "index");
  // source row of every output row (-1: zero); a repeated index keeps its last row.
  std::vector<int64_t> source(groups * n, -1);
  const int64_t* index_ptr = index.data_ptr<int64_t>();
  for (int64_t b = 0; b < groups; ++b) {
    for (int64_t j = 0; j < k; ++j) source[b * n + index_ptr[b * k + j]] = b * k + j;
  }
  at::Tensor grad_x = new_output({groups, n, d}, grad.options());
  const int64_t row_bytes = d * static_cast<int64_t>(grad.element_size());
  const char* g_ptr = static_cast<const char*>(grad.data_ptr());
  char* out_ptr = static_cast<char*>(grad_x.data_ptr());
  const bool streaming = grad_x.nbytes() >= kStreamingBytes;
  at::parallel_for(0, groups * n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      // zero rows: all-zero bits are 0.0 in every float type
      const char* src = source[row] >= 0 ? g_ptr + source[row] * row_bytes : nullptr;
      write_row(out_ptr + row * row_bytes, src, row_bytes, streaming);
    }
    finish_streaming(streaming);
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CPU, m) {
  m.impl("topk_gather", &topk_gather_cpu);
  m.impl("topk_gather_backward", &topk_gather_backward_cpu);
}

}  // namespace vidsel
