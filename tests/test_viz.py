"""vidsel.viz: the pictures' content is checked against the indices they draw."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import vidsel
from tests.video_factory import make_video
from vidsel import io, viz
from vidsel.viz._draw import ARROW, BAR, BOX, DIM, GAP, KEPT, group_colour
from vidsel.viz.motion import arrow_field

SIZE = 64  # model input; patch 16 -> 4 x 4 patches


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(os.path.join(tmp_path_factory.mktemp("viz"), "clip.mp4"), size=(SIZE, SIZE), num_frames=16,
                      motion=(2, -2), audio=None)


def make_testa_encoder(**overrides):
    config = dict(num_frames=4, img_size=SIZE, embed_dim=64, depth=2, num_heads=4, r_frames=1, r_patches=4)
    return vidsel.create_model("testa_f16", **{**config, **overrides}).eval()


def map_row(picture: np.ndarray, t: int, top: int) -> np.ndarray:
    """The group-map image of column t (below the frame) of a merge picture."""
    left = t * (SIZE + GAP)
    y = top + SIZE + GAP
    return picture[y:y + SIZE, left:left + SIZE]


def assert_map_shows_groups(picture: np.ndarray, groups: torch.Tensor, top: int) -> None:
    """Every patch's interior has its group's colour: one colour per group, different groups differ."""
    cell = SIZE // groups.shape[1]
    for t in range(groups.shape[0]):
        image = map_row(picture, t, top)
        for r in range(groups.shape[1]):
            for c in range(groups.shape[2]):
                interior = image[r * cell + 1:(r + 1) * cell - 1, c * cell + 1:(c + 1) * cell - 1].reshape(-1, 3)
                assert (interior == group_colour(int(groups[t, r, c]))).all()
    ids = torch.unique(groups).tolist()
    assert len({group_colour(i) for i in ids}) == len(ids)


def test_merge_picture_from_given_indices():
    frames = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    groups = torch.tensor([[[0, 0], [1, 2]], [[3, 3], [3, 4]]])
    merged = np.asarray(viz.merge_picture(frames, viz.MergeTrace(groups, torch.tensor([0, 0]))))
    top = BAR + GAP
    assert_map_shows_groups(merged, groups, top)
    for t in range(2):  # both frames merged into output frame 0: the same bar colour
        assert (merged[:BAR, t * (SIZE + GAP):t * (SIZE + GAP) + SIZE] == group_colour(0)).all()
        assert np.array_equal(merged[top:top + SIZE, t * (SIZE + GAP):t * (SIZE + GAP) + SIZE],
                              frames[t].permute(1, 2, 0).numpy())
    separate = np.asarray(viz.merge_picture(frames, viz.MergeTrace(groups, torch.tensor([0, 1]))))
    assert (separate[:BAR] == 255).all()  # nothing merged: no bars


def test_testa_encoder_groups_match_token_sizes(video):
    encoder = make_testa_encoder()
    frames = io.read_frames(video.path, 4, size=SIZE)
    trace = viz.trace_merges(encoder, frames)
    x = viz._input.model_input(frames, SIZE, "bcthw")
    with torch.no_grad():
        _, info = encoder(x, return_info=True)
    token_size = (info["frame_size"][:, :, None] * info["patch_size"])[0].flatten()  # id = t'·L' + l'
    counts = torch.bincount(trace.groups.flatten(), minlength=token_size.numel())
    assert torch.equal(counts.to(token_size.dtype), token_size.round())
    assert torch.equal(torch.bincount(trace.frame_groups).to(token_size.dtype), info["frame_size"][0])
    picture = np.asarray(viz.merges(encoder, frames))
    assert_map_shows_groups(picture, trace.groups, BAR + GAP)


def test_patched_timesformer_draws_the_same_groups_as_vidsel_testa(video):
    from tests.patch.small_models import hf_timesformer
    from vidsel.patch import testa
    from vidsel.patch.testa import timesformer_state_dict

    encoder = make_testa_encoder()
    model = hf_timesformer(depth=2)
    model.load_state_dict(timesformer_state_dict(encoder.state_dict()))
    frames = io.read_frames(video.path, 4, size=SIZE)
    handle = testa(model, 1, 4, trace_source=True)
    patched, reference = viz.trace_merges(handle, frames), viz.trace_merges(encoder, frames)
    assert torch.equal(patched.groups, reference.groups)
    assert torch.equal(patched.frame_groups, reference.frame_groups)


def test_tome_handle_groups_match_sizes(video):
    from tests.patch.small_models import timm_vit
    from vidsel.patch import tome

    frames = io.read_frames(video.path, 1, size=SIZE)
    handle = tome(timm_vit(), 3, trace_source=True)
    trace = viz.trace_merges(handle, frames)
    size = handle.state.size[0]
    counts = torch.bincount(trace.groups.flatten(), minlength=size.numel())
    assert counts[0] == 0 and torch.equal(counts[1:].to(size.dtype), size[1:])  # token 0 is CLS alone
    with pytest.raises(ValueError, match="trace_source=True"):
        handle.remove()
        viz.trace_merges(tome(timm_vit(), 3), frames)


def stts_model(selections):
    config = dict(embed_dim=16, stage_depths=(1, 1, 2, 1), num_frames=8, img_size=SIZE, num_classes=5)
    return vidsel.create_model(f"mvit_b16-{selections}", **config).eval()


def test_selection_trace_is_what_the_model_selected(video):
    model = stts_model("T0.5@0")
    frames = io.read_frames(video.path, 8, size=SIZE)
    outputs = []
    model.selectors[0].register_forward_hook(lambda module, args, out: outputs.append((args[0], out)))
    trace = viz.trace_selections(model, frames)
    grid, selected = outputs[-1]
    token_frames = sorted({t // 2 for t in trace.kept})  # MViT's patch embedding has temporal stride 2
    assert len(token_frames) == 2 and trace.kept == [i for k in token_frames for i in (2 * k, 2 * k + 1)]
    assert torch.equal(selected, grid[:, token_frames])
    assert trace.boxes == {}


def outline(top, left, height, width, thickness):
    """Boolean (SIZE, SIZE) mask of a rectangle's outline, `thickness` pixels inwards."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[top:top + height, left:left + width] = True
    t = thickness
    mask[top + t:top + height - t, left + t:left + width - t] = False
    return mask


def test_selection_picture_marks_kept_frames_and_anchor_boxes(video):
    model = stts_model("T0.5@0-S0.6@2")
    frames = io.read_frames(video.path, 8, size=SIZE)
    trace = viz.trace_selections(model, frames)
    # before block 2 the grid is 8 x 8 tokens of 8 pixels; a = round(sqrt(64 * 0.6)) = 6 -> 48 pixels
    assert set(trace.boxes) == set(trace.kept) and all(box[2:] == (48.0, 48.0) for box in trace.boxes.values())
    picture = np.asarray(viz.selection_picture(frames, trace))
    for t in range(8):
        column = picture[:, t * (SIZE + GAP):t * (SIZE + GAP) + SIZE]
        frame = frames[t].permute(1, 2, 0).numpy()
        if t in trace.kept:
            top, left, h, w = (int(v) for v in trace.boxes[t])
            box = outline(top, left, h, w, 2)
            border = outline(0, 0, SIZE, SIZE, 3) & ~box
            assert (column[box] == BOX).all() and (column[border] == KEPT).all()
            rest = ~(box | border)
            assert np.array_equal(column[rest], frame[rest])
        else:
            assert np.array_equal(column, (frame.astype(np.float32) * DIM).astype(np.uint8))


def test_motion_arrows_follow_the_motion(video):
    clip = io.read_compressed(video.path, 2, audio=False)
    picture = np.asarray(viz.motion(clip))
    starts, vectors = arrow_field(clip.motion[0], clip.block_size)
    column = picture[:, :SIZE]
    arrow = (column == ARROW).all(axis=-1)
    for (x, y), (dx, dy) in zip(starts.astype(int), vectors):
        assert (dx, dy) == (2.0, -2.0)  # the video translates by (2, -2) pixels per frame
        assert arrow[y, x] and arrow[y - 1, x + 1]  # the arrow leaves the block centre up and right
    assert arrow.sum() >= 3 * len(starts)
    assert not (np.asarray(frames_only(clip)) == ARROW).all(axis=-1).any()


def frames_only(clip):
    return Image.fromarray(clip.iframes[0].permute(1, 2, 0).numpy())


def test_save_png_and_gif(tmp_path):
    frames = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    picture = viz.merge_picture(frames, viz.MergeTrace(torch.arange(48).reshape(3, 4, 4)))
    png = viz.save(picture, tmp_path / "a.png")
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), np.asarray(picture))
    gif = Image.open(viz.save(picture, tmp_path / "a.gif", frames=3))
    assert gif.n_frames == 3 and gif.size == (SIZE, picture.height)
    with pytest.raises(ValueError, match=".png or .gif"):
        viz.save(picture, tmp_path / "a.jpg")


def test_errors():
    frames = torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8)
    with pytest.raises(TypeError, match="Linear"):
        viz.merges(torch.nn.Linear(2, 2), frames)
    with pytest.raises(TypeError, match="no STTS selectors"):
        viz.selections(make_testa_encoder(), frames)
    with pytest.raises(ValueError, match="uint8"):
        viz.merge_picture(frames.float(), viz.MergeTrace(torch.zeros(2, 4, 4, dtype=torch.long)))


def test_mist_picture_marks_selected_segments_and_regions(video):
    mist_models = pytest.importorskip("vidsel.models.mist")
    model = vidsel.create_model("mist_clip", num_segments=4, frames_per_segment=2, num_patches=17, dim=64, topk=2,
                                topj=3, num_layers=1, num_heads=4).eval()
    encoder = mist_models.TinyViTEncoder(img_size=SIZE, patch_size=16, dim=64, depth=1)
    frames = io.read_frames(video.path, 8, size=SIZE)
    trace = viz.trace_mist(model, frames, encoder)
    patches = encoder.encode_frames(frames[None]).reshape(1, 4, 2, 17, 64)
    generator = torch.Generator().manual_seed(0)
    words, answers = torch.randn(1, 20, 64, generator=generator), torch.randn(1, 5, 64, generator=generator)
    with torch.no_grad():
        _, info = model(patches, words, answers, return_info=True)
    assert trace.segments == sorted(info["segments"][0, -1].tolist()) and len(trace.segments) == 2
    picture = np.asarray(viz.mist(model, frames, encoder))
    from vidsel.viz.mist import REGION, SEGMENT

    cell = SIZE // 4
    for t in range(8):
        column = picture[:, t * (SIZE + GAP):t * (SIZE + GAP) + SIZE]
        if t // 2 in trace.segments:
            border = column[-3:].reshape(-1, 3)  # the orange frame; patch outlines may cross it
            is_segment, is_region = (border == SEGMENT).all(axis=-1), (border == REGION).all(axis=-1)
            assert (is_segment | is_region).all() and is_segment.mean() > 0.5
            assert 1 <= len(trace.regions[t]) <= 3
            for row, col in trace.regions[t]:
                edge = column[row * cell:(row + 1) * cell, col * cell]
                assert ((edge == REGION).all(axis=-1) | (edge == SEGMENT).all(axis=-1)).all()
        else:
            frame = frames[t].permute(1, 2, 0).numpy()
            assert np.array_equal(column, (frame.astype(np.float32) * DIM).astype(np.uint8))
