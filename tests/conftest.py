"""Shared helpers for the tests (the ``cluster`` fixture comes from securetorch's pytest plugin)."""

from __future__ import annotations

import contextlib
import functools
import gc
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from securetorch.session.context import current, current_or_none

from .deploy import Deployment, start_deployment

# Test folders in the order their files run: the layers whose tests start real processes
# (minutes of interpreters, launchers and models) first, the many short protocol and tensor
# tests last. With ``--dist loadfile --no-loadscope-reorder`` (scripts/dev.sh) xdist hands
# the files to its workers in this order, so the suite does not end with one worker running
# a long integration file while the other idles (xdist's own order, most tests first, put
# the one-test files of whole deployments last).
LAYER_ORDER = ("deployment", "security", "models", "protocols", "tensor")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def layer(item: pytest.Item) -> int:
        folder = item.path.relative_to(here).parts[0] if item.path.is_relative_to(here) else ""
        return LAYER_ORDER.index(folder) if folder in LAYER_ORDER else len(LAYER_ORDER)

    items.sort(key=layer)  # stable: within a folder, files and tests keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection made (torch, transformers, the test modules: millions of
    objects) to the permanent generation: every closing in-process cluster runs a full
    collection (``release_freed_memory``), which then scans only what the tests made since:
    16 ms a collection instead of 205 here (tests/protocols/test_workload_costs.py, 48
    simulators: 20 s instead of 30)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    """Three service parties from a cluster file (CURVE on loopback), shared by the session;
    drivers of every role (``deploy.ROLES``). Tests use model names of their own."""
    running = start_deployment(tmp_path_factory.mktemp("keys"), tmp_path_factory.mktemp("shares"))
    yield running
    running.stop()


def seeded(seed: int) -> torch.Generator:
    """Test-data generator (plaintext inputs only; protocols never use torch's RNG)."""
    return torch.Generator().manual_seed(seed)


def chi_square_critical(df: int, z: float = 2.326) -> float:
    """The chi-square critical value with ``df`` degrees of freedom at the upper-tail
    probability whose normal quantile is ``z`` (2.326: p = 0.01; 4.753: p = 1e-6), by the
    Wilson-Hilferty approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square_uniform_bytes(data: bytes) -> tuple[float, float]:
    """Chi-square statistic of byte frequencies vs uniform, and the critical value at p = 1e-6
    (255 degrees of freedom)."""
    counts = torch.bincount(torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), minlength=256).double()
    expected = len(data) / 256
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, chi_square_critical(255, z=4.753)


@contextlib.contextmanager
def received_tensors() -> Iterator[list[torch.Tensor]]:
    """Inside a party: collect every tensor this party receives from its peers meanwhile."""
    with current().net.received() as received:
        yield received


# torch's factories that take a device (and default to the CPU without one)
FACTORIES = ("arange", "as_tensor", "asarray", "empty", "eye", "full", "linspace", "ones", "range", "scalar_tensor")
FACTORIES += ("tensor", "tril_indices", "triu_indices", "zeros")


@contextlib.contextmanager
def factories_default_to_meta(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside the ``with`` block, a factory called by a party (a context is current) without
    a device makes a meta tensor (the driver is left alone: it deals and reconstructs)."""

    def placed(factory):
        @functools.wraps(factory)
        def call(*args, **kwargs):
            from_tensor = bool(args) and isinstance(args[0], torch.Tensor)  # as_tensor(t) keeps t's device
            if kwargs.get("device") is None and not from_tensor and current_or_none() is not None:
                kwargs["device"] = "meta"
            return factory(*args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        for name in FACTORIES:
            patch.setattr(torch, name, placed(getattr(torch, name)))
        yield
