"""Checkpoint round trip in one process: every parameter, buffer and AdamW moment comes back bit for bit,
for models whose state_dict keys are renamed by hooks (the STTS TimeSformer) and for those that are not;
a save that fails half way leaves the previous checkpoint."""

import os

import pytest
import torch

from vidsel.train import checkpoint as ckpt
from vidsel.train.distributed import Context
from vidsel.train.loop import make_optimizer, train_step
from vidsel.train.models import build_classifier, parameter_groups

TINY_VIT = dict(num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
MODELS = {
    "stts": ("timesformer_8x224-T0.5@0-S0.7@1", dict(TINY_VIT, num_samples=20)),
    "testa": ("testa_f16", dict(TINY_VIT, r_frames=1, r_patches=2)),
}


def fresh(name, overrides, seed):
    torch.manual_seed(seed)
    model = build_classifier(name, 4, overrides)
    optimizer, scheduler = make_optimizer(parameter_groups(model, 1e-3, 0.05, 2.0), 1e-3, 10, 1, 0.0)
    return model, optimizer, scheduler


def trained(name, overrides, steps):
    model, optimizer, scheduler = fresh(name, overrides, seed=0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        clips = torch.rand(2, 3, 4, 32, 32, generator=generator)
        train_step(model, optimizer, scheduler, clips, torch.randint(0, 4, (2,), generator=generator))
    return model, optimizer, scheduler


@pytest.mark.parametrize("case", sorted(MODELS))
def test_restore_gives_back_every_tensor_and_moment(case, tmp_path):
    name, overrides = MODELS[case]
    model, optimizer, scheduler = trained(name, overrides, steps=2)
    path = str(tmp_path / "checkpoint.pt")
    ckpt.save_atomic(ckpt.gather(model, optimizer, scheduler, dict(progress={}), Context()), path)
    copy, copy_optimizer, copy_scheduler = fresh(name, overrides, seed=5)  # other initial weights
    ckpt.restore(copy, copy_optimizer, copy_scheduler, ckpt.load(path), Context())

    assert model.state_dict().keys() == copy.state_dict().keys()
    for (key, value), (_, restored) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(value, restored), key
    state, restored_state = optimizer.state_dict()["state"], copy_optimizer.state_dict()["state"]
    assert state.keys() == restored_state.keys()
    for index in state:
        for field in state[index]:
            assert torch.equal(state[index][field], restored_state[index][field]), (index, field)
    assert copy_scheduler.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"] == 2
    assert copy_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_restore_into_another_config_names_the_tensor(tmp_path):
    name, overrides = MODELS["testa"]
    model, optimizer, scheduler = trained(name, overrides, steps=1)
    state = ckpt.gather(model, optimizer, scheduler, dict(progress={}), Context())
    other, _, _ = fresh(name, dict(overrides, depth=3), seed=0)
    with pytest.raises(ValueError, match="does not fit this model"):
        ckpt.load_full_model_state(other, state["model"])
    wider, _, _ = fresh(name, dict(overrides, num_heads=4, embed_dim=64), seed=0)
    with pytest.raises(ValueError, match="has shape"):
        ckpt.load_full_model_state(wider, state["model"])


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    ckpt.save_atomic(dict(step=1), path)
    real_save = torch.save

    def half_written(obj, handle):
        real_save(obj, handle)
        handle.truncate(10)  # a partial file, then the failure (disk full, a signal, ...)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_atomic(dict(step=2), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path) == dict(step=1)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
