"""Model directories for the speculative tests: the tiny llama target from the shared
fixtures, a draft that is a copy of it (every greedy proposal accepted) and a different
random draft of the same vocabulary (few accepted)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def target_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def copy_draft_dir(target_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("draft-copy") / "model"
    shutil.copytree(target_dir, out)
    return out


@pytest.fixture(scope="session")
def random_draft_dir(tiny_model_dir):
    return tiny_model_dir("llama", num_hidden_layers=1, intermediate_size=96)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models here are bound by per-op overhead: a second OpenMP thread gains
    nothing, and on a loaded 2-core machine its barriers make small matmuls 10-100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
