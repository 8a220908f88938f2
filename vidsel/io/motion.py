"""Motion vectors from FFmpeg's MOTION_VECTORS side data, rasterised to a block grid, and the
motion-compensated residual (MM-ViT §3.1: a P-frame = motion vectors + residual).

Sign convention (used everywhere in vidsel.io): ``motion[0]`` is horizontal (x, to the right) and
``motion[1]`` vertical (y, down), in pixels, pointing FORWARD in time like optical flow: the content
at (x, y) of the reference frame appears at (x + mx, y + my) in the P-frame. A scene translating by
(dx, dy) pixels per frame therefore gives motion (dx, dy) × (frames between the P-frame and its
reference). FFmpeg's AVMotionVector stores the opposite direction (``src = dst + motion_x /
motion_scale``): we return ``dst - src``. The prediction of a P-frame pixel p is thus
``reference(p - motion(p))``.
"""

from __future__ import annotations

import math

import av
import numpy as np


def exported_vectors(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's AVMotionVector records (numpy structured array) or None when it carries none."""
    side_data = frame.side_data.get("MOTION_VECTORS")
    if side_data is None:
        return None
    return side_data.to_ndarray()


def raster_unit(vectors: np.ndarray, block_size: int) -> int:
    """Largest cell size (pixels) that tiles every block edge and `block_size` exactly (4 for H.264)."""
    geometry = [block_size]
    if len(vectors):
        w, h = vectors["w"].astype(np.int64), vectors["h"].astype(np.int64)
        left = vectors["dst_x"].astype(np.int64) - w // 2
        top = vectors["dst_y"].astype(np.int64) - h // 2
        geometry += [int(np.gcd.reduce(np.abs(a))) for a in (w, h, left, top) if np.any(a)]
    return max(1, math.gcd(*geometry))


def rasterize(vectors: np.ndarray, *, unit: int, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Paints the past-referencing vectors onto a grid of unit×unit cells.

    vectors: AVMotionVector records of one frame. grid: (rows, cols) of the output (may extend past the
    frame to a multiple of the block size). Returns (flow (2, rows, cols) float32 forward motion in
    pixels, count (rows, cols) float32 = how many vectors covered each cell; 0 for intra-coded blocks).
    """
    rows, cols = grid
    sums = np.zeros((2, rows * cols), np.float64)
    count = np.zeros(rows * cols, np.float64)
    past = vectors[vectors["source"] < 0] if len(vectors) else vectors
    if len(past):
        scale = past["motion_scale"].astype(np.float64)
        scale[scale == 0] = 1.0
        forward_x = -past["motion_x"].astype(np.float64) / scale
        forward_y = -past["motion_y"].astype(np.float64) / scale
        w, h = past["w"].astype(np.int64), past["h"].astype(np.int64)
        left = (past["dst_x"].astype(np.int64) - w // 2) // unit
        top = (past["dst_y"].astype(np.int64) - h // 2) // unit
        for bw, bh in set(zip(w.tolist(), h.tolist())):
            same = (w == bw) & (h == bh)
            ys = top[same][:, None, None] + np.arange(max(bh // unit, 1))[None, :, None]
            xs = left[same][:, None, None] + np.arange(max(bw // unit, 1))[None, None, :]
            ys, xs = np.broadcast_arrays(ys, xs)
            inside = (ys >= 0) & (ys < rows) & (xs >= 0) & (xs < cols)
            flat = (ys * cols + xs)[inside]
            owner = np.broadcast_to(np.arange(int(same.sum()))[:, None, None], ys.shape)[inside]
            count += np.bincount(flat, minlength=rows * cols)
            sums[0] += np.bincount(flat, weights=forward_x[same][owner], minlength=rows * cols)
            sums[1] += np.bincount(flat, weights=forward_y[same][owner], minlength=rows * cols)
    flow = sums / np.maximum(count, 1)
    return flow.reshape(2, rows, cols).astype(np.float32), count.reshape(rows, cols).astype(np.float32)


def pool_to_blocks(flow: np.ndarray, count: np.ndarray, factor: int) -> np.ndarray:
    """Coverage-weighted mean over factor×factor cells: (2, rows, cols) -> (2, rows/factor, cols/factor).

    Cells no vector covered (intra blocks) do not dilute the mean; an all-intra block gets motion 0.
    """
    if factor == 1:
        return flow
    _, rows, cols = flow.shape
    shape = (rows // factor, factor, cols // factor, factor)
    weighted = (flow * count).reshape(2, *shape).sum(axis=(2, 4))
    total = count.reshape(shape).sum(axis=(1, 3))
    return (weighted / np.maximum(total, 1e-12) * (total > 0)).astype(np.float32)


def block_motion(
    vectors: np.ndarray | None, height: int, width: int, block_size: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Motion of one P-frame at block granularity and at pixel resolution.

    Returns (motion (2, ceil(H/g), ceil(W/g)) float32 with g = block_size, dense (2, H, W) float32: each
    pixel's own coded vector, the field used for motion compensation, unit: the finest block edge in
    pixels). Blocks smaller than g are averaged (coverage-weighted); larger blocks are repeated.
    """
    vectors = vectors if vectors is not None else np.zeros(0, dtype=[("source", "i4")])
    unit = raster_unit(vectors, block_size) if len(vectors) else block_size
    grid_rows, grid_cols = -(-height // block_size), -(-width // block_size)
    factor = block_size // unit
    if len(vectors):
        flow, count = rasterize(vectors, unit=unit, grid=(grid_rows * factor, grid_cols * factor))
    else:
        flow = np.zeros((2, grid_rows * factor, grid_cols * factor), np.float32)
        count = np.zeros(flow.shape[1:], np.float32)
    dense = np.ascontiguousarray(np.repeat(np.repeat(flow, unit, axis=1), unit, axis=2)[:, :height, :width])
    return pool_to_blocks(flow, count, factor), dense, unit


def sampling_plan(dense_motion: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Where ``pred(p) = reference(p - motion(p))`` reads: [(flat pixel index (H, W), weight (H, W, 1))].

    One tap with weight None for whole-pixel fields, else the four bilinear taps. Coordinates are clamped
    to the frame: edges replicated, as the codecs' unrestricted vectors read outside the frame.
    """
    _, height, width = dense_motion.shape
    ys = np.clip(np.arange(height, dtype=np.float32)[:, None] - dense_motion[1], 0, height - 1)
    xs = np.clip(np.arange(width, dtype=np.float32)[None, :] - dense_motion[0], 0, width - 1)
    y0, x0 = np.floor(ys).astype(np.intp), np.floor(xs).astype(np.intp)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    if not wy.any() and not wx.any():
        return [(y0 * width + x0, None)]
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    return [
        (y0 * width + x0, (1 - wy) * (1 - wx)), (y0 * width + x1, (1 - wy) * wx),
        (y1 * width + x0, wy * (1 - wx)), (y1 * width + x1, wy * wx),
    ]


def compensate(reference: np.ndarray, dense_motion: np.ndarray, plan=None) -> np.ndarray:
    """Motion-compensated prediction ``pred(p) = reference(p - motion(p))``.

    reference: (H, W, 3) uint8 RGB; dense_motion: (2, H, W) forward motion in pixels. Bilinear sampling
    for sub-pixel vectors (MPEG-4 half-pel, H.264 quarter-pel), edges replicated. Returns (H, W, 3)
    float32. NumPy on purpose: single-threaded, so it does not fight for cores in data-loading workers.
    """
    plan = plan if plan is not None else sampling_plan(dense_motion)
    pixels = reference.reshape(-1, reference.shape[-1])
    if plan[0][1] is None:
        return np.take(pixels, plan[0][0], axis=0).astype(np.float32)
    prediction = np.zeros(reference.shape, np.float32)
    for index, weight in plan:
        prediction += np.take(pixels, index, axis=0) * weight
    return prediction


def residual(frame: np.ndarray, references: list[np.ndarray], dense_motion: np.ndarray, cell: int = 8) -> np.ndarray:
    """frame − round(compensate(reference, dense_motion)) as int16 (H, W, 3), in [-255, 255].

    frame, references: (H, W, 3) uint8, references nearest first. FFmpeg does not export which reference
    a block used (H.264 picks one per 8×8 sub-macroblock among several), so with more than one candidate
    each cell×cell block takes the candidate with the smallest absolute residual (ties: the nearest).
    One candidate = the plain MM-ViT residual.
    """
    plan = sampling_plan(dense_motion)
    target = frame.astype(np.int16)
    residuals = [target - np.rint(compensate(r, dense_motion, plan)).astype(np.int16) for r in references]
    if len(residuals) == 1:
        return residuals[0]
    stacked = np.stack(residuals)  # (K, H, W, 3)
    k, height, width, _ = stacked.shape
    rows, cols = -(-height // cell), -(-width // cell)
    cost = np.zeros((k, rows * cell, cols * cell), np.int32)
    cost[:, :height, :width] = np.abs(stacked).sum(-1, dtype=np.int32)
    cost = cost.reshape(k, rows, cell, cols, cell).sum(axis=(2, 4))
    choice = np.repeat(np.repeat(cost.argmin(0), cell, axis=0), cell, axis=1)[:height, :width, None]
    best = residuals[0]
    for candidate in range(1, k):
        best = np.where(choice == candidate, residuals[candidate], best)
    return best
