"""create_model and flops.count_model reject impossible sizes up front."""

import pytest

from vidsel import flops
from vidsel.models import create_model


def test_create_model_rejects_a_negative_depth():
    with pytest.raises(ValueError, match="depth=-1 must be >= 0"):
        create_model("mmvit_i", depth=-1)


@pytest.mark.parametrize("batch_size", [0, -1, 1.0])
def test_count_model_rejects_a_batch_size_below_one(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        flops.count_model("mmvit_i", batch_size=batch_size)
