"""A LocalCluster is private to the driver that started it: other local processes can
neither connect to its parties nor pose as them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
import zmq

import securetorch as puma

# Another local process tries to open a session on a party's control socket, or to push
# messages into a party's peer socket, with credentials of its own; it prints what happened.
INTRUDER = r"""
import json, sys, zmq, torch
from securetorch.comm.security import CurveKeys, PlainPassword
from securetorch.runtime.verbs import Verb, encode_request
from securetorch.comm.frames import encode_message
ctx = zmq.Context()
results = []
for address, mechanism, server_key, target in json.loads(sys.argv[1]):
    sock = ctx.socket(zmq.DEALER if target == "control" else zmq.PUSH)
    sock.linger = 0
    if mechanism == "plain":
        PlainPassword("local" if target == "control" else "party1", "guessed").connect(sock, None)
    elif mechanism == "curve":
        CurveKeys.generate().connect(sock, server_key.encode())
    sock.connect(address)
    if target == "control":
        args = {"version": 2, "rank": 0, "frac_bits": 18, "compare_bits": 44}
        sock.send_multipart(encode_request(Verb.OPEN, 12345, 1, args))
        results.append(bool(sock.poll(2000)))
    else:
        try:
            # a schedule claiming party 1: delivered, it would be counted as dropped, whatever its credential
            notice = torch.frombuffer(bytearray(b'{"session": 1}'), dtype=torch.uint8)
            sock.send_multipart(encode_message(1, 1 << 40, 0, [notice]), zmq.NOBLOCK)
        except zmq.Again:
            pass
        results.append(False)
    sock.close()
print(json.dumps(results))
"""


def intrude(attempts: list[tuple[str, str, str, str]]) -> list[bool]:
    """Run (address, mechanism, server key, "control" or "peer") attempts from another
    process; whether each got an answer."""
    result = subprocess.run(
        [sys.executable, "-c", INTRUDER, json.dumps(attempts)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout)


def _listening_tcp_ports(pid: int) -> list[int]:
    """TCP ports a process listens on (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _dropped() -> dict:
    from securetorch.session.context import current

    return dict(current().net.dropped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_ipc_local_cluster_has_no_port_and_admits_only_its_driver(cluster) -> None:
    assert isinstance(cluster, puma.LocalCluster)
    for pid in cluster.pids:
        assert _listening_tcp_ports(pid) == []  # nothing to answer or connect to over tcp
    directory = cluster._tmpdir
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert os.stat(directory).st_uid == os.getuid()
    control = os.path.join(directory, "p0-control")
    peer = os.path.join(directory, "p0-peer")
    assert os.path.exists(control) and os.path.exists(peer)
    before = cluster.run(_dropped)
    attempts = [(f"ipc://{path}", mechanism, "-", target) for path, target in ((control, "control"), (peer, "peer"))
                for mechanism in ("plain", "null")]  # fmt: skip
    assert intrude(attempts) == [False] * 4  # even a process that can reach the socket files
    assert cluster.run(_dropped) == before  # nothing an intruder pushed reached a party
    x = torch.tensor([1.0, -2.0])
    assert torch.allclose(cluster.run(lambda v: (v * v).reveal(), puma.private(x))[0], x * x, atol=1e-4)


def test_a_tcp_local_cluster_admits_only_its_own_ephemeral_keys() -> None:
    with puma.LocalCluster(transport="tcp") as cluster:
        control = cluster._sockets[0].getsockopt_string(zmq.LAST_ENDPOINT)
        assert control.startswith("tcp://127.0.0.1:")
        party_key = cluster.party_keys[0].decode()
        peer = cluster.run(lambda: __import__("securetorch").session.context.current().net.address)[1]
        before = cluster.run(_dropped)
        attempts = [(control, m, party_key, "control") for m in ("curve", "null", "plain")]
        attempts += [(peer, m, cluster.party_keys[1].decode(), "peer") for m in ("curve", "null")]
        assert intrude(attempts) == [False] * 5
        assert cluster.run(_dropped) == before
        x = torch.tensor([0.25, 3.0])
        assert torch.allclose(cluster.run(lambda v: (v * v).reveal(), puma.private(x))[0], x * x, atol=1e-4)
