"""The party server: serves drivers' typed requests and runs protocols with its two peers.

Run as ``securetorch party --rank R --config cluster.toml --key R.key_secret`` (a service
of a deployment) or by ``LocalCluster`` (``python -m securetorch.runtime.party --local``,
its configuration and credentials on stdin).

**Sessions.** A driver opens a session (``Verb.OPEN``): the party checks the protocol
version, the fixed-point setting and its rank, binds the session to the driver's
authenticated name (the CURVE key or password that opened the connection), and agrees on
fresh PRG keys with its peers (ABY3 §2.2: P_i draws k_i and sends it to P_{i-1}; each
party contributes to one key common to all three). Only that driver can use, re-key or end
the session; request ids only grow, so a replayed request is refused. Several drivers can
hold sessions at once.

**Jobs.** Requests that compute or change state are jobs. Party 0 orders them (first come,
first served, across sessions) and tells the others which request each job serves, with a
digest of everything public about it; parties 1 and 2 run the job only if their digest of
the same request agrees, so the three never run different computations under one job
number. Job numbers only grow and key the PRG streams, so no random mask is ever drawn
twice. A driver whose request waits hears its place in the queue.

**Roles.** Every verb has the roles that may send it (``verbs.Verb.roles``); models record
their owner and clients (``models.service.InstalledModel``). Only admins may ship
functions (``Verb.RUN``), the one request that is unpickled.

**Hardening.** Nothing a driver sends makes the party exit: a malformed message is logged
and answered with an error, a failing request fails alone (its peers hear of it at once),
a failed session setup abandons that session only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import zmq

from securetorch.comm.frames import Buffer, FrameError
from securetorch.comm.links import PeerAbort
from securetorch.comm.network import EPOCH_SHIFT, PeerNetwork, bind_any
from securetorch.comm.security import (
    DRIVERS_DOMAIN,
    PEERS_DOMAIN,
    Admission,
    Authenticator,
    Credential,
    CurveKeys,
    PlainPassword,
    party_identity,
    sender_identity,
)
from securetorch.comm.stats import CommStats
from securetorch.errors import AccessError, PartyError
from securetorch.models import checkpoint, sharefile
from securetorch.models.service import (
    NAME_PATTERN,
    Generation,
    InstalledModel,
    PublicCheckpoint,
    build,
    check_model_name,
    forward,
    generate_start,
    generate_step,
    public_parameters,
    sampling_settings,
)
from securetorch.prg import new_key
from securetorch.runtime.deployment import (
    ClusterConfig,
    ConfigError,
    settings_mismatch,
)
from securetorch.runtime.libc import die_with_parent
from securetorch.runtime.shipping import unpack_call
from securetorch.runtime.verbs import Args, Request, Status, Verb, decode_request, encode_reply
from securetorch.session import costs
from securetorch.session.context import PartyContext, PartyKeys, activate, check_device
from securetorch.tensor.payload import SharePayload, arrive, from_shared, map_structure, to_shared
from securetorch.tensor.shared import SharedTensor

MAX_SESSIONS_PER_DRIVER = 8
MAX_PENDING_PER_SESSION = 16
MAX_DEFERRED = 256
SESSION_IDLE_SECONDS = 3600.0
FORWARD_ARGS = ("model", "onehot", "pixel_values", "decoder_onehot", "inputs")
"""What a forward request may carry; which of the secrets it must carry depends on the model."""

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
CLOSED_SESSIONS = 1024
"""How many ended sessions a party remembers: a schedule party 0 sent for one of them is
dropped at once instead of waiting the timeout for a request that will not come."""
MAX_REASON_CHARS = 500
"""Of a PartyError's text passed on to the other parties with an abort."""


class _Refused(Exception):
    """A request refused before it ran (answered with an error, nothing else happens)."""


@dataclass
class _Pending:
    request: Request
    route: bytes
    received: float = field(default_factory=time.monotonic)


@dataclass
class Session:
    """One driver's session: bound to the driver's name, with its own PRG keys, counters,
    cost recorder and generations."""

    id: int
    driver: str
    role: str
    route: bytes
    ctx: PartyContext | None = None
    stats: CommStats = field(default_factory=CommStats)
    last_request: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    generations: dict[str, Generation] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)


class PartyServer:
    """One party: serves drivers on its control socket and computes with its peers."""

    def __init__(self, rank: int, config: ClusterConfig, credential: Credential | None) -> None:
        self.rank = rank
        self.config = config
        self.log = logging.getLogger(f"securetorch.party{rank}")
        device = check_device(config.parties[rank].device)  # before any socket opens
        self.zmq = zmq.Context()
        self.auth: Authenticator | None = None
        if credential is not None:
            self.auth = Authenticator(self.zmq, self._admissions())
        me = config.parties[rank]
        self.control = self.zmq.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if credential is not None:
            credential.serve(self.control, DRIVERS_DOMAIN)
        self.control_address = bind_any(self.control, me.control or "tcp://127.0.0.1:*")
        self.net = PeerNetwork(
            rank,
            self.zmq,
            me.peer or "tcp://127.0.0.1:*",
            config.timeout,
            self._on_control_during_job,
            self.control,
            credential,
            config.max_message_bytes,
            device,
        )
        if config.local and config.play_network:  # a local cluster plays its network; a deployment's is real
            self.net.emulated = config.network
        self.models: dict[str, InstalledModel] = {}
        self.sessions: dict[int, Session] = {}
        self.closed: deque[int] = deque(maxlen=CLOSED_SESSIONS)  # ids of sessions this party ended
        self.queue: deque[tuple[int, int]] = deque()  # party 0: (session, request) in arrival order
        self.epoch = secrets.randbits(31) + 1
        self.jobs = 0  # party 0's counter
        self.last_job = 0  # the last job this party ran (parties 1, 2: schedules must grow)
        self.running: tuple[Session, Request] | None = None
        self.deferred: deque[list[Buffer]] = deque()
        self.dropped_control = 0  # control messages dropped during jobs (deferred queue full)
        self.waiting_since: dict[int, float] = {}  # parties 1, 2: schedule job -> first seen
        self.stopping = False

    def _admissions(self) -> dict[str, Admission]:
        config = self.config
        drivers, peers = Admission(), Admission()
        if config.password_digests:
            drivers.plain = {d.name: config.password_digests[d.name] for d in config.drivers}
            peers.plain = {
                party_identity(r): config.password_digests[party_identity(r)] for r in range(3) if r != self.rank
            }
        else:
            drivers.curve = {d.public_key: d.name for d in config.drivers if d.public_key}
            peers.curve = {
                p.public_key: party_identity(p.rank) for p in config.parties if p.rank != self.rank and p.public_key
            }
        return {DRIVERS_DOMAIN: drivers, PEERS_DOMAIN: peers}

    def connect_peers(self) -> None:
        self.net.connect(
            {p.rank: p.peer for p in self.config.parties}, {p.rank: p.public_key for p in self.config.parties}
        )

    # ------------------------------------------------------------------ replies

    def _reply(self, route: bytes, status: Status, request: int, **fields: Any) -> None:
        try:
            self.control.send_multipart([route, *encode_reply(status, request, **fields)], zmq.NOBLOCK, copy=False)
        except zmq.Again:  # a driver that does not read its replies never stalls the party
            self.log.warning("dropped the reply to request %d: its driver's queue is full", request)
        except zmq.ZMQError as exc:  # the driver is gone (ROUTER_MANDATORY): nothing to answer
            self.log.info("a reply to request %d found no driver (%s)", request, exc)

    def _error(self, route: bytes, request: int, exc: BaseException, driver: str, with_traceback: bool = False) -> None:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
        error = {"type": type(exc).__name__, "message": message}
        if with_traceback:
            error["traceback"] = traceback.format_exc()
        self.log.warning("request %d of driver %s failed: %s: %s", request, driver or "?", type(exc).__name__, message)
        self._reply(route, Status.ERROR, request, error=error)

    # ------------------------------------------------------------------ control messages

    def _receive_control(self) -> list[Buffer] | None:
        try:
            return self.control.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None

    def _on_control_during_job(self) -> None:
        """A control message while a job waits for a peer: an abort of the running request
        raises; job requests are accepted (queued); the rest waits for the job's end."""
        frames = self._receive_control()
        if frames is None:
            return
        try:
            request = decode_request([f.buffer for f in frames[1:]], self._max_elements())
        except Exception:  # malformed: answered (as an error) after the job, never raised into it
            self._defer(frames)
            return
        if request.verb is Verb.ABORT and self.running is not None:
            session, running = self.running
            if request.session == session.id and self._identity(frames, session) == session.driver:
                if request.args.get("target") == running.request:
                    raise PartyError(self._abandoned(running.request, request.args.get("reason")))
        if request.verb.is_job:
            self._handle(frames)
        else:  # answered after the job; acknowledged now, so that its driver waits without a timeout
            if self._defer(frames):
                self._reply(bytes(frames[0]), Status.QUEUED, request.request, position=1 if self.rank == 0 else None)

    def _abandoned(self, request: int, reason: Any) -> str:
        """The error of a request its driver abandoned, running or queued: with the driver's
        reason (which party failed), so that every party's report names it."""
        return (
            f"party {self.rank}: request {request} abandoned: {reason if isinstance(reason, str) else 'by the driver'}"
        )

    def _defer(self, frames: list[Any]) -> bool:
        """Keep a control message for after the running job, up to ``MAX_DEFERRED`` of them
        (beyond that it is dropped: a flood costs the party no memory)."""
        if len(self.deferred) >= MAX_DEFERRED:
            self.dropped_control += 1
            self.log.warning("dropped a control message during a job: %d are waiting already", MAX_DEFERRED)
            return False
        self.deferred.append(frames)
        return True

    def _identity(self, frames: list[Any], session: Session | None = None) -> str | None:
        """The authenticated name of a message's sender (insecure clusters: the session's)."""
        if self.auth is not None:
            return sender_identity(frames[1])
        return session.driver if session is not None and session.route == bytes(frames[0]) else None

    def _max_elements(self) -> int:
        return self.config.max_message_bytes // 8

    def _handle(self, frames: list[Any]) -> None:
        """Accept, refuse, queue or answer one control message. Never raises."""
        route = bytes(frames[0]) if frames else b""
        driver = (sender_identity(frames[1]) if self.auth is not None and len(frames) > 1 else None) or ""
        request_id = 0
        try:
            if len(frames) < 2:
                raise FrameError("a control message without content")
            request = decode_request([f.buffer for f in frames[1:]], self._max_elements())
            request_id = request.request
            session = self.sessions.get(request.session)
            if request.verb is Verb.OPEN:
                driver = self._open(frames, request)
                return
            if session is None:
                raise _Refused(f"party {self.rank} has no session {request.session}: open one first")
            driver = session.driver
            if self._identity(frames, session) != session.driver:
                raise AccessError(f"party {self.rank}: session {request.session} belongs to another driver")
            if request.request <= session.last_request:
                raise _Refused(f"request {request.request} of session {request.session} is not new (replayed?)")
            if session.role not in request.verb.roles:
                raise AccessError(f"{request.verb.value} is not allowed for a driver whose role is {session.role}")
            session.last_request = request.request
            session.last_active = time.monotonic()
            session.route = route
            if request.verb.is_job:
                self._enqueue(session, _Pending(request, route))
            else:
                result = self._immediate(session, request)
                self._reply(route, Status.OK, request.request, result=result)
        except Exception as exc:
            self._error(route, request_id, exc, driver)

    def _open(self, frames: list[Any], request: Request) -> str:
        """Accept a driver's session (its key agreement then runs as a job)."""
        args = Args(Verb.OPEN, request.args, ("version", "rank", "frac_bits", "compare_bits", "driver"))
        if self.auth is not None:
            name = sender_identity(frames[1]) or ""
        else:  # unauthenticated test setups: the driver names itself
            name = args.text("driver", self.config.drivers[0].name if len(self.config.drivers) == 1 else "")
        entry = self.config.driver(name)
        if entry is None:
            raise AccessError(f"party {self.rank}: no driver named {name!r} in the cluster file")
        if request.session in self.sessions:
            raise _Refused(f"party {self.rank}: session {request.session} exists (a session is keyed once)")
        if args.raw("rank") != self.rank:
            raise _Refused(f"the driver expects rank {args.raw('rank')} at this address, but this is party {self.rank}")
        problem = settings_mismatch(self.config.settings(), request.args)
        if problem is not None:
            raise _Refused(f"party {self.rank}: {problem}")
        mine = sorted((s for s in self.sessions.values() if s.driver == name), key=lambda s: s.last_active)
        for stale in mine[: max(0, len(mine) - MAX_SESSIONS_PER_DRIVER + 1)]:
            self.log.info(
                "closing driver %s's oldest session %d (at most %d each)", name, stale.id, MAX_SESSIONS_PER_DRIVER
            )
            self._close_session(stale)
        session = Session(request.session, name, entry.role, bytes(frames[0]), last_request=request.request)
        self.sessions[session.id] = session
        self._enqueue(session, _Pending(request, bytes(frames[0])))
        return name

    def _enqueue(self, session: Session, pending: _Pending) -> None:
        if len(session.pending) >= MAX_PENDING_PER_SESSION:
            raise _Refused(f"session {session.id} has {MAX_PENDING_PER_SESSION} requests waiting already")
        session.pending[pending.request.request] = pending
        if self.rank == 0:
            self.queue.append((session.id, pending.request.request))
            position = len(self.queue) - (0 if self.running is not None else 1)
        else:
            position = None
        self._reply(pending.route, Status.QUEUED, pending.request.request, position=position)

    # ------------------------------------------------------------------ requests that are not jobs

    def _immediate(self, session: Session, request: Request) -> Any:
        verb, values = request.verb, request.args
        if verb is Verb.STATS:
            Args(verb, values, ())
            return session.stats.copy()
        if verb is Verb.RESET_STATS:
            Args(verb, values, ())
            session.stats = CommStats()
            return session.stats.copy()
        if verb is Verb.COSTS_START:
            Args(verb, values, ())
            costs.start(self._context(session))
            return None
        if verb is Verb.COSTS_STOP:
            Args(verb, values, ())
            return costs.stop(self._context(session))
        if verb is Verb.DESCRIBE:
            return self._model(session, Args(verb, values, ("name",)).text("name")).describe()
        if verb is Verb.CLOSE:
            Args(verb, values, ())
            self._close_session(session)
            return None
        if verb is Verb.ABORT:
            args = Args(verb, values, ("target", "reason"))
            target = args.integer("target")
            pending = session.pending.pop(target, None)
            if pending is not None:
                self._drop_queued(session.id, target)
                message = self._abandoned(target, args.optional_text("reason"))
                self._reply(pending.route, Status.ERROR, target, error={"type": "PartyError", "message": message})
            return None
        if verb is Verb.STOP:
            Args(verb, values, ())
            if not self.config.local:
                raise AccessError(f"party {self.rank}: a service party is stopped by its operator, not by drivers")
            self.stopping = True
            return None
        raise _Refused(f"{verb.value} is a job")  # pragma: no cover - every verb is one or the other

    def _context(self, session: Session) -> PartyContext:
        if session.ctx is None:
            raise _Refused(f"session {session.id} is not set up yet")
        return session.ctx

    def _drop_queued(self, session_id: int, request_id: int) -> None:
        if self.rank == 0:
            try:
                self.queue.remove((session_id, request_id))
            except ValueError:
                pass

    def _close_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self.closed.append(session.id)
        for request_id, pending in list(session.pending.items()):
            self._drop_queued(session.id, request_id)
            self._reply(
                pending.route, Status.ERROR, request_id, error={"type": "PartyError", "message": "the session ended"}
            )
        for name in [n for n, m in self.models.items() if m.session == session.id]:
            del self.models[name]

    def _model(self, session: Session, name: str) -> InstalledModel:
        """The model ``name`` if this driver may call it. A model that does not exist and one
        that does not name the driver are refused alike (a client learns no other names)."""
        installed = self.models.get(name)
        if installed is None or not installed.may_call(session.driver, session.role):
            raise AccessError(f"no model named {name!r} that driver {session.driver!r} may call")
        return installed

    # ------------------------------------------------------------------ jobs

    def _next_job(self) -> None:
        """Party 0: start the next queued job. Parties 1 and 2: start the job party 0 scheduled
        next, once its request is here (or give it up after the timeout)."""
        if self.rank == 0:
            while self.queue:
                session_id, request_id = self.queue.popleft()
                session = self.sessions.get(session_id)
                pending = session.pending.pop(request_id, None) if session else None
                if session is None or pending is None:
                    continue
                self.jobs += 1
                job = (self.epoch << EPOCH_SHIFT) | self.jobs
                digest = self._digest(session, pending.request)
                self.net.notify((1, 2), job, False, {"session": session_id, "request": request_id, "digest": digest})
                for position, (sid, rid) in enumerate(self.queue, start=1):
                    waiting = self.sessions[sid].pending.get(rid) if sid in self.sessions else None
                    if waiting is not None:
                        self._reply(waiting.route, Status.QUEUED, rid, position=position)
                self._run(session, pending, job)
                return
            return
        while self.net.schedules:
            notice = self.net.schedules[0]
            body = notice.body
            session = self.sessions.get(body.get("session")) if isinstance(body.get("session"), int) else None
            pending = session.pending.get(body.get("request")) if session is not None else None
            if notice.job >> EPOCH_SHIFT == self.last_job >> EPOCH_SHIFT and notice.job <= self.last_job:
                self.log.warning("dropped party 0's schedule of job %d: jobs only grow", notice.job)
                self.net.schedules.popleft()
                continue
            if pending is None:
                request_id = body.get("request")
                # gone: received and since abandoned, or of a session this party has closed (a driver
                # that aborts a job and closes its session before this party got to it)
                gone = (session is None and body.get("session") in self.closed) or (
                    session is not None and isinstance(request_id, int) and request_id <= session.last_request
                )
                first = self.waiting_since.setdefault(notice.job, time.monotonic())
                if not gone and time.monotonic() - first < self.config.timeout:
                    return  # the driver's request may still be on its way
                self.net.schedules.popleft()
                self.waiting_since.pop(notice.job, None)
                reason = (
                    f"party {self.rank} {'no longer holds' if gone else 'never received'} request {request_id} "
                    f"of session {body.get('session')}"
                )
                self.log.warning("%s; job %d abandoned", reason, notice.job)
                self.net.notify((0, 3 - self.rank), notice.job, True, {"reason": reason})
                continue
            self.net.schedules.popleft()
            self.waiting_since.pop(notice.job, None)
            del session.pending[pending.request.request]
            for older in [r for r in session.pending if r < pending.request.request]:
                dropped = session.pending.pop(older)
                self._reply(
                    dropped.route,
                    Status.ERROR,
                    older,
                    error={"type": "PartyError", "message": "party 0 never received this request"},
                )
            digest = self._digest(session, pending.request)
            if digest != body.get("digest"):
                self.last_job = notice.job
                reason = f"party {self.rank} received a different request {pending.request.request} than party 0, or holds different state"
                self.net.notify((0, 3 - self.rank), notice.job, True, {"reason": reason})
                self._error(pending.route, pending.request.request, PartyError(reason), session.driver)
                continue
            self._run(session, pending, notice.job)
            return

    def _digest(self, session: Session, request: Request) -> str:
        """A digest of everything public that decides what a job computes: the request (its
        secrets by shape and dtype only) and the state it reads (the model's fingerprint, the
        generation's length)."""
        digest = hashlib.sha256()

        def public(value: Any) -> Any:
            if isinstance(value, SharePayload):
                return ["secret", list(value.shape), str(value.dtype)]
            if isinstance(value, torch.Tensor):
                data = value.detach().contiguous().reshape(-1).view(torch.uint8)
                return [
                    "tensor",
                    str(value.dtype),
                    list(value.shape),
                    hashlib.sha256(data.numpy().tobytes()).hexdigest(),
                ]
            return value

        args = {k: v for k, v in request.args.items() if not (request.verb is Verb.OPEN and k == "rank")}
        view = map_structure(args, public)  # (a session's opening names each party's own rank)
        state: list[Any] = []
        for key in ("model", "name"):
            name = request.args.get(key)
            if isinstance(name, str) and name in self.models:
                state.append(self.models[name].fingerprint)
                generation = session.generations.get(name)
                state.append(None if generation is None else [generation.batch, generation.length])
        doc = [request.verb.value, session.id, request.request, view, state]
        digest.update(json.dumps(doc, sort_keys=True, default=repr).encode())
        return digest.hexdigest()

    def _run(self, session: Session, pending: _Pending, job: int) -> None:
        request, route = pending.request, pending.route
        self.last_job = job
        self.net.begin_job(job)
        notice = self.net.aborted(job)
        if notice is not None:
            reason = notice.body.get("reason", "")
            self._error(
                route, request.request, PartyError(f"party {notice.sender} abandoned the job: {reason}"), session.driver
            )
            if request.verb is Verb.OPEN:
                self.sessions.pop(session.id, None)
            return
        self.running = (session, request)
        self.net.stats = session.stats
        ctx = session.ctx
        if ctx is not None:
            ctx.start_job(job)
            ctx.progress = (
                (lambda done, total: self._reply(route, Status.PROGRESS, request.request, done=done, total=total))
                if self.rank == 0
                else None
            )
        try:
            # inference mode: a party's tensors (ring elements, public values, the modules'
            # own) never need gradients, and each of the thousands of small ops of a request
            # then skips autograd's dispatch (a GPT-2 decode step 7% faster here, interleaved)
            with activate(ctx), torch.inference_mode():
                result = self._job(session, request)
        except Exception as exc:
            if request.verb is Verb.OPEN:
                self.sessions.pop(session.id, None)  # a failed setup abandons that session only
            self._error(route, request.request, exc, session.driver, with_traceback=request.verb is Verb.RUN)
            if not isinstance(exc, PeerAbort):  # tell the others at once, so that they stop waiting
                # only the type of an error that may carry data; a PartyError's own text (a
                # silent or dead peer, an abandoned request) says which party failed
                said = f": {exc}"[:MAX_REASON_CHARS] if type(exc) is PartyError else ""
                self.net.notify(
                    [r for r in range(3) if r != self.rank],
                    job,
                    True,
                    {"reason": f"party {self.rank}: {type(exc).__name__}{said}"},
                )
            return
        finally:
            self.running = None
            if ctx is not None:
                ctx.progress = None
        try:
            self._reply(route, Status.OK, request.request, result=result)
        except TypeError as exc:
            self._error(route, request.request, exc, session.driver)

    def _job(self, session: Session, request: Request) -> Any:
        verb, values = request.verb, request.args
        if verb is Verb.OPEN:
            return self._agree_keys(session)
        ctx = self._context(session)
        if verb is Verb.RUN:
            args = Args(verb, values, ("call", "secrets"))
            call = args.raw("call")
            secrets_ = args.raw("secrets")
            if not isinstance(call, torch.Tensor) or call.dtype != torch.uint8 or not isinstance(secrets_, list):
                raise ValueError("run: a call (bytes) and its secrets")
            if not all(isinstance(s, SharePayload) for s in secrets_):
                raise ValueError("run: secrets must be share pairs")
            fn, fn_args, fn_kwargs = unpack_call(call.numpy().tobytes(), secrets_)
            # as a Simulator's parties: secrets become SharedTensors, public tensors move, both to the device
            fn_args, fn_kwargs = map_structure((fn_args, fn_kwargs), lambda v: arrive(v, ctx.device))
            return map_structure(
                fn(*fn_args, **fn_kwargs), lambda v: from_shared(v) if isinstance(v, SharedTensor) else v
            )
        if verb is Verb.NETCHECK:
            args = Args(verb, values, ("rounds", "bytes"))
            return ctx.net.measure(lambda n: ctx.prg_private.uint8((n,)), args.integer("bytes"), args.integer("rounds"))
        if verb is Verb.INSTALL:
            return self._install(
                session,
                Args(
                    verb,
                    values,
                    (
                        "name",
                        "class",
                        "config",
                        "clients",
                        "check_inputs",
                        "persistent",
                        "params",
                        "bindings",
                        "buffers",
                        "absent",
                        "weights",
                        "checkpoint",
                        "sha256",
                    ),
                ),
            )
        if verb is Verb.UNINSTALL:
            name = Args(verb, values, ("name",)).text("name")
            self._owned(session, name)
            del self.models[name]
            self._forget_generations(name)
            return None
        if verb is Verb.FORWARD:
            installed = self._model(session, Args(verb, values, FORWARD_ARGS).text("model"))
            spec = installed.spec
            secrets_ = ("decoder_onehot",) if spec.encoder_decoder else ()
            args = Args(verb, values, ("model", "onehot" if spec.tokens else "pixel_values", "inputs", *secrets_))
            secret = self._onehot(args) if spec.tokens else to_shared(args.secret("pixel_values"), ctx.device)
            decoder = self._onehot(args, "decoder_onehot") if spec.encoder_decoder else None
            output, fields = forward(ctx, installed, secret, args.tensors("inputs", ctx.device), decoder)
            return {"output": output, "fields": {k: from_shared(v) for k, v in fields.items()}}
        if verb is Verb.GENERATE_START:
            args = Args(verb, values, ("model", "onehot", "inputs", "sampling", "suppress"))
            name = args.text("model")
            installed = self._model(session, name)
            session.generations.pop(name, None)
            sampling = sampling_settings(args.raw("sampling"))
            generation, token = generate_start(
                ctx,
                installed,
                self._onehot(args),
                args.tensors("inputs", ctx.device),
                sampling,
                args.raw("suppress") or [],
            )
            session.generations[name] = generation
            return from_shared(token)
        if verb is Verb.GENERATE_STEP:
            args = Args(verb, values, ("model", "inputs", "suppress"))
            name = args.text("model")
            installed = self._model(session, name)
            generation = session.generations.get(name)
            if generation is None:
                raise ValueError(f"no generation of {name!r} in progress in this session: start one first")
            suppress = args.raw("suppress") or []
            return from_shared(generate_step(ctx, installed, generation, args.tensors("inputs", ctx.device), suppress))
        if verb is Verb.GENERATE_END:
            session.generations.pop(Args(verb, values, ("model",)).text("model"), None)
            return None
        if verb is Verb.SAVE_SHARES:
            args = Args(verb, values, ("name", "directory"))
            installed = self._owned(session, args.text("name"))
            path = self._shares_path(session, installed.name, args.optional_text("directory"))
            holder = sharefile.owner_of(path)
            if holder is not None and holder != installed.owner and session.role != "admin":
                raise AccessError(f"{path} holds another driver's model of the same name; it stays")
            return sharefile.save(installed, path, self.rank, ctx.frac_bits)
        if verb is Verb.LOAD_SHARES:
            args = Args(verb, values, ("name", "directory"))
            name = args.optional_text("name")
            path = self._shares_path(session, name, args.optional_text("directory"))
            installed = sharefile.load(path, self.rank, ctx.frac_bits, ctx.device)
            if session.role != "admin" and installed.owner != session.driver:
                raise AccessError(f"{path} holds a model of {installed.owner!r}, not of {session.driver!r}")
            self._replaceable(session, installed.name)
            self._put(installed)
            return installed.name
        raise _Refused(f"{verb.value} is not a job")  # pragma: no cover

    def _onehot(self, args: Args, name: str = "onehot") -> SharedTensor:
        onehot = args.secret(name)
        if len(onehot.shape) != 3:
            raise ValueError("the one-hot input must have shape [batch, sequence, vocabulary]")
        return to_shared(onehot, self.net.device)

    def _owned(self, session: Session, name: str) -> InstalledModel:
        """The model ``name`` if this driver owns it (or is an admin); refused alike when it
        does not exist."""
        installed = self.models.get(name)
        if installed is None or (session.role != "admin" and installed.owner != session.driver):
            raise AccessError(f"driver {session.driver!r} owns no model named {name!r}")
        return installed

    def _replaceable(self, session: Session, name: str) -> None:
        """An owner may reuse the name of its own model only."""
        installed = self.models.get(name)
        if installed is not None and session.role != "admin" and installed.owner != session.driver:
            raise AccessError(f"the name {name!r} is taken by a model that driver {session.driver!r} does not own")

    def _put(self, installed: InstalledModel) -> None:
        """Hold ``installed`` under its name; a model it replaces ends every generation on it."""
        self._forget_generations(installed.name)
        self.models[installed.name] = installed

    def _forget_generations(self, name: str) -> None:
        for other in self.sessions.values():
            other.generations.pop(name, None)

    def _shares_path(self, session: Session, name: str | None, directory: str | None) -> Any:
        if directory is not None:
            if session.role != "admin":
                raise AccessError("only an admin driver names a directory; other drivers use the party's shares_dir")
            return sharefile.shares_file(directory, self.rank)
        base = self.config.parties[self.rank].shares_dir
        if base is None:
            raise ValueError(f"party {self.rank} has no shares_dir in its cluster file")
        return sharefile.shares_file(os.path.join(base, check_model_name(name)), self.rank)

    def _install(self, session: Session, args: Args) -> str:
        name = check_model_name(args.text("name"))
        self._replaceable(session, name)
        bindings, buffers = args.raw("bindings"), args.raw("buffers")
        if not isinstance(bindings, list) or not all(
            isinstance(b, list) and len(b) == 3 and all(isinstance(x, str) for x in b) for b in bindings
        ):
            raise ValueError("install: bindings must be [module, attribute, parameter] lists")
        if not isinstance(buffers, list) or not all(
            isinstance(b, list)
            and len(b) == 3
            and isinstance(b[0], str)
            and isinstance(b[1], str)
            and isinstance(b[2], torch.Tensor)
            for b in buffers
        ):
            raise ValueError("install: buffers must be [module, attribute, tensor] lists")
        binding_tuples = [tuple(b) for b in bindings]
        buffer_tuples = [tuple(b) for b in buffers]
        weights = args.optional_text("weights") or "secret"
        public = None
        if weights == "public":
            if args.raw("params") is not None:
                raise ValueError("install: a public-weight model comes from a checkpoint, not from params")
            digest = args.text("sha256")
            if not SHA256_PATTERN.fullmatch(digest):
                raise ValueError("install: sha256 is the checkpoint's SHA-256 as 64 lowercase hex digits")
            public = PublicCheckpoint(str(self._checkpoint_path(session, args.text("checkpoint"))), digest)
            tensors = checkpoint.open_checkpoint(public.path, public.sha256)
            params: dict[str, Any] = public_parameters(tensors, binding_tuples)  # type: ignore[arg-type]
            del tensors
        elif weights == "secret":
            raw = args.raw("params")
            if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, SharePayload) for k, v in raw.items()
            ):
                raise ValueError("install: params must map names to secrets")
            params = {key: to_shared(value, self.net.device) for key, value in raw.items()}
            del raw
        else:
            raise ValueError(f"install: weights is 'secret' or 'public', not {weights!r}")
        absent = args.names("absent")
        model, spec = build(
            args.text("class"), args.raw("config"), params, binding_tuples, buffer_tuples, absent, self.net.device
        )  # type: ignore[arg-type]
        self._put(
            InstalledModel(
                name=name,
                owner=session.driver,
                clients=args.names("clients"),
                check_inputs=args.flag("check_inputs", True),
                class_name=args.text("class"),
                model=model,
                spec=spec,
                bindings=binding_tuples,  # type: ignore[arg-type]
                buffers=buffer_tuples,  # type: ignore[arg-type]
                session=None if args.flag("persistent", False) else session.id,
                absent=absent,
                checkpoint=public,
            )
        )
        return name

    def _checkpoint_path(self, session: Session, value: str) -> pathlib.Path:
        """A public-weight checkpoint: a file name in this party's ``checkpoints_dir`` (from its
        own cluster file), or, for an admin driver only, an absolute path."""
        base = self.config.parties[self.rank].checkpoints_dir
        if NAME_PATTERN.fullmatch(value) and ".." not in value:
            if base is None:
                raise ValueError(f"party {self.rank} has no checkpoints_dir in its cluster file")
            return pathlib.Path(base) / value
        if session.role != "admin":
            raise AccessError(
                "only an admin driver names a checkpoint by its path; other drivers name a file in the party's "
                "checkpoints_dir"
            )
        if not os.path.isabs(value):
            raise ValueError(f"a checkpoint is a file name in checkpoints_dir or an absolute path, not {value!r}")
        return pathlib.Path(value)

    def _agree_keys(self, session: Session) -> dict[str, Any]:
        """Fresh PRG keys for a session (ABY3 §2.2), agreed with the peers in this job."""
        prev, nxt = (self.rank - 1) % 3, (self.rank + 1) % 3
        own_key, common_part = new_key(), new_key()

        def as_tensor(key: bytes) -> torch.Tensor:
            return torch.frombuffer(bytearray(key), dtype=torch.uint8)

        got = self.net.exchange(
            {prev: [as_tensor(own_key), as_tensor(common_part)], nxt: [as_tensor(common_part)]}, [nxt, prev]
        )
        for tensors in got.values():
            if any(t.dtype != torch.uint8 or t.numel() != 16 for t in tensors):
                raise PartyError(f"party {self.rank}: malformed key material from a peer")
        next_key = bytes(got[nxt][0].tolist())
        parts = {self.rank: common_part, nxt: bytes(got[nxt][1].tolist()), prev: bytes(got[prev][0].tolist())}
        common = hashlib.sha256(b"".join(parts[r] for r in range(3))).digest()[:16]
        keys = PartyKeys(prev=own_key, next=next_key, common=common, private=new_key())
        ctx = PartyContext(
            self.rank, self.config.frac_bits, self.config.compare_bits, self.net, keys, self.config.network
        )
        ctx.models = self.models
        session.ctx = ctx
        session.stats = CommStats()
        return {"rank": self.rank, "driver": session.driver, "role": session.role}

    # ------------------------------------------------------------------ loop

    def serve(self) -> None:
        parent = os.getppid()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.net.inbound, zmq.POLLIN)
        while not self.stopping:
            try:
                while self.deferred and not self.stopping:
                    self._handle(self.deferred.popleft())
                self._next_job()
                self._expire_sessions()
                wait = 50 if self.net.schedules or (self.rank == 0 and self.queue) else 1000
                events = dict(poller.poll(wait))
                if self.net.inbound in events:
                    self.net.poll(0)
                if self.control in events:
                    while not self.stopping and (frames := self._receive_control()) is not None:
                        self._handle(frames)
                if self.config.local and os.getppid() != parent and parent != 1:
                    break  # the driver that started us is gone
            except Exception:  # never exit on a message: log and go on serving
                self.log.exception("party %d: unexpected error while serving (serving on)", self.rank)
        self.close()

    def _expire_sessions(self) -> None:
        if self.config.local:
            return
        now = time.monotonic()
        for session in list(self.sessions.values()):
            running = self.running is not None and self.running[0] is session
            if now - session.last_active > SESSION_IDLE_SECONDS and not running:
                self.log.info("session %d of driver %s idle for an hour: closed", session.id, session.driver)
                self._close_session(session)

    def close(self) -> None:
        self.net.close()
        self.control.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.zmq.term()


# ----------------------------------------------------------------------------- entry points


def _configure(threads: int, rank: int, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 3) // 3))
    import securetorch.tensor  # noqa: F401 - registers the op tables
    from securetorch.ring import resolve_kernel

    resolve_kernel()  # time the ring matmul kernels now, not during the first product


def serve_local(threads: int, endpoints_fd: int) -> None:
    """A ``LocalCluster``'s party: its configuration and credential arrive on stdin (one JSON
    line), it reports its bound endpoints on ``endpoints_fd`` (a pipe to the driver), then
    reads its peers' endpoints (a second line) and serves. It dies with the driver."""
    die_with_parent()
    first = json.loads(sys.stdin.readline())
    rank = int(first["rank"])
    config = ClusterConfig.from_json(first["config"])
    secret = first["credential"]
    credential: Credential = (
        PlainPassword(party_identity(rank), secret["password"])
        if "password" in secret
        else CurveKeys(secret["public"].encode(), secret["secret"].encode())
    )
    _configure(threads, rank, logging.WARNING)
    server = PartyServer(rank, config, credential)
    with os.fdopen(endpoints_fd, "w") as pipe:
        pipe.write(json.dumps({"control": server.control_address, "peer": server.net.address}) + "\n")
    second = json.loads(sys.stdin.readline())
    parties = tuple(
        replace(
            config.parties[r],
            control=p["control"],
            peer=p["peer"],
            public_key=p["public_key"].encode() if p["public_key"] else None,
        )
        for r, p in enumerate(second["parties"])
    )
    server.config = config.with_parties(parties)  # type: ignore[arg-type]
    server.connect_peers()
    sys.stdin.close()
    server.serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="securetorch party", description="a securetorch party (a service of a deployment)"
    )
    parser.add_argument("--rank", type=int, choices=[0, 1, 2])
    parser.add_argument("--config", default=None, help="the cluster file (TOML)")
    parser.add_argument("--key", default=None, help="this party's CURVE secret key file (securetorch keygen)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: cores / 3)")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a cluster file without keys (unencrypted links, tests only)"
    )
    parser.add_argument(
        "--shares", action="append", default=[], help="a shares file to serve (puma.save_shares); repeatable"
    )
    parser.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoints-fd", type=int, default=-1, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.local:
        serve_local(opts.threads, opts.endpoints_fd)
        return
    if opts.rank is None or opts.config is None:
        parser.error("a party needs --rank and --config")
    try:
        config = ClusterConfig.load(opts.config)
        keys = config.endpoint_keys(opts.key, "pass this party's --key FILE.key_secret")
        if keys is not None and keys.public != config.parties[opts.rank].public_key:
            raise ConfigError(f"{opts.key} is not the key that {opts.config} lists for party {opts.rank}")
        if keys is None and not opts.insecure:
            raise ConfigError(
                f"{opts.config} lists no public keys, so every link would be unencrypted: add them "
                "(securetorch keygen) or pass --insecure for a test setup"
            )
    except ConfigError as exc:
        parser.exit(2, f"securetorch party: {exc}\n")
    _configure(opts.threads, opts.rank, logging.INFO)
    server = PartyServer(opts.rank, config, keys)
    for path in opts.shares:
        try:
            installed = sharefile.load(path, opts.rank, config.frac_bits)
        except (OSError, ValueError, KeyError, NotImplementedError) as exc:
            server.close()
            parser.exit(2, f"securetorch party: cannot serve {path}: {exc}\n")
        server.models[installed.name] = installed
        print(f"securetorch party {opts.rank}: serving model {installed.name!r} from {path}", flush=True)
    server.connect_peers()
    print(f"securetorch party {opts.rank}: serving drivers on {server.control_address}, "
          f"peers on {server.net.address}{' (CURVE)' if keys else ' (unencrypted)'}", flush=True)  # fmt: skip
    server.serve()


if __name__ == "__main__":
    main()
