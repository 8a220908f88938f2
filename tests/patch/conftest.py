"""Patch tests: nothing is downloaded (models come from the libraries' own configs, random weights)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _patch_tests_on_one_thread(one_thread):
    """Tiny models run faster on one thread than on two contended ones (shared machine)."""
