"""Fixtures shared by several test modules (tests/ stays a plain rootdir, no __init__.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """One intra-op thread: on the shared 2-core runner (pytest -n 2) more threads only spin.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``, so torch is only
    imported (and its thread count only touched) for the tests that use it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
