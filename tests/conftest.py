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


def chi_square_uniform_bytes(data: bytes) -> tuple[float, float]:
    """Chi-square statistic of byte frequencies vs uniform, and the critical value at p = 1e-6
    (Wilson-Hilferty approximation, 255 degrees of freedom)."""
    counts = torch.bincount(torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), minlength=256).double()
    expected = len(data) / 256
    stat = float(((counts - expected) ** 2 / expected).sum())
    k, z = 255, 4.753  # z for upper tail 1e-6
    critical = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    return stat, critical


@contextlib.contextmanager
def received_tensors() -> Iterator[list[torch.Tensor]]:
    """Inside a party: collect every tensor this party receives from its peers meanwhile."""
    with current().net.received() as received:
        yield received
