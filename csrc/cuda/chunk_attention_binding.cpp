// CUDA bindings of chunk_attention / chunk_attention_backward (Mirasol3B eq. 8): checks, allocation,
// launch. The chunk layout (key_end, first_row) arrives from Python (reference.chunk_layout) on the device. half/bfloat16 inputs run in float32 (converted here, O(L) memory).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>


#include "cuda/binding_common.h"
#include "cuda/chunk_attention.h"

namespace vidsel::cuda {
namespace {

// An int64 tensor of shape (n,) on q's device (a layout tensor; its values are trusted).
void check_layout(const at::Tensor& t, int64_t n, const at::Tensor& q, const char* name) {
  VIDSEL_CHECK_CUDA(t, name);
  TORCH_CHECK(t.device() == q.device() && t.scalar_type() == at::kLong && t.dim() == 1 && t.size(0) == n,
              "vidsel(cuda): ", name, " must be an int64 tensor of shape (", n, ",) on q's device");
}

void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_end,
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
  check_layout(key_end, q.size(2), q, "key_end");
  if (key_bias.has_value()) {
    VIDSEL_CHECK_CUDA(*key_bias, "key_bias");
    TORCH_CHECK(key_bias->device() == q.device(), "vidsel(cuda): key_bias on another device");
    TORCH_CHECK(key_bias->dim() == 2 && key_bias->size(0) == k.size(0) && key_bias->size(1) == k.size(2),
                "vidsel(cuda): key_bias must be (B, Lk)");
  }
}

at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> chunk_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         const at::Tensor& key_end,
                                                         const c10::optional<at::Tensor>& key_bias, double scale) {
  check_args(q, k, v, key_end, key_bias);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto type = compute_type(q);
  const at::Tensor qc = q.to(type).contiguous(), kc = k.to(type).contiguous(), vc = v.to(type).contiguous();
  const at::Tensor bias = key_bias.has_value() ? key_bias->to(type).contiguous() : at::Tensor();
  const at::Tensor ends = key_end.contiguous();
  at::Tensor out = at::empty(qc.sizes(), qc.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, qc.options());
  launch_chunk_attention(qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr,
                         ends.data_ptr<int64_t>(), out.data_ptr(), lse.data_ptr(), q.size(0), q.size(1), q.size(2),
                         k.size(2), q.size(3), scale, type == at::kDouble, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chunk_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& key_end, const at::Tensor& first_row,
    const c10::optional<at::Tensor>& key_bias, double scale, bool bias_grad) {
  check_args(q, k, v, key_end, key_bias);
  check_layout(first_row, k.size(2), q, "first_row");
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
  const at::Tensor ends = key_end.contiguous(), rows = first_row.contiguous();
  at::Tensor grad_q = at::empty(qc.sizes(), qc.options());
  at::Tensor grad_k = at::empty(kc.sizes(), kc.options());
  at::Tensor grad_v = at::empty(vc.sizes(), vc.options());
  at::Tensor delta = at::empty({q.size(0), q.size(1), q.size(2)}, qc.options());
  at::Tensor grad_bias_heads = bias_grad ? at::empty({k.size(0), k.size(1), k.size(2)}, kc.options()) : at::Tensor();
  launch_chunk_attention_backward(go.data_ptr(), qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), oc.data_ptr(),
                                  lc.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr, ends.data_ptr<int64_t>(),
                                  rows.data_ptr<int64_t>(), grad_q.data_ptr(), grad_k.data_ptr(), grad_v.data_ptr(),
                                  delta.data_ptr(), bias_grad ? grad_bias_heads.data_ptr() : nullptr, q.size(0),
                                  q.size(1), q.size(2), k.size(2), q.size(3), scale, type == at::kDouble,
                                  c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor grad_bias = bias_grad ? grad_bias_heads.sum(1).to(key_bias->scalar_type()) : at::empty({0}, q.options());
  return {grad_q.to(q.scalar_type()), grad_k.to(k.scalar_type()), grad_v.to(v.scalar_type()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(vidsel_C, CUDA, m) {
  m.impl("chunk_attention", &chunk_attention_cuda);
  m.impl("chunk_attention_backward", &chunk_attention_backward_cuda);
}

}  // namespace vidsel::cuda
