"""impl="auto" on CUDA tensors: each op's declared GPU preference decides between cuda and triton."""

import pytest
import torch

import vidsel.ops  # noqa: F401  (registers every op)
from vidsel import _backends
from vidsel.ops import _dispatch


@pytest.fixture
def every_backend_usable(monkeypatch):
    monkeypatch.setattr(_backends, "_unusable_reason", lambda impl, device: None)
    monkeypatch.setattr(_backends, "_ENV_IMPL", "auto")


@pytest.mark.parametrize("name,expected", [("chunk_attention", "triton"), ("bipartite_match", "triton"),
                                           ("topk_gather", "cuda"), ("perturbed_topk", "cuda")])
def test_auto_on_cuda_follows_the_declared_preference(every_backend_usable, name, expected):
    op = _dispatch.REGISTRY[name]
    assert _dispatch.resolve(name, "auto", torch.device("cuda"), op) == expected
    assert _dispatch.resolve(name, "auto", torch.device("cpu"), op) == "cpu"
    assert _dispatch.resolve(name, "cuda", torch.device("cuda"), op) == "cuda"  # explicit choices stay explicit


def test_a_public_function_prefers_triton_when_one_of_its_ops_does(every_backend_usable):
    ops = (_dispatch.REGISTRY["chunk_attention"], _dispatch.REGISTRY["chunk_attention_backward"])
    assert _dispatch.resolve("chunk_causal_attention", "auto", torch.device("cuda"), *ops) == "triton"


def test_an_unknown_preference_is_refused():
    with pytest.raises(ValueError, match="gpu_auto"):
        _dispatch.OpBackends("not_an_op", reference=lambda: None, gpu_auto="cpu")
