"""ZeroMQ transport between the three parties.

Each party binds one PULL socket that its two peers PUSH to (tcp ``host:port`` or ipc), so
parties can sit on different machines. Messages are framed tensors (``frames``), tagged with
the sender, the job and the protocol step; a receiver buffers messages that arrive early and
drops those of abandoned jobs. A wait longer than ``timeout`` raises ``PartyError`` naming the
silent peer. While waiting, the party's control socket is watched so the driver can abort a job.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import zmq

from securetorch.comm.frames import FrameError, decode_message, encode_message, payload_bytes
from securetorch.comm.security import PEERS_DOMAIN, CurveKeys
from securetorch.comm.stats import CommStats
from securetorch.errors import PartyError, ProtocolError

SESSION_SHIFT = 32
"""Job ids on the wire are session << 32 | job (the driver picks a random session id), so a
late message of an earlier session is never taken for one of the current session, even
after a party restarts."""


def bind_any(sock: zmq.Socket, address: str) -> str:
    """Bind ``address`` (``tcp://host:*`` picks a free port) and return the bound endpoint."""
    sock.bind(address)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class PeerNetwork:
    """One party's links to the other two parties."""

    def __init__(
        self,
        rank: int,
        zmq_context: zmq.Context,
        bind_address: str,
        timeout: float,
        on_control: Callable[[], None] | None = None,
        control_socket: zmq.Socket | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.rank = rank
        self.timeout = timeout
        self.stats = CommStats()
        self.job = 0
        self.step = 0
        self._ctx = zmq_context
        self._pull = zmq_context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self.curve = curve
        if curve is not None:  # only the two other parties' keys pass (see deployment.start_authenticator)
            curve.server(self._pull, PEERS_DOMAIN)
        self.address = bind_any(self._pull, bind_address)
        self._push: dict[int, zmq.Socket] = {}
        self._inbox: dict[tuple[int, int, int], list[torch.Tensor]] = {}
        self._control = control_socket
        self._on_control = on_control
        self._poller = zmq.Poller()
        self._poller.register(self._pull, zmq.POLLIN)
        if control_socket is not None:
            self._poller.register(control_socket, zmq.POLLIN)

    @property
    def connected(self) -> bool:
        return bool(self._push)

    def connect(self, addresses: Mapping[int, str], public_keys: Mapping[int, bytes] | None = None) -> None:
        """PUSH sockets to the peers; with CURVE, each checks its peer's ``public_keys`` entry."""
        for peer, addr in addresses.items():
            if peer == self.rank:
                continue
            sock = self._ctx.socket(zmq.PUSH)
            if self.curve is not None:
                if public_keys is None:
                    raise ValueError("an encrypted party needs its peers' public keys")
                self.curve.client(sock, public_keys[peer])
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
            sock.connect(addr)
            self._push[peer] = sock

    def begin_session(self, session: int) -> None:
        """A driver's session starts: job ids are now session << 32 | job. Messages of other
        sessions are dropped; early ones of this session (a faster peer) are kept."""
        self._inbox = {k: v for k, v in self._inbox.items() if k[1] >> SESSION_SHIFT == session}
        self.begin_job(session << SESSION_SHIFT)

    def begin_job(self, job: int) -> None:
        self.job = job
        self.step = 0
        session = job >> SESSION_SHIFT
        self._inbox = {k: v for k, v in self._inbox.items() if k[1] >= job or k[1] >> SESSION_SHIFT != session}

    def exchange(
        self, sends: Mapping[int, Sequence[torch.Tensor]], recv_from: Iterable[int]
    ) -> dict[int, list[torch.Tensor]]:
        """One protocol round: send to some peers, then receive from some peers.

        Every party calls ``exchange`` for every round (with empty arguments if it takes no
        part), so step numbers and round counts stay equal on all three parties.
        """
        started = time.perf_counter()
        self.step += 1
        self.stats.rounds += 1
        for peer, tensors in sends.items():
            self._send(peer, list(tensors))
        received = {peer: self._recv(peer) for peer in recv_from}
        self.stats.seconds += time.perf_counter() - started
        return received

    def _send(self, peer: int, tensors: list[torch.Tensor]) -> None:
        frames = encode_message(self.rank, self.job, self.step, tensors)
        try:
            self._push[peer].send_multipart(frames, copy=False)
        except zmq.Again as exc:
            raise PartyError(f"party {self.rank}: party {peer} took no message within {self.timeout:.1f} s") from exc
        self.stats.bytes_sent += payload_bytes(tensors)
        self.stats.messages += 1

    def _recv(self, peer: int) -> list[torch.Tensor]:
        key = (peer, self.job, self.step)
        deadline = time.monotonic() + self.timeout
        while key not in self._inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PartyError(
                    f"party {self.rank}: no message from party {peer} within {self.timeout:.1f} s "
                    f"(job {self.job}, step {self.step}); is party {peer} alive?"
                )
            events = dict(self._poller.poll(min(left, 0.5) * 1000))
            if self._pull in events:
                self._drain()
            if self._control is not None and self._control in events and self._on_control is not None:
                self._on_control()
        tensors = self._inbox.pop(key)
        self.stats.bytes_received += payload_bytes(tensors)
        return tensors

    def _drain(self) -> None:
        while True:
            try:
                frames = self._pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                head, tensors = decode_message(frames)
            except FrameError as exc:  # a malformed frame is dropped, never fatal
                print(f"party {self.rank}: dropped a malformed peer message ({exc})", file=sys.stderr, flush=True)
                continue
            if head.job >> SESSION_SHIFT == self.job >> SESSION_SHIFT and head.job < self.job:
                continue  # left over from an abandoned job of this session
            key = (head.sender, head.job, head.step)
            if key in self._inbox:
                raise ProtocolError(f"party {self.rank}: two messages from party {head.sender} for step {head.step}")
            self._inbox[key] = tensors

    def close(self) -> None:
        for sock in self._push.values():
            sock.close(0)
        self._pull.close(0)
