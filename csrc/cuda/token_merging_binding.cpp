// CUDA bindings of bipartite_match / scatter_rows / gather_rows: checks, allocation, launch.
// The similarity + argmax is the CUDA kernel; the small (B, |A|) selection and index bookkeeping use
// ATen ops on the device (same rules as vidsel/reference/token_merging.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/binding_common.h"
#include "cuda/token_merging.h"

namespace vidsel::cuda {
namespace {

constexpr int64_t kImportance = 1, kAlternateAfterProtected = 2;

// Positions of `scores` (B, M) from best to worst: larger first, NaN after every number, ties to the
// lower position (the ranks_ahead rule of the kernels). Two stable sorts: by value, then NaN-ness.
at::Tensor rank_descending_nan_last(const at::Tensor& scores) {
  const at::Tensor by_value = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/true));
  const at::Tensor nan_flags = scores.isnan().gather(1, by_value).to(at::kChar);
  const at::Tensor by_nan = std::get<1>(at::sort(nan_flags, /*stable=*/true, /*dim=*/1, /*descending=*/false));
  return by_value.gather(1, by_nan);
}

at::Tensor take_rows(const at::Tensor& x, const at::Tensor& positions) {
  return x.gather(1, positions.unsqueeze(-1).expand({-1, -1, x.size(2)}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bipartite_match_cuda(
    const at::Tensor& metric_in, int64_t r, int64_t partition, const c10::optional<at::Tensor>& importance,
    int64_t protected_tokens) {
  VIDSEL_CHECK_CUDA(metric_in, "metric");
  TORCH_CHECK(metric_in.dim() == 3, "vidsel(cuda): metric must be (B, N, C)");
  const c10::cuda::CUDAGuard guard(metric_in.device());
  const int64_t batch = metric_in.size(0), n = metric_in.size(1);
  TORCH_CHECK(protected_tokens >= 0 && protected_tokens <= n, "vidsel(cuda): protected_tokens out of range");
  const int64_t free_tokens = n - protected_tokens;
  TORCH_CHECK(r >= 0 && r <= free_tokens, "vidsel(cuda): r out of range");
  const bool is_double = metric_in.scalar_type() == at::kDouble;
  const at::Tensor metric = metric_in.to(is_double ? at::kDouble : at::kFloat);
  const auto long_opts = metric.options().dtype(at::kLong);
  const at::Tensor free = at::arange(protected_tokens, n, long_opts);

  at::Tensor a_pos, b_pos;
  if (partition != kImportance) {
    TORCH_CHECK(r <= free_tokens / 2, "vidsel(cuda): r too large for the alternate partition");
    // ToMe parity (A = even, B = odd positions) unless it restarts after the protected tokens.
    const int64_t shift = partition == kAlternateAfterProtected ? 0 : protected_tokens % 2;
    a_pos = free.slice(0, shift, c10::nullopt, 2).expand({batch, -1}).contiguous();
    b_pos = free.slice(0, 1 - shift, c10::nullopt, 2).expand({batch, -1}).contiguous();
  } else {
    TORCH_CHECK(importance.has_value(), "vidsel(cuda): importance partition needs importance");
    VIDSEL_CHECK_CUDA(*importance, "importance");
    const at::Tensor order = std::get<1>(at::sort(importance->slice(1, protected_tokens), true, 1, false));
    a_pos = std::get<0>(at::sort(free.index({order.slice(1, 0, r)}), 1));
    b_pos = std::get<0>(at::sort(free.index({order.slice(1, r)}), 1));
  }
  const int64_t na = a_pos.size(1), nb = b_pos.size(1);
  at::Tensor scores = at::zeros({batch, na}, metric.options());
  at::Tensor partner = at::zeros({batch, na}, long_opts);
  if (r > 0 && nb > 0) {
    auto normalised = [&](const at::Tensor& rows) {
      return (rows / rows.norm(2, -1, true).clamp_min(1e-12)).contiguous();
    };
    const at::Tensor a = normalised(take_rows(metric, a_pos)), b = normalised(take_rows(metric, b_pos));
    check_launch(launch_best_partner(a.data_ptr(), b.data_ptr(), scores.data_ptr(), partner.data_ptr<int64_t>(),
                                     batch, na, nb, metric.size(2), is_double, c10::cuda::getCurrentCUDAStream()),
                 "bipartite_match");
  }

  at::Tensor chosen = partition != kImportance ? rank_descending_nan_last(scores).slice(1, 0, r)
                                               : at::arange(na, long_opts).expand({batch, -1});
  chosen = std::get<0>(at::sort(chosen, 1));
  const at::Tensor merged_index = a_pos.gather(1, chosen);
  const at::Tensor merged_into = b_pos.gather(1, partner.gather(1, chosen));
  at::Tensor is_merged = at::zeros({batch, n}, metric.options().dtype(at::kBool));
  is_merged.scatter_(1, merged_index, true);
  const at::Tensor kept = std::get<1>(at::sort(is_merged.to(at::kChar), true, 1, false)).slice(1, 0, n - r);
  const at::Tensor slot = at::cumsum(is_merged.logical_not().to(at::kLong), 1) - 1;
  at::Tensor dst = slot.clone();
  dst.scatter_(1, merged_index, slot.gather(1, merged_into));
  return {kept.contiguous(), merged_index.contiguous(), merged_into.contiguous(), dst};
}

at::Tensor weights_for(const c10::optional<at::Tensor>& weight, const at::Tensor& dst, at::ScalarType acc) {
  if (!weight.has_value()) return at::Tensor();
  VIDSEL_CHECK_CUDA(*weight, "weight");
  TORCH_CHECK(weight->sizes() == dst.sizes(), "vidsel(cuda): weight must have the shape of dst_index");
  return weight->to(acc).contiguous();
}

at::Tensor scatter_rows_cuda(const at::Tensor& x_in, const at::Tensor& dst_in,
                             const c10::optional<at::Tensor>& weight, int64_t n_out) {
  VIDSEL_CHECK_CUDA(x_in, "x");
  VIDSEL_CHECK_CUDA(dst_in, "dst_index");
  TORCH_CHECK(x_in.dim() == 3 && dst_in.dim() == 2 && dst_in.size(0) == x_in.size(0) &&
                  dst_in.size(1) == x_in.size(1),
              "vidsel(cuda): scatter_rows needs x (B, N, D) and dst_index (B, N)");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), dst = dst_in.contiguous();
  check_index_dtype(dst, "dst_index");
  TORCH_CHECK(n_out >= 0, "vidsel(cuda): n_out must be >= 0");
  const at::ScalarType acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = weights_for(weight, dst, acc_type);
  // Sources grouped by destination in ascending source order: a deterministic sum without atomics.
  const auto [sorted_dst, order] = at::sort(dst, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  const at::Tensor bounds = at::arange(n_out + 1, dst.options()).expand({dst.size(0), -1}).contiguous();
  const at::Tensor offsets = at::searchsorted(sorted_dst, bounds).contiguous();
  at::Tensor acc = at::empty({x.size(0), n_out, x.size(2)}, x.options().dtype(acc_type));
  check_launch(launch_scatter_rows(x.data_ptr(), scalar_kind(x), order.contiguous().data_ptr<int64_t>(),
                                   offsets.data_ptr<int64_t>(), w.defined() ? w.data_ptr() : nullptr, acc.data_ptr(),
                                   x.size(0), x.size(1), x.size(2), n_out, c10::cuda::getCurrentCUDAStream()),
               "scatter_rows");
  return acc.to(x.scalar_type());
}

at::Tensor gather_rows_cuda(const at::Tensor& y_in, const at::Tensor& dst_in,
                            const c10::optional<at::Tensor>& weight) {
  VIDSEL_CHECK_CUDA(y_in, "y");
  VIDSEL_CHECK_CUDA(dst_in, "dst_index");
  TORCH_CHECK(y_in.dim() == 3 && dst_in.dim() == 2 && dst_in.size(0) == y_in.size(0),
              "vidsel(cuda): gather_rows needs y (B, M, D) and dst_index (B, N)");
  const c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor y = y_in.contiguous(), dst = dst_in.contiguous();
  check_index_dtype(dst, "dst_index");
  const at::ScalarType acc_type = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = weights_for(weight, dst, acc_type);
  at::Tensor out = at::empty({dst.size(0), dst.size(1), y.size(2)}, y.options());
  check_launch(launch_gather_rows(y.data_ptr(), scalar_kind(y), dst.data_ptr<int64_t>(),
                                  w.defined() ? w.data_ptr() : nullptr, out.data_ptr(), y.size(0), y.size(1),
                                  dst.size(1), y.size(2), c10::cuda::getCurrentCUDAStream()),
               "gather_rows");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("bipartite_match", &bipartite_match_cuda);
  m.impl("scatter_rows", &scatter_rows_cuda);
  m.impl("gather_rows", &gather_rows_cuda);
}

}  // namespace vidsel::cuda
