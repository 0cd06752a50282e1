"""Shared helpers for the tests (the ``cluster`` fixture comes from securetorch's pytest plugin)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
import torch

from securetorch.session.context import current

from .deploy import Deployment, start_deployment


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
