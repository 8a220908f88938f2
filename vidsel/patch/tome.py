"""ToMe (Bolya et al., 2023) on a ViT you already have: timm `VisionTransformer`, Hugging Face
`ViTModel` / `VideoMAEModel` (or any model containing one, e.g. `ViTForImageClassification`).

Every block becomes  x += Attn(x; log s)  ->  merge r tokens  ->  x += MLP(x):
  * the metric is the attention keys averaged over heads (TESTA §3.2.2 / ToMe §3);
  * `vidsel.ops.bipartite_match` (alternate partition) pairs the tokens, the class token(s) are
    protected (``protected`` = number of prefix tokens: CLS, a distillation token, registers) and
    never merge; N -> N - min(r, ⌊(N - protected)/2⌋) per block;
  * `vidsel.ops.merge` averages each group weighted by its size s (tokens it stands for);
  * proportional attention adds log(s_j) to every logit of key j as the SDPA mask (no eager N²
    softmax); with ``trace_source`` `vidsel.ops.merge_source` tracks which input patches every
    output token covers.

The patched blocks hold the original submodules under the original names: ``state_dict()`` keys
and parameters are unchanged, and ``handle.remove()`` puts the original blocks back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vidsel import ops
from vidsel.patch._common import (
    PatchHandle,
    adopt_children,
    attend,
    check_r,
    dropout_p,
    find_backbone,
    refuse_repatch,
    replace_items,
    split_heads,
    unsupported,
)

SUPPORTED = ("timm VisionTransformer", "transformers ViTModel", "transformers VideoMAEModel")


@dataclass
class ToMeState:
    """Record of the last forward (eager mode; under torch.compile only `size`/`source` update).

    size              (B, N_out) tokens each output token stands for (None: nothing merged)
    source            (B, N_out, N_in) bool, which input tokens each output token covers
                      (only with trace_source=True)
    tokens_per_block  N after every block
    """

    protected: int
    size: Tensor | None = None
    source: Tensor | None = None
    tokens_per_block: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.size, self.source, self.tokens_per_block = None, None, []


def tome_token_schedule(num_tokens: int, r, depth: int, protected: int = 1) -> list[int]:
    """N after each of `depth` blocks: N -> N - min(r_i, ⌊(N - protected)/2⌋) (ToMe's clamp)."""
    schedule, n = [], num_tokens
    for r_i in check_r("r", r, depth):
        n -= max(0, min(r_i, (n - protected) // 2))
        schedule.append(n)
    return schedule


class _ToMeBlock(nn.Module):
    """One ViT block with ToMe between attention and MLP.

    Subclasses adapt one library's block with two methods: ``attention_step(x (B, N, D), size)
    -> (x + attention branch, keys averaged over heads (B, N, C))`` and ``mlp_step(x) -> x + MLP branch``.
    """

    def __init__(self, original: nn.Module, index: int, r: int, state: ToMeState, prop_attn: bool,
                 trace_source: bool, impl: str):
        super().__init__()
        adopt_children(self, original)
        self.index, self.r, self.prop_attn, self.trace_source, self.impl = index, r, prop_attn, trace_source, impl
        self.state = state

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if any(a is not None for a in args) or any(v is not None and v is not False for v in kwargs.values()):
            raise ValueError("a ToMe-patched block takes no attention mask (merging changes the token set)")
        state = self.state
        if self.index == 0:
            state.reset()
        size = state.size
        x, keys = self.attention_step(x, size if self.prop_attn else None)
        removed = max(0, min(self.r, (x.shape[1] - state.protected) // 2))
        if removed > 0:
            matching = ops.bipartite_match(keys, removed, protected=state.protected, impl=self.impl)
            x, size = ops.merge(x, matching, size, impl=self.impl)
            if self.trace_source:
                state.source = ops.merge_source(matching, state.source, impl=self.impl)
            state.size = size
        x = self.mlp_step(x)
        if not torch.compiler.is_compiling():
            state.tokens_per_block.append(x.shape[1])
        return x

    def extra_repr(self) -> str:
        return f"block={self.index}, r={self.r}, protected={self.state.protected}, prop_attn={self.prop_attn}"


class _TimmBlock(_ToMeBlock):
    """timm `Block`: norm1 / attn (qkv, q_norm, k_norm, norm, proj) / ls1 / drop_path1, then the MLP half."""

    def attention_step(self, x, size):
        attn = self.attn
        batch, n, _ = x.shape
        h = self.norm1(x)
        gate = getattr(attn, "gate", None)
        qkv = attn.qkv(h).reshape(batch, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out, _ = attend(q, k, v, size, dropout_p(attn, attn.attn_drop.p))
        out = getattr(attn, "norm", nn.Identity())(out)
        if gate is not None:
            out = out * gate(h).sigmoid()
        out = attn.proj_drop(attn.proj(out))
        return x + self.drop_path1(self.ls1(out)), k.mean(dim=1)

    def mlp_step(self, x):
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class _HFViTLayer(_ToMeBlock):
    """transformers `ViTLayer`: layernorm_before / attention (q/k/v/o_proj) / dropout, then the MLP half."""

    def attention_step(self, x, size):
        attn = self.attention
        h = self.layernorm_before(x)
        heads = attn.num_attention_heads
        q, k, v = (split_heads(proj(h), heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        out, _ = attend(q, k, v, size, dropout_p(attn, attn.attention_dropout))
        return x + self.dropout(attn.o_proj(out)), k.mean(dim=1)

    def mlp_step(self, x):
        return x + self.dropout(self.mlp(self.layernorm_after(x)))


class _VideoMAELayer(_ToMeBlock):
    """transformers `VideoMAELayer`: layernorm_before / attention.attention (query, key, value) /
    attention.output, then layernorm_after / intermediate / output (which adds the residual)."""

    def attention_step(self, x, size):
        self_attn = self.attention.attention
        h = self.layernorm_before(x)
        heads = self_attn.num_attention_heads
        q, k, v = (split_heads(proj(h), heads) for proj in (self_attn.query, self_attn.key, self_attn.value))
        out, _ = attend(q, k, v, size, dropout_p(self_attn, self_attn.dropout_prob))
        return x + self.attention.output(out, h), k.mean(dim=1)

    def mlp_step(self, x):
        return self.output(self.intermediate(self.layernorm_after(x)), x)


def _timm_target(model):
    """(backbone, block container, wrapper class, protected) for timm, or None."""
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:
        return None
    backbone = find_backbone(model, [VisionTransformer])
    if backbone is None:
        return None
    refuse_repatch(backbone)
    for index, block in enumerate(backbone.blocks):
        if type(block) is not Block or type(block.attn) is not Attention:
            raise TypeError(
                f"vidsel.patch.tome: block {index} of {type(backbone).__name__} is {type(block).__name__} with "
                f"{type(block.attn).__name__}; supported: timm Block with timm Attention"
            )
    patches = getattr(backbone.patch_embed, "num_patches", None)
    tokens = None if patches is None else patches + backbone.num_prefix_tokens
    return backbone, backbone.blocks, _TimmBlock, backbone.num_prefix_tokens, tokens


def _hf_target(model):
    try:
        from transformers import VideoMAEModel, ViTModel
    except ImportError:
        return None
    backbone = find_backbone(model, [ViTModel, VideoMAEModel])
    if backbone is None:
        return None
    refuse_repatch(backbone)
    patches = backbone.embeddings.patch_embeddings.num_patches
    if isinstance(backbone, ViTModel):
        return backbone, backbone.layers, _HFViTLayer, 1, patches + 1
    return backbone, backbone.encoder.layer, _VideoMAELayer, 0, patches  # VideoMAE has no class token


def tome(model: nn.Module, r, *, prop_attn: bool = True, trace_source: bool = False,
         impl: str = "auto") -> PatchHandle:
    """Patches ToMe into every block of a timm / Hugging Face ViT, in place.

    Args:
        model: a timm `VisionTransformer`, a transformers `ViTModel` / `VideoMAEModel`, or a model
            containing one (the first found is patched).
        r: tokens merged per block (int), or one int per block.
        prop_attn: proportional attention (+ log size on the attention logits).
        trace_source: also track which input tokens each output token covers (``handle.state.source``).
        impl: backend of the vidsel ops.

    Returns:
        PatchHandle: ``.patched`` blocks, ``.state`` (`ToMeState` of the last forward), ``.remove()``.

    Raises:
        TypeError: nothing supported in `model` (the message names its class and the supported ones).
        ValueError: r is not a non-negative int / a sequence of one per block; model already patched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"vidsel.patch.tome: model must be an nn.Module, got {type(model).__name__}")
    target = _timm_target(model) or _hf_target(model)
    if target is None:
        raise unsupported("tome", model, SUPPORTED)
    backbone, blocks, wrapper, protected, tokens = target
    r_per_block = check_r("r", r, len(blocks))
    state = ToMeState(protected=protected)

    def make(index, block):
        return wrapper(block, index, r_per_block[index], state, prop_attn, trace_source, impl)

    schedule = tome_token_schedule(tokens, r_per_block, len(blocks), protected) if tokens else None
    undo = replace_items(blocks, make)
    return PatchHandle(backbone, "tome", state, undo, patched=len(undo), schedule=schedule)
