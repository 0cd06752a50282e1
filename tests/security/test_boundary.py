"""What crosses the process boundary: no pickle reaches a driver, secrets never travel in the
clear, replays and forged peers are refused, and no message stops a party."""

from __future__ import annotations

import json
import os
import pickle
import threading

import pytest
import torch
import zmq

import securetorch as puma
from securetorch.comm.frames import encode_message
from securetorch.comm.stats import total
from securetorch.runtime.verbs import Verb, encode_request
from securetorch.session.context import current

from ..conftest import received_tensors


class _Payload:
    """Unpickling this would run code: it creates a marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_fake_party_answering_with_pickles_runs_no_code_on_the_driver(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Payload(str(marker)))
    ctx = zmq.Context()
    fakes = [ctx.socket(zmq.ROUTER) for _ in range(3)]
    addresses = []
    for sock in fakes:
        sock.linger = 0
        sock.bind("tcp://127.0.0.1:*")
        addresses.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    stop = threading.Event()

    def answer() -> None:  # every reply shape a pickle could hide in
        replies = [[b"ok", evil], [b"ok", json.dumps({"request": 1}).encode(), evil], [evil], [b"error", evil]]
        turn = 0
        while not stop.is_set():
            for sock in fakes:
                if sock.poll(20):
                    route = sock.recv_multipart()[0]
                    sock.send_multipart([route, *replies[turn % len(replies)]])
                    turn += 1

    server = threading.Thread(target=answer)
    server.start()
    try:
        cluster = puma.Cluster(addresses, timeout=2.0)
        with pytest.raises(puma.PartyError, match="malformed reply"):
            cluster._open()
        cluster.close()
    finally:
        stop.set()
        server.join()
        for sock in fakes:
            sock.close(0)
        ctx.term()
    assert not marker.exists()


def test_private_values_never_travel_in_the_clear(cluster) -> None:
    x = torch.tensor([1.5, -2.0])
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(puma.private(x))

    class Holder:  # a container securetorch does not look into
        def __init__(self, value):
            self.value = value

    cluster.reset_stats()
    with pytest.raises(TypeError, match="cannot be pickled"):
        cluster.run(lambda h: h.value, Holder(puma.private(x)))
    assert total(cluster.stats()).messages == 0
    # in lists, tuples and dicts a private value is dealt as shares
    got = cluster.run(lambda d: d["x"][0] * 2, {"x": [puma.private(x)]})[0]
    assert torch.allclose(got, x * 2, atol=1e-4)


def test_private_inputs_outside_the_exact_range_are_refused_naming_the_bound(cluster) -> None:
    cluster.reset_stats()
    for value in (2.0**45, -(2.0**25), 2.0**30):
        with pytest.raises(ValueError, match=r"below 2\^25 \(compare_bits = 44, frac_bits = 18"):
            cluster.run(lambda v: v < 0, puma.private(torch.tensor([value])))
    with pytest.raises(ValueError, match=r"below 2\^43"):
        cluster.run(lambda v: v, puma.private(torch.tensor([2**44]), dtype=torch.int64))
    assert total(cluster.stats()).messages == 0
    near = torch.tensor([2.0**25 - 1, -(2.0**25) + 1, 3.0], dtype=torch.float64)  # just inside: comparisons are exact
    assert cluster.run(lambda v: (v < 0).reveal(), puma.private(near))[0].tolist() == [False, True, False]


def test_a_replayed_request_is_refused(cluster) -> None:
    """Re-sending a request (same session, same id) is refused, so a job's PRG streams are
    never drawn twice; a repeated computation draws fresh masks."""
    sent: list = []
    original = cluster._send

    def capture(rank, frames, block=True):
        sent.append((rank, [bytes(f) for f in frames]))
        original(rank, frames, block)

    cluster._send = capture
    try:
        x = puma.private(torch.tensor([1.25, -0.5]))
        cluster.run(lambda v: (v * v).reveal(), x)
    finally:
        cluster._send = original
    replay = next(frames for rank, frames in sent if rank == 1)
    request = json.loads(replay[1])["request"]
    cluster._sockets[1].send_multipart(replay)
    reply = cluster._sockets[1].recv_multipart()
    while json.loads(reply[1]).get("request") != request:  # skip any late reply
        reply = cluster._sockets[1].recv_multipart()
    assert reply[0] == b"error" and "not new (replayed?)" in json.loads(reply[1])["error"]["message"]


def _square_view(x):
    with received_tensors() as received:
        (x * x).reveal(to=0)
    return received


def test_masks_do_not_repeat_across_identical_jobs(cluster) -> None:
    x = torch.tensor([3.0, -1.0, 0.5, 2.0])
    first, second = (cluster.run(_square_view, puma.private(x)) for _ in range(2))
    for rank in range(3):
        a = torch.cat([t.reshape(-1).view(torch.uint8) for t in first[rank]])
        b = torch.cat([t.reshape(-1).view(torch.uint8) for t in second[rank]])
        assert a.numel() and not torch.equal(a, b), rank


def test_malformed_control_messages_are_answered_and_never_fatal(cluster) -> None:
    """Garbage on the control socket (too few frames, bad kinds, headers that are not JSON
    objects, ids out of range, malformed argument trees, the old ``setup``/``run`` forms, a
    setup body of ``[]``, job id -1) is logged and answered: every party keeps serving."""
    session = cluster.session

    def header(doc) -> bytes:
        return json.dumps(doc).encode()

    garbage = [
        [b""],
        [b"run"],
        [b"run", b"-1", b"x"],
        [b"setup", b"[]"],
        [b"setup", b"{not json"],
        [b"\xff" * 40],
        [b"forward", b"[]"],
        [b"forward", header({"request": -1, "session": session, "args": {}})],
        [b"run", header({"request": 10**9, "session": -1, "args": {}})],
        [b"stats", header({"request": 10**9, "session": session, "args": {"dict": [[{"tensor": 7}, 1]]}})],
        [b"describe", header({"request": 10**9, "session": session, "args": {"dict": [["name", {"secret": 1}]]}})],
        [b"forward", header({"request": 10**9, "session": session, "args": "x" * 10}), b"\x00"],
        [b"open", header({"request": 10**9, "session": session, "args": {"rank": 0}})],
        [b"forward", header({"request": 10**9, "session": session, "args": {"model": 1}}), b"\x00", b"\x00"],
        [b"forward", b"[" * 100_000],
    ]
    for r in range(3):
        for frames in garbage:
            cluster._sockets[r].send_multipart(frames)
    assert cluster.run(puma.rank) == [0, 1, 2]  # every party is alive and serves the next job
    x = torch.arange(6.0).reshape(2, 3)
    assert torch.allclose(cluster.run(lambda v: v * 2, puma.private(x))[0], x * 2, atol=1e-4)


def _forge_rank_from_party_one():
    """In party 1: send party 0 a protocol message claiming to come from party 2, over a
    link with party 1's own (valid) credential."""
    net = current().net
    if net.rank != 1:
        return None
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.linger = 1000
    net.credential.connect(sock, None)
    sock.connect(net.peer_addresses[0])
    sock.send_multipart(encode_message(2, net.job + 1, 1, [torch.zeros(4, dtype=torch.int64)]))
    sock.close()
    return True


def _dropped_forged() -> int:
    return current().net.dropped["forged rank"]


def test_a_forged_peer_rank_is_dropped(cluster) -> None:
    before = cluster.run(_dropped_forged)[0]
    cluster.run(_forge_rank_from_party_one)
    x = torch.tensor([0.5, -1.5, 2.0])
    deadline = 50
    while cluster.run(_dropped_forged)[0] == before and deadline:
        deadline -= 1
    assert cluster.run(_dropped_forged)[0] == before + 1  # party 0 dropped it
    assert torch.allclose(cluster.run(lambda v: (v * v).reveal(), puma.private(x))[0], x * x, atol=1e-4)


def test_a_request_for_another_session_is_refused(cluster) -> None:
    frames = encode_request(Verb.STATS, cluster.session + 1, 10**12, {})
    cluster._sockets[0].send_multipart(frames)
    reply = cluster._sockets[0].recv_multipart()
    while json.loads(reply[1]).get("request") != 10**12:
        reply = cluster._sockets[0].recv_multipart()
    assert reply[0] == b"error" and "has no session" in json.loads(reply[1])["error"]["message"]


def test_peer_messages_above_the_cap_never_arrive() -> None:
    from securetorch.comm.network import PeerNetwork

    ctx = zmq.Context()
    receiver = PeerNetwork(0, ctx, "tcp://127.0.0.1:*", 2.0, max_message_bytes=4096)
    sender = PeerNetwork(1, ctx, "tcp://127.0.0.1:*", 2.0)
    try:
        sender.connect({0: receiver.address})
        receiver.begin_job(5)
        sender.begin_job(5)
        sender.exchange({0: [torch.zeros(1024, dtype=torch.int64)]}, [])  # 8 KiB: the receiver drops the link
        receiver.poll(1.0)
        assert receiver._inbox == {}
        with pytest.raises(puma.PartyError, match="no message from party 1"):
            receiver.exchange({}, [1])
        sender.exchange({0: [torch.arange(4)]}, [])  # the sender reconnects; small messages pass
        assert torch.equal(receiver.exchange({}, [1])[1][0], torch.arange(4))
    finally:
        receiver.close()
        sender.close()
        ctx.term()


def test_a_driver_that_never_reads_its_replies_stalls_no_party(deployment) -> None:
    """A driver floods every party with requests and reads none of the error replies. Once
    its queues are full the parties drop its replies instead of blocking on them, so
    another driver is served meanwhile."""
    flooder = puma.Cluster.from_config(deployment.config, key=deployment.keys["client"])
    junk = encode_request(Verb.STATS, flooder.session + 1, 1, {})  # a session it does not hold
    try:
        for _ in range(20_000):
            for sock in flooder._sockets:
                sock.send_multipart(junk)
        with puma.Cluster.from_config(deployment.config, key=deployment.keys["admin"]) as other:
            assert other.run(puma.rank) == [0, 1, 2]
    finally:
        flooder.close()
