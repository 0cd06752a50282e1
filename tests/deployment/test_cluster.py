"""Clusters: start/stop, shipping functions, failures, timeouts, big messages, ipc."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

import securetorch as puma
from securetorch.protocols.arithmetic import truncation_bytes
from securetorch.session.context import current


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_run_local_ranks_and_public_args() -> None:
    assert puma.run_local(lambda k: (puma.rank(), k * 2), 21) == [(0, 42), (1, 42), (2, 42)]


def test_functions_defined_at_run_time_ship_by_value(cluster) -> None:
    namespace: dict = {}
    exec(
        "import securetorch as puma\ndef notebook_fn(x):\n    return puma.rank() + x\n", namespace
    )  # like a notebook cell
    assert cluster.run(namespace["notebook_fn"], 10) == [10, 11, 12]


def _devices(public: torch.Tensor, secret: torch.Tensor) -> tuple[str, str, str]:
    return str(current().device), str(public.device), str(secret.shares[0].device)


def test_arguments_arrive_on_the_party_device(cluster, sim) -> None:
    """Public and private tensor arguments reach a function on the party's device, in party
    processes as in the simulator (run with ``--securetorch-device cuda`` where a GPU is)."""
    args = (torch.ones(3), puma.private(torch.ones(3)))
    for runner in (cluster, sim):
        for party, public, secret in runner.run(_devices, *args):
            assert public == secret == party


def test_stats_are_counted_and_reset(cluster) -> None:
    def fn():
        x = puma.share(torch.ones(100) if puma.rank() == 0 else None, owner=0)
        x * x

    cluster.reset_stats()
    cluster.run(fn)
    stats = cluster.stats()
    assert [s.rounds for s in stats] == [3, 3, 3]
    assert (
        sum(s.bytes_sent for s in stats) == sum(s.bytes_received for s in stats) == 100 * 16 + truncation_bytes(100, 18)
    )
    cluster.reset_stats()
    assert all(s.bytes_sent == 0 and s.rounds == 0 for s in cluster.stats())


def test_exception_in_one_party_is_raised_and_cluster_recovers(cluster) -> None:
    def fn():
        if puma.rank() == 2:
            raise ValueError("bad input on party 2")
        x = puma.share(torch.ones(3) if puma.rank() == 0 else None, owner=0)
        return x.reveal()

    start = time.monotonic()
    with pytest.raises(ValueError, match="bad input on party 2") as info:
        cluster.run(fn)
    assert time.monotonic() - start < 10  # the others were aborted, not left to time out
    assert any("raised in party 2" in note for note in info.value.__notes__)
    # the next job runs normally
    assert torch.equal(
        cluster.run(lambda: puma.share(torch.ones(2) if puma.rank() == 1 else None, owner=1).reveal())[0], torch.ones(2)
    )


def test_an_abort_passes_on_a_party_errors_text(cluster) -> None:
    """The peers of a party that failed with a PartyError (a silent or dead peer) stop with
    its abort, which carries that text, so every report names the party at fault whichever
    notice arrives first (other errors pass on their type only: their text may carry data)."""

    def fn():
        if puma.rank() == 2:
            raise puma.PartyError("party 2: no message from party 1 within 3.0 s")
        x = puma.share(torch.ones(3) if puma.rank() == 0 else None, owner=0)
        return x.reveal()

    with pytest.raises(puma.PartyError) as info:
        cluster.run(fn)
    waiting = {rank: text for rank, text in info.value.party_errors.items() if rank != 2}
    assert waiting and all("party 2: no message from party 1" in text for text in waiting.values())


def test_killed_party_raises_party_error_and_leaves_no_orphans() -> None:
    timeout = 3.0
    cluster = puma.LocalCluster(timeout=timeout)
    pids = cluster.pids

    def fn():
        x = puma.share(torch.ones(4) if puma.rank() == 0 else None, owner=0)
        if puma.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-protocol
        return (x * x).reveal()

    start = time.monotonic()
    with cluster, pytest.raises(puma.PartyError) as info:
        cluster.run(fn)
    elapsed = time.monotonic() - start
    assert "party 1 died" in str(info.value)
    # the survivors raised PartyError themselves, naming the silent peer, within the timeout
    assert set(info.value.party_errors) == {0, 2}
    for rank in (0, 2):
        assert "PartyError" in info.value.party_errors[rank] and "party 1" in info.value.party_errors[rank]
    assert elapsed < timeout + 5
    with pytest.raises(puma.PartyError, match=r"closed|down"):
        cluster.run(lambda: 1)
    deadline = time.monotonic() + 5
    while not all(process_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(process_gone(p) for p in pids)


def test_close_stops_every_process() -> None:
    cluster = puma.LocalCluster()
    pids = cluster.pids
    cluster.close()
    assert all(process_gone(p) for p in pids)


def test_ipc_transport() -> None:
    with puma.LocalCluster(transport="ipc") as c:
        out = c.run(lambda x: (x * x).sum(), puma.private(torch.tensor([1.0, 2.0, 3.0])))
    assert abs(float(out[0]) - 14.0) < 1e-4


def test_transport_of_a_tensor_over_100_mb(cluster) -> None:
    n = 13_500_000  # 108 MB of int64 per share message

    def fn():
        big = torch.arange(n, dtype=torch.float64) if puma.rank() == 0 else None
        x = puma.share(big, owner=0)
        before = puma.stats()
        opened = x.reveal(to=2)
        cost = puma.stats() - before
        if opened is None:
            return None, cost
        return bool(torch.equal(opened.double(), torch.arange(n, dtype=torch.float64))), cost

    results = cluster.run(fn)
    assert results[2][0] is True
    assert results[0][1].bytes_sent + results[1][1].bytes_sent == 8 * n


def test_abandoned_job_leaves_parties_in_step(cluster) -> None:
    """A job aborted after some parties drew randomness must not desynchronise the next one."""

    def fn():
        if puma.rank() == 2:
            raise RuntimeError("party 2 stops before drawing")
        puma.share(torch.ones(5) if puma.rank() == 0 else None, owner=0)

    with pytest.raises(RuntimeError, match="party 2 stops"):
        cluster.run(fn)
    a = torch.linspace(-3, 3, 7, dtype=torch.float64)

    def check(a):
        x = puma.share(a if puma.rank() == 0 else None, owner=0, dtype=torch.float64)
        return (x * x).reveal()

    assert float((cluster.run(check, a)[0] - a * a).abs().max()) < 1e-4
