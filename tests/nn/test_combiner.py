"""Mirasol3B Combiners (§3.2): shapes, exact causality (eq. 2), streaming == full pass, TTM's constant
cost per step (eq. 3-6), TokenLearner."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers import assert_close
from vidsel.nn import ByteTokenizer, ChunkCausalBlock, TokenLearner, TransformerCombiner, TTMCombiner

B, T, N, D, M = 2, 5, 12, 32, 4


def make(kind: str, **kwargs):
    if kind == "transformer":
        return TransformerCombiner(D, 2, 4, M, **kwargs)
    return TTMCombiner(D, 2, 4, M, memory_tokens=6, read_tokens=5, **kwargs)


KINDS = ["transformer", "ttm"]


@pytest.mark.parametrize("kind", KINDS)
def test_shapes(kind):
    combiner = make(kind)
    assert combiner(torch.randn(B, T, N, D)).shape == (B, T, M, D)
    x_t, _ = combiner.step(torch.randn(B, N, D), combiner.init_state(B))
    assert x_t.shape == (B, M, D)


@pytest.mark.parametrize("kind", KINDS)
def test_causal_exactly(kind):
    """x_t depends on u_1..u_t only (eq. 2): perturbing chunks > t leaves x_<=t bit-identical."""
    combiner = make(kind).eval()
    u = torch.randn(B, T, N, D)
    with torch.no_grad():
        x = combiner(u)
        for t in range(T - 1):
            perturbed = u.clone()
            perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:])
            x_perturbed = combiner(perturbed)
            assert torch.equal(x_perturbed[:, : t + 1], x[:, : t + 1]), t
            assert not torch.equal(x_perturbed[:, t + 1], x[:, t + 1])


@pytest.mark.parametrize("kind", KINDS)
def test_step_equals_forward(kind):
    combiner = make(kind).eval()
    u = torch.randn(B, T, N, D)
    with torch.no_grad():
        full = combiner(u)
        state, steps = combiner.init_state(B), []
        for t in range(T):
            x_t, state = combiner.step(u[:, t], state)
            steps.append(x_t)
    assert_close(torch.stack(steps, 1), full)


def _step_flops(combiner, steps: int) -> list[int]:
    state, counts = combiner.init_state(1), []
    with torch.no_grad():
        for _ in range(steps):
            counter = FlopCounterMode(display=False)
            with counter:
                _, state = combiner.step(torch.randn(1, N, D), state)
            counts.append(counter.get_total_flops())
    return counts


def test_ttm_cost_per_step_is_constant():
    """TTM: the memory replaces the history, so step 12 costs exactly what step 2 costs; the
    Transformer Combiner's step attends to a growing cache."""
    ttm = _step_flops(make("ttm"), 12)
    assert len(set(ttm)) == 1, ttm
    transformer = _step_flops(make("transformer"), 12)
    assert all(a < b for a, b in zip(transformer, transformer[1:])), transformer


def test_ttm_memory_has_fixed_size_and_is_updated():
    combiner = make("ttm")
    memory = combiner.init_state(B)
    _, new_memory = combiner.step(torch.randn(B, N, D), memory)
    assert new_memory.shape == memory.shape == (B, 6, D)
    assert not torch.allclose(new_memory, memory)


def test_last_selection_keeps_the_chunks_last_outputs():
    combiner = make("transformer", selection="last").eval()
    assert combiner(torch.randn(B, T, N, D)).shape == (B, T, M, D)
    with pytest.raises(ValueError, match="n >= m"):
        combiner(torch.randn(B, T, M - 1, D))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    combiner = make(kind)
    combiner(torch.randn(B, T, N, D)).square().sum().backward()
    missing = [n for n, p in combiner.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs(kind):
    combiner = make(kind)
    with pytest.raises(ValueError, match=r"\(B, T, n, d\)"):
        combiner(torch.randn(B, N, D))
    with pytest.raises(ValueError, match="d=32"):
        combiner(torch.randn(B, T, N, D + 1))
    with pytest.raises(ValueError, match=r"\(B, n, d\)"):
        combiner.step(torch.randn(B, T, N, D), combiner.init_state(B))
    with pytest.raises(ValueError, match="selection"):
        TransformerCombiner(D, 1, 4, M, selection="first")


def test_token_learner_is_a_convex_combination():
    learner = TokenLearner(D, 3)
    x = torch.randn(B, 7, D)
    out = learner(x)
    assert out.shape == (B, 3, D)
    constant = torch.randn(1, 1, D).expand(B, 7, D)
    assert_close(learner(constant), constant[:, :3])  # weights sum to 1 over the tokens
    with pytest.raises(ValueError, match="num_tokens"):
        TokenLearner(D, 0)


def test_chunk_causal_block_step_matches_forward():
    block = ChunkCausalBlock(D, 4, chunk_size=3).eval()
    x = torch.randn(B, 9, D)
    with torch.no_grad():
        full = block(x)
        cache, outs = None, []
        for chunk in x.split(3, dim=1):
            y, cache = block.step(chunk, cache)
            outs.append(y)
    assert_close(torch.cat(outs, 1), full)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(["héllo", "a"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    assert ids[0, 0] == tok.BOS and ids[1, 2] == tok.EOS and ids[1, -1] == tok.PAD
    assert tok.decode(ids) == ["héllo", "a"]
    assert tok.encode("abc", length=3).tolist() == [[tok.BOS, 97, 98]]
    with pytest.raises(TypeError):
        tok.encode([1, 2])
