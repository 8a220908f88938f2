"""vidsel.io.motion on hand-made AVMotionVector records: rasterisation, sign convention, pooling,
motion compensation and the residual (no video encoding here)."""

import numpy as np
import pytest
import torch

from vidsel.io.motion import block_motion, compensate, residual

# The fields of FFmpeg's AVMotionVector, as PyAV's MotionVectors.to_ndarray() returns them.
VECTOR = np.dtype([
    ("source", "i4"), ("w", "u1"), ("h", "u1"), ("src_x", "i2"), ("src_y", "i2"), ("dst_x", "i2"),
    ("dst_y", "i2"), ("flags", "u8"), ("motion_x", "i4"), ("motion_y", "i4"), ("motion_scale", "u2"),
])


def vectors(*blocks):
    """blocks: (left, top, w, h, forward_dx, forward_dy[, source]) -> AVMotionVector records (quarter-pel)."""
    out = np.zeros(len(blocks), VECTOR)
    for i, (left, top, w, h, dx, dy, *source) in enumerate(blocks):
        cx, cy = left + w // 2, top + h // 2
        # FFmpeg: src = dst + motion / scale, the opposite of vidsel's forward convention.
        out[i] = (source[0] if source else -1, w, h, cx - dx, cy - dy, cx, cy, 0, round(-dx * 4), round(-dy * 4), 4)
    return out


def block_motion_tensors(*args):
    motion, dense, unit = block_motion(*args)
    return torch.from_numpy(motion), torch.from_numpy(dense), unit


def test_sign_convention_and_block_layout():
    mvs = vectors((0, 0, 16, 16, 3, -1), (16, 0, 16, 16, -2, 5))
    motion, dense, unit = block_motion_tensors(mvs, 16, 32, 16)
    assert unit == 16
    assert motion.shape == (2, 1, 2)
    assert motion[:, 0, 0].tolist() == [3, -1] and motion[:, 0, 1].tolist() == [-2, 5]
    assert dense.shape == (2, 16, 32)
    assert (dense[0, :, :16] == 3).all() and (dense[1, :, 16:] == 5).all()


def test_small_blocks_are_averaged_and_large_repeated():
    # One 16×16 macroblock split into four 8×8 blocks, and one whole 16×16 block.
    mvs = vectors((0, 0, 8, 8, 1, 0), (8, 0, 8, 8, 3, 0), (0, 8, 8, 8, 1, 4), (8, 8, 8, 8, 3, 4), (16, 0, 16, 16, 2, 2))
    coarse, _, _ = block_motion_tensors(mvs, 16, 32, 16)
    torch.testing.assert_close(coarse[:, 0, 0], torch.tensor([2.0, 2.0]))
    fine, _, unit = block_motion_tensors(mvs, 16, 32, 4)
    assert unit == 4 and fine.shape == (2, 4, 8)
    assert (fine[0, :2, :2] == 1).all() and (fine[0, :2, 2:4] == 3).all() and (fine[:, :, 4:] == 2).all()


def test_intra_blocks_and_backward_vectors_give_zero_motion():
    # Block at x=16 is missing (intra); a future-referencing (B) vector must be ignored.
    mvs = vectors((0, 0, 16, 16, 4, 4), (16, 0, 16, 16, 9, 9, 1))
    motion, _, _ = block_motion_tensors(mvs, 16, 32, 16)
    assert motion[:, 0, 1].tolist() == [0.0, 0.0]
    # A 16×16 grid cell half covered by an 8×8 pair: the intra half does not dilute the mean.
    motion, _, _ = block_motion_tensors(vectors((0, 0, 8, 16, 6, 2)), 16, 16, 16)
    assert motion[:, 0, 0].tolist() == [6.0, 2.0]


def test_frame_not_multiple_of_block_size():
    mvs = vectors((0, 0, 16, 16, 1, 1), (16, 0, 16, 16, 2, 2), (0, 16, 16, 16, 3, 3), (16, 16, 16, 16, 4, 4))
    motion, dense, _ = block_motion_tensors(mvs, 20, 24, 16)  # the codec pads to 32×32
    assert motion.shape == (2, 2, 2) and dense.shape == (2, 20, 24)
    assert motion[0].flatten().tolist() == [1, 2, 3, 4]


def test_compensate_integer_and_half_pixel():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    shift = np.zeros((2, 12, 16), np.float32)
    shift[0], shift[1] = 2, -1  # content moved right 2, up 1
    prediction = compensate(reference, shift)
    # pred(y, x) = ref(y + 1, x - 2) away from the borders
    np.testing.assert_array_equal(prediction[:-1, 2:], reference[1:, :-2])
    half = np.zeros((2, 12, 16), np.float32)
    half[0] = 0.5
    expected = (reference[:, :-1].astype(np.float32) + reference[:, 1:]) / 2
    np.testing.assert_allclose(compensate(reference, half)[:, 1:], expected, rtol=0, atol=1e-4)
    quarter = np.full((2, 12, 16), -0.25, np.float32)  # both axes: a 2×2 bilinear blend
    r = reference.astype(np.float32)
    blend = 0.5625 * r[:-1, :-1] + 0.1875 * (r[:-1, 1:] + r[1:, :-1]) + 0.0625 * r[1:, 1:]
    np.testing.assert_allclose(compensate(reference, quarter)[:-1, :-1], blend, rtol=0, atol=1e-3)
    # edges are replicated, as the codecs' unrestricted vectors read them
    far = np.full((2, 12, 16), 40.0, np.float32)
    assert (compensate(reference, far) == reference[0, 0]).all()


def test_residual_is_frame_minus_prediction_and_picks_best_reference():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    frame = reference.copy()
    frame[:8, :8] = other[:8, :8]  # top-left 8×8 block predicted from `other`
    still = np.zeros((2, 16, 20), np.float32)
    single = residual(frame, [reference], still)
    assert single.dtype == np.int16
    np.testing.assert_array_equal(single, frame.astype(np.int16) - reference)
    assert not residual(frame, [reference, other], still).any()
    # the ragged 4-pixel column at the right edge is its own cell
    frame[:, 16:] = other[:, 16:]
    assert not residual(frame, [reference, other], still).any()


@pytest.mark.parametrize("block_size", [4, 8, 16])
def test_block_sizes(block_size):
    mvs = vectors(*[(x, y, 8, 8, x // 8, y // 8) for y in range(0, 32, 8) for x in range(0, 32, 8)])
    motion, _, _ = block_motion_tensors(mvs, 32, 32, block_size)
    assert motion.shape == (2, 32 // block_size, 32 // block_size)
    # mean over each block of the per-8×8 values
    per_block = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="xy"))
    full = per_block.repeat_interleave(8, 1).repeat_interleave(8, 2)
    expected = torch.nn.functional.avg_pool2d(full[None], block_size)[0]
    torch.testing.assert_close(motion, expected)
