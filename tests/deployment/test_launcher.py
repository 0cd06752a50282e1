"""A LocalCluster's parties on Linux: forked from one launcher per driver process (which has
imported the party code once), each a process of its own, with the driver's environment,
directory and import path at its start, and none of them outliving the driver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import securetorch as puma
from securetorch.runtime import launcher

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked parties are Linux's")


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie that nothing reaps (an orphan's fate here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _all_gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(_gone(p) for p in pids)


def _square_sum(x):
    return (x * x).sum()


def test_parties_are_forked_from_one_launcher_per_driver() -> None:
    with puma.LocalCluster() as first, puma.LocalCluster() as second:
        pids = first.pids + second.pids
        launchers = {_parent(p) for p in pids}
        assert len(set(pids)) == 6 and len(launchers) == 1
        (launcher,) = launchers
        assert launcher not in pids and launcher != os.getpid()
        assert _parent(launcher) == os.getpid()
        for cluster in (first, second):
            out = cluster.run(_square_sum, puma.private(torch.tensor([1.0, 2.0, 3.0])))
            assert [abs(float(o) - 14.0) < 1e-4 for o in out] == [True] * 3
    assert _all_gone(pids)
    assert not _gone(launcher)  # it stays for the next cluster


def test_without_fork_the_parties_are_fresh_interpreters(monkeypatch) -> None:
    """Elsewhere than Linux (``launcher.FORKS`` false) each party is a child of the driver."""
    monkeypatch.setattr(launcher, "FORKS", False)
    with puma.LocalCluster() as cluster:
        assert [_parent(p) for p in cluster.pids] == [os.getpid()] * 3
        out = cluster.run(_square_sum, puma.private(torch.tensor([1.0, 2.0, 3.0])))
        assert [abs(float(o) - 14.0) < 1e-4 for o in out] == [True] * 3
        pids = cluster.pids
    assert _all_gone(pids)


def _probe() -> tuple[str | None, int, str, int]:
    import launcher_probe  # a module only the driver's sys.path (as it is now) can find

    large = os.environ.get("SECURETORCH_LAUNCHER_LARGE_A", "") + os.environ.get("SECURETORCH_LAUNCHER_LARGE_B", "")
    return os.environ.get("SECURETORCH_LAUNCHER_PROBE"), len(large), os.getcwd(), launcher_probe.VALUE


def test_a_forked_party_starts_with_the_drivers_environment_directory_and_path(tmp_path, monkeypatch) -> None:
    with puma.LocalCluster():  # the launcher is running before anything below changes
        pass
    (tmp_path / "launcher_probe.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SECURETORCH_LAUNCHER_PROBE", "set after the launcher started")
    for name in "AB":  # an environment larger than one datagram between driver and launcher
        monkeypatch.setenv(f"SECURETORCH_LAUNCHER_LARGE_{name}", "x" * 120_000)
    monkeypatch.chdir(tmp_path)
    with puma.LocalCluster() as cluster:
        assert cluster.run(_probe) == [("set after the launcher started", 240_000, str(tmp_path), 7)] * 3


def test_a_killed_launcher_takes_its_parties_and_the_next_cluster_starts_another() -> None:
    # in a driver of its own: this test process's launcher serves the suite's other clusters
    script = textwrap.dedent(
        """
        import os, signal, time
        import securetorch as puma
        from tests.deployment.test_launcher import _all_gone, _parent
        cluster = puma.LocalCluster(timeout=5)
        pids = cluster.pids
        launcher = _parent(pids[0])
        os.kill(launcher, signal.SIGKILL)
        assert _all_gone(pids)
        try:
            cluster.run(lambda: 1)
        except puma.PartyError as exc:
            assert "died" in str(exc), exc
        else:
            raise AssertionError("a cluster whose parties died ran a function")
        cluster.close()
        with puma.LocalCluster() as again:
            assert _parent(again.pids[0]) not in (launcher, os.getpid())
            assert again.run(lambda: puma.rank()) == [0, 1, 2]
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.split() == ["ok"], result.stderr


def test_a_killed_driver_leaves_no_launcher_and_no_party_though_its_own_child_lives_on() -> None:
    script = textwrap.dedent(
        """
        import os, time
        import securetorch as puma
        from tests.deployment.test_launcher import _parent
        cluster = puma.LocalCluster()
        child = os.fork()  # as a fork-started worker pool would: it outlives the driver
        if child == 0:
            time.sleep(600)
            os._exit(0)
        print(child, _parent(cluster.pids[0]), *cluster.pids, flush=True)
        time.sleep(600)
        """
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = None
    try:
        child, *pids = (int(p) for p in driver.stdout.readline().split())  # type: ignore[union-attr]
        assert len(pids) == 4 and not any(_gone(p) for p in pids)
        driver.kill()
        driver.wait()
        assert _all_gone(pids)
        assert not _gone(child)
    finally:
        driver.kill()
        driver.wait()
        if child is not None:
            os.kill(child, 9)
