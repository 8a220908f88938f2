// CUDA bindings of chunk_attention_fwd / chunk_attention_bwd (Mirasol3B eq. 8): checks, chunk layout,
// allocation, launch. half/bfloat16 inputs run in float32 (converted here, O(L) memory).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "cuda/binding_common.h"
#include "cuda/chunk_attention.h"

namespace vidsel::cuda {
namespace {

void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::IntArrayRef chunk_lens,
                const c10::optional<at::Tensor>& key_bias) {
  VIDSEL_CHECK_CUDA(q, "q");
  VIDSEL_CHECK_CUDA(k, "k");
  VIDSEL_CHECK_CUDA(v, "v");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "vidsel(cuda): q, k, v must be (B, H, L, Dh)");
  TORCH_CHECK(k.sizes() == v.sizes(), "vidsel(cuda): k and v must have the same shape");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "vidsel(cuda): q and k must agree in B, H and Dh");
  TORCH_CHECK(q.size(2) <= k.size(2), "vidsel(cuda): q has more positions than k");
  TORCH_CHECK(q.size(3) <= kChunkAttentionMaxDim, "vidsel(cuda): head dim ", q.size(3), " exceeds ",
              kChunkAttentionMaxDim);
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "vidsel(cuda): q, k, v on different devices");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "vidsel(cuda): q, k, v must share a dtype");
  int64_t total = 0;
  for (const int64_t len : chunk_lens) {
    TORCH_CHECK(len > 0, "vidsel(cuda): chunk_lens must be positive");
    total += len;
  }
  TORCH_CHECK(total == k.size(2), "vidsel(cuda): chunk_lens sum to ", total, ", k has ", k.size(2), " positions");
  if (key_bias.has_value()) {
    VIDSEL_CHECK_CUDA(*key_bias, "key_bias");
    TORCH_CHECK(key_bias->device() == q.device(), "vidsel(cuda): key_bias on another device");
    TORCH_CHECK(key_bias->dim() == 2 && key_bias->size(0) == k.size(0) && key_bias->size(1) == k.size(2),
                "vidsel(cuda): key_bias must be (B, Lk)");
  }
}

// key_end (Lq,): end of the chunk of each query row; first_row (Lk,): first query row seeing each key.
std::pair<at::Tensor, at::Tensor> chunk_layout(at::IntArrayRef chunk_lens, int64_t lq, int64_t lk,
                                               const at::Device& device) {
  std::vector<int64_t> key_end(lq), first_row(lk);
  const int64_t offset = lk - lq;
  int64_t start = 0;
  for (const int64_t len : chunk_lens) {
    for (int64_t p = start; p < start + len; ++p) {
      first_row[p] = std::max<int64_t>(start - offset, 0);
      if (p >= offset) key_end[p - offset] = start + len;
    }
    start += len;
  }
  const auto opts = at::TensorOptions().dtype(at::kLong);
  return {at::tensor(key_end, opts).to(device), at::tensor(first_row, opts).to(device)};
}

at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> chunk_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, at::IntArrayRef chunk_lens,
                                                             const c10::optional<at::Tensor>& key_bias,
                                                             double scale) {
  check_args(q, k, v, chunk_lens, key_bias);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto type = compute_type(q);
  const at::Tensor qc = q.to(type).contiguous(), kc = k.to(type).contiguous(), vc = v.to(type).contiguous();
  const at::Tensor bias = key_bias.has_value() ? key_bias->to(type).contiguous() : at::Tensor();
  const auto [key_end, first_row] = chunk_layout(chunk_lens, q.size(2), k.size(2), q.device());
  at::Tensor out = at::empty(qc.sizes(), qc.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, qc.options());
  launch_chunk_attention_fwd(qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr,
                             key_end.data_ptr<int64_t>(), out.data_ptr(), lse.data_ptr(), q.size(0), q.size(1),
                             q.size(2), k.size(2), q.size(3), scale, type == at::kDouble,
                             c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chunk_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, at::IntArrayRef chunk_lens,
    const c10::optional<at::Tensor>& key_bias, double scale, bool bias_grad) {
  check_args(q, k, v, chunk_lens, key_bias);
  VIDSEL_CHECK_CUDA(grad_out, "grad_out");
  VIDSEL_CHECK_CUDA(out, "out");
  VIDSEL_CHECK_CUDA(lse, "lse");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "vidsel(cuda): grad_out, out must be q-shaped");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
              "vidsel(cuda): lse must be (B, H, Lq)");
  TORCH_CHECK(!bias_grad || key_bias.has_value(), "vidsel(cuda): bias_grad needs key_bias");
  const c10::cuda::CUDAGuard guard(q.device());
  const auto type = compute_type(q);
  const at::Tensor qc = q.to(type).contiguous(), kc = k.to(type).contiguous(), vc = v.to(type).contiguous();
  const at::Tensor go = grad_out.to(type).contiguous(), oc = out.to(type).contiguous(), lc = lse.to(type).contiguous();
  const at::Tensor bias = key_bias.has_value() ? key_bias->to(type).contiguous() : at::Tensor();
  const auto [key_end, first_row] = chunk_layout(chunk_lens, q.size(2), k.size(2), q.device());
  at::Tensor grad_q = at::empty(qc.sizes(), qc.options());
  at::Tensor grad_k = at::empty(kc.sizes(), kc.options());
  at::Tensor grad_v = at::empty(vc.sizes(), vc.options());
  at::Tensor delta = at::empty({q.size(0), q.size(1), q.size(2)}, qc.options());
  at::Tensor grad_bias_heads = bias_grad ? at::empty({k.size(0), k.size(1), k.size(2)}, kc.options()) : at::Tensor();
  launch_chunk_attention_bwd(go.data_ptr(), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(), lc.data_ptr(),
                             bias.defined() ? bias.data_ptr() : nullptr, key_end.data_ptr<int64_t>(),
                             first_row.data_ptr<int64_t>(), grad_q.data_ptr(), grad_k.data_ptr(), grad_v.data_ptr(),
                             delta.data_ptr(), bias_grad ? grad_bias_heads.data_ptr() : nullptr, q.size(0),
                             q.size(1), q.size(2), k.size(2), q.size(3), scale, type == at::kDouble,
                             c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor grad_bias = bias_grad ? grad_bias_heads.sum(1).to(key_bias->scalar_type()) : at::empty({0}, q.options());
  return {grad_q.to(q.scalar_type()), grad_k.to(k.scalar_type()), grad_v.to(v.scalar_type()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("chunk_attention_fwd", &chunk_attention_fwd_cuda);
  m.impl("chunk_attention_bwd", &chunk_attention_bwd_cuda);
}

}  // namespace vidsel::cuda
