"""ZeroMQ transport between the three parties.

Each party binds one PULL socket that its two peers PUSH to (tcp ``host:port`` or ipc), so
parties can sit on different machines. Messages are framed tensors (``frames``), tagged with
the sender, the job and the protocol step; a receiver buffers messages that arrive early and
drops those of finished or abandoned jobs. A wait longer than ``timeout`` raises
``PartyError`` naming the silent peer. While waiting, the party's control socket is watched
so that a driver can abort a job.

Jobs are numbered by party 0, which orders them (``epoch << 32 | counter``, the epoch drawn
at random when party 0 starts, so a restarted party 0 never reuses a number); the numbers
only grow. Besides protocol rounds two kinds of peer message exist: party 0's *schedule*
(step 0: which request the next job serves) and a party's *abort* (step ``ABORT_STEP``: it
abandoned a job, so the others stop waiting for it).

With authenticated links (``comm.security``) a message's sender is the party its credential
names: a frame claiming another rank is dropped. Frames above ``max_message_bytes`` make
ZeroMQ drop the connection before they are read.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import zmq

from securetorch.comm.frames import FrameError, decode_message, encode_message
from securetorch.comm.links import Links, PeerAbort
from securetorch.comm.security import PEERS_DOMAIN, Credential, party_identity, sender_identity
from securetorch.errors import PartyError, ProtocolError

EPOCH_SHIFT = 32
SCHEDULE_STEP = 0
ABORT_STEP = (1 << 64) - 1
MAX_NOTICE_BYTES = 1 << 16
DEFAULT_MAX_MESSAGE_BYTES = 1 << 32
# plain ints: pyzmq's enum members make every use a Python-level call
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


def bind_any(sock: zmq.Socket, address: str) -> str:
    """Bind ``address`` (``tcp://host:*`` picks a free port) and return the bound endpoint."""
    sock.bind(address)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


@dataclass(frozen=True)
class Notice:
    """A peer's control message: party 0's schedule of ``job``, or a party's abort of it."""

    sender: int
    job: int
    abort: bool
    body: dict


class PeerNetwork(Links):
    """One party's links to the other two parties, over ZeroMQ."""

    def __init__(
        self,
        rank: int,
        zmq_context: zmq.Context,
        bind_address: str,
        timeout: float,
        on_control: Callable[[], None] | None = None,
        control_socket: zmq.Socket | None = None,
        credential: Credential | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(rank, timeout, device)
        self.log = logging.getLogger(f"securetorch.party{rank}")
        self._ctx = zmq_context
        self._pull = zmq_context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.credential = credential
        if credential is not None:  # only the two other parties' credentials pass
            credential.serve(self._pull, PEERS_DOMAIN)
        self.address = bind_any(self._pull, bind_address)
        self._push: dict[int, zmq.Socket] = {}
        self.peer_addresses: dict[int, str] = {}
        self.dropped: Counter[str] = Counter()  # peer messages dropped, by reason
        self._inbox: dict[tuple[int, int, int], list[torch.Tensor]] = {}
        self.schedules: deque[Notice] = deque()
        self._aborts: dict[int, Notice] = {}
        self._control = control_socket
        self._on_control = on_control
        self._poller = zmq.Poller()
        self._poller.register(self._pull, _POLLIN)
        if control_socket is not None:
            self._poller.register(control_socket, _POLLIN)

    @property
    def connected(self) -> bool:
        return bool(self._push)

    @property
    def inbound(self) -> zmq.Socket:
        """The socket peers send to (for a server's poller between jobs)."""
        return self._pull

    def connect(self, addresses: Mapping[int, str], server_keys: Mapping[int, bytes | None] | None = None) -> None:
        """PUSH sockets to the peers; with credentials, each presents this party's and (CURVE)
        checks its peer's public key in ``server_keys``."""
        for peer, addr in addresses.items():
            if peer == self.rank:
                continue
            sock = self._ctx.socket(zmq.PUSH)
            if self.credential is not None:
                self.credential.connect(sock, (server_keys or {}).get(peer))
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
            sock.connect(addr)
            self._push[peer] = sock
            self.peer_addresses[peer] = addr

    # ------------------------------------------------------------------ jobs

    def begin_job(self, job: int) -> None:
        """Job ``job`` starts: messages of earlier jobs (and of another epoch) are dropped;
        early ones of this job or later (a faster peer) are kept."""
        super().begin_job(job)
        self._inbox = {k: v for k, v in self._inbox.items() if _same_epoch(k[1], job) and k[1] >= job}
        self._aborts = {j: n for j, n in self._aborts.items() if _same_epoch(j, job) and j >= job}

    def aborted(self, job: int) -> Notice | None:
        """A peer's abort of ``job``, if one arrived."""
        return self._aborts.get(job)

    def notify(self, peers: Iterable[int], job: int, abort: bool, body: dict) -> None:
        """Send a schedule (party 0) or an abort of ``job`` to ``peers``. Not a protocol round:
        not counted in the stats."""
        payload = torch.frombuffer(bytearray(json.dumps(body).encode()), dtype=torch.uint8)
        frames = encode_message(self.rank, job, ABORT_STEP if abort else SCHEDULE_STEP, [payload])
        for peer in peers:
            try:
                self._push[peer].send_multipart(frames, copy=False)
            except zmq.Again:
                self.log.warning("party %d took no notice of job %d within %.1f s", peer, job, self.timeout)

    def poll(self, seconds: float) -> None:
        """Wait up to ``seconds`` for peer messages and file them (used between jobs)."""
        if self._pull.poll(seconds * 1000):
            self._drain()

    def _deliver(self, peer: int, tensors: list[torch.Tensor]) -> None:
        frames = encode_message(self.rank, self.job, self.step, tensors)
        try:
            if len(frames) == 1:  # a packed message: one frame, no multipart bookkeeping
                self._push[peer].send(frames[0], copy=False)
            else:
                self._push[peer].send_multipart(frames, copy=False)
        except zmq.Again as exc:
            raise PartyError(f"party {self.rank}: party {peer} took no message within {self.timeout:.1f} s") from exc

    def _take(self, peer: int) -> list[torch.Tensor]:
        key = (peer, self.job, self.step)
        if key not in self._inbox:
            self._drain()  # what has arrived already: no poller, no clock
        if key in self._inbox:
            return self._inbox.pop(key)
        deadline = time.monotonic() + self.timeout
        while key not in self._inbox:
            notice = self._aborts.get(self.job)
            if notice is not None:
                raise PeerAbort(
                    f"party {self.rank}: party {notice.sender} abandoned job {self.job}: {notice.body.get('reason', '')}"
                )
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
        return self._inbox.pop(key)

    def _drain(self) -> None:
        """File every message that has arrived. The socket's events say whether one waits,
        so the loop ends without a failed receive (pyzmq raises ``zmq.Again`` for that, at
        the price of an exception and an import per call)."""
        pull = self._pull
        while pull.getsockopt(_EVENTS) & _POLLIN:
            try:
                frames = [pull.recv(_NOBLOCK, copy=False)]
                while frames[-1].more:  # a message's parts arrive together
                    frames.append(pull.recv(_NOBLOCK, copy=False))
            except zmq.Again:
                return
            try:
                head, tensors = decode_message([f.buffer for f in frames])
            except FrameError as exc:  # a malformed frame is dropped, never fatal
                self._drop("malformed", "dropped a malformed peer message (%s)", exc)
                continue
            if self.credential is not None and sender_identity(frames[0]) != party_identity(head.sender):
                link = sender_identity(frames[0])
                self._drop("forged rank", "dropped a peer message claiming party %d from %s's link", head.sender, link)
                continue
            if head.sender == self.rank:
                self._drop("forged rank", "dropped a peer message claiming this party's own rank")
                continue
            if head.step in (SCHEDULE_STEP, ABORT_STEP):
                self._file_notice(head.sender, head.job, head.step == ABORT_STEP, tensors)
                continue
            if _same_epoch(head.job, self.job) and head.job < self.job:
                self.dropped["stale"] += 1  # left over from a finished or abandoned job
                continue
            key = (head.sender, head.job, head.step)
            if key in self._inbox:
                raise ProtocolError(f"party {self.rank}: two messages from party {head.sender} for step {head.step}")
            self._inbox[key] = tensors

    def _drop(self, reason: str, message: str, *args: object) -> None:
        self.dropped[reason] += 1
        self.log.warning(message, *args)

    def _file_notice(self, sender: int, job: int, abort: bool, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != 1 or tensors[0].dtype != torch.uint8 or tensors[0].numel() > MAX_NOTICE_BYTES:
            self._drop("malformed", "dropped a malformed notice from party %d", sender)
            return
        try:
            body = json.loads(bytes(tensors[0].numpy()))
        except (UnicodeDecodeError, ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            self._drop("malformed", "dropped a malformed notice from party %d", sender)
            return
        notice = Notice(sender, job, abort, body)
        if abort:
            self._aborts.setdefault(job, notice)
        elif sender == 0:
            self.schedules.append(notice)
        else:
            self._drop("forged schedule", "dropped a schedule from party %d (only party 0 orders jobs)", sender)

    def close(self) -> None:
        for sock in self._push.values():
            sock.close(0)
        self._pull.close(0)


def _same_epoch(a: int, b: int) -> bool:
    return a >> EPOCH_SHIFT == b >> EPOCH_SHIFT
