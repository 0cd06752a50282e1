"""Model tests run on three in-process parties: the same service, protocols, bytes and
rounds as party processes (``tests/deployment`` covers the processes themselves)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import securetorch as puma


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[puma.InProcessCluster]:
    """Three in-process parties serving this test session (overrides the plugin's processes)."""
    options = request.config.getoption
    with puma.InProcessCluster(timeout=options("--securetorch-timeout"), device=options("--securetorch-device")) as c:
        yield c
