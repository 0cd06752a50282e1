"""pytest plugin (entry point ``pytest11``): session-wide ``sim`` and ``cluster`` fixtures.

Any project with securetorch installed can write ``def test_x(sim): sim.run(fn, ...)``: the
three parties are threads of the test process (``Simulator``: no start-up, a failure shows
one traceback), with the same outputs, bytes and rounds as processes. ``cluster`` is three
party processes (``LocalCluster``) for what needs real process boundaries. Both start once
per test session. Options: ``--securetorch-timeout`` (seconds a party waits for a peer,
default 60) and ``--securetorch-device`` (where the parties of both compute, default
``cpu``: ``--securetorch-device cuda`` runs a suite's protocols on the GPU).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from securetorch.runtime.cluster import LocalCluster
from securetorch.runtime.simulator import Simulator


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("securetorch")
    group.addoption("--securetorch-timeout", type=float, default=60.0, help="party receive timeout in seconds")
    group.addoption("--securetorch-device", default="cpu", help="the device the parties compute on (default cpu)")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Three local parties (a ``LocalCluster``) shared by the whole test session."""
    options = request.config.getoption
    with LocalCluster(timeout=options("--securetorch-timeout"), device=options("--securetorch-device")) as c:
        yield c


@pytest.fixture(scope="session")
def sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """Three in-process parties (a ``Simulator``) shared by the whole test session."""
    options = request.config.getoption
    with Simulator(timeout=options("--securetorch-timeout"), device=options("--securetorch-device")) as s:
        yield s
