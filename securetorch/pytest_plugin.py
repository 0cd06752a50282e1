"""pytest plugin (entry point ``pytest11``): a session-wide ``cluster`` fixture.

Any project with securetorch installed can write ``def test_x(cluster): cluster.run(...)``.
The three local parties start once per test session and stop at its end. Options:
``--securetorch-timeout`` (seconds a party waits for a peer, default 60).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from securetorch.runtime.cluster import LocalCluster


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("securetorch")
    group.addoption("--securetorch-timeout", type=float, default=60.0, help="party receive timeout in seconds")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """Three local parties (a ``LocalCluster``) shared by the whole test session."""
    with LocalCluster(timeout=request.config.getoption("--securetorch-timeout")) as c:
        yield c
