"""The driver's side: clusters of three parties and the typed requests a driver sends them.

``Cluster`` talks to three running parties over ZeroMQ; ``LocalCluster`` starts them on this
machine and stops them on close, on error and at interpreter exit. Every request is a verb
with typed arguments (``verbs``); every reply is decoded as data, never unpickled, so a party
(or anything posing as one) cannot run code on the driver. Secret arguments (``private(t)``)
are dealt as shares, one pair per party; secret results come back as share pairs and only
the driver reconstructs them.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Literal

import torch
import zmq

from securetorch.comm.frames import FrameError
from securetorch.comm.profile import NetworkProfile, measured_profile, network_profile
from securetorch.comm.security import Credential, CurveKeys, PlainPassword, party_identity
from securetorch.comm.stats import CommStats
from securetorch.errors import AccessError, InputError, PartyError, ProtocolError
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS
from securetorch.runtime.deployment import (
    LOCAL_DRIVER,
    PROTOCOL_VERSION,
    ClusterConfig,
    ConfigError,
    local_config,
)
from securetorch.runtime.launcher import PartyProcess, start_party
from securetorch.runtime.party import PartyServer
from securetorch.runtime.shipping import pack_call
from securetorch.runtime.simulator import release_freed_memory
from securetorch.runtime.verbs import Status, Verb, decode_reply, encode_request
from securetorch.session import costs
from securetorch.session.context import check_device
from securetorch.tensor.payload import RANKS, deal, deal_tree, reconstruct_tree

log = logging.getLogger("securetorch.cluster")

# Exception types a party's error may be raised as on the driver (looked up by name in this
# table only); any other type arrives as a PartyError.
_REMOTE_ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        RuntimeError,
        NotImplementedError,
        PermissionError,
        AssertionError,
        ZeroDivisionError,
        OverflowError,
        AttributeError,
        FileNotFoundError,
        FileExistsError,
        MemoryError,
        PartyError,
        ProtocolError,
        InputError,
        AccessError,
    )
}


def _progress_wanted() -> bool:
    """Progress bars on long calls: in a terminal or a notebook, not under pytest or CI, and
    not with SECURETORCH_PROGRESS=0."""
    if os.environ.get("SECURETORCH_PROGRESS", "") == "0" or "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("CI"):
        return False
    in_notebook = "ipykernel" in sys.modules
    return in_notebook or bool(getattr(sys.stderr, "isatty", lambda: False)())


def _remote_exception(rank: int, error: dict[str, Any]) -> BaseException:
    cls = _REMOTE_ERRORS.get(error["type"])
    message = error["message"]
    exc = cls(message) if cls is not None else PartyError(f"party {rank}: {error['type']}: {message}")
    if isinstance(error.get("traceback"), str):
        exc.add_note(f"raised in party {rank}:\n{error['traceback']}")
    return exc


_UNREACHABLE_HINT = (
    "are the parties running at these addresses, and is this driver's public key listed under [[drivers]] in "
    "their cluster file?"
)
"""Why a driver hears nothing: a party that is not there and one that refuses its key (a CURVE
handshake that fails) look alike, the one or the other by timing."""


class Cluster:
    """A driver's session with three parties (ranks 0, 1, 2) at their control addresses.

    ``LocalCluster`` starts three parties on this machine; ``Cluster.from_config`` connects
    to the long-lived parties of a deployment over CURVE. Opening the session checks the
    protocol version, the fixed-point setting and the ranks; ``close()`` ends it (the
    parties of a deployment keep serving). ``role`` is what the parties let this driver do.
    """

    def __init__(
        self,
        control_addresses: list[str],
        frac_bits: int = DEFAULT_FRAC_BITS,
        timeout: float = 60.0,
        compare_bits: int = DEFAULT_COMPARE_BITS,
        progress: bool | None = None,
        credential: Credential | None = None,
        party_keys: list[bytes | None] | None = None,
        name: str | None = None,
        on_queue: Callable[[int], None] | None = None,
        network: NetworkProfile | None = None,
    ) -> None:
        self.network = network  # the link the parties are on (declared, or played by local parties)
        if not 4 <= compare_bits <= 64 or not 0 <= frac_bits <= 30:
            raise ValueError("need 0 <= frac_bits <= 30 and 4 <= compare_bits <= 64")
        self.frac_bits = frac_bits
        self.compare_bits = compare_bits
        self.timeout = timeout
        self._zmq = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        for r, addr in enumerate(control_addresses):
            sock = self._zmq.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
            if credential is not None:
                credential.connect(sock, None if party_keys is None else party_keys[r])
            sock.connect(addr)
            self._sockets.append(sock)
        self.party_keys = party_keys  # the parties' CURVE public keys (None: not CURVE)
        self.session = secrets.randbits(62) + 1
        self._requests = itertools.count(1)
        self._name = name
        self._broken: str | None = None
        self._closed = False
        self.role: str | None = None
        self.driver: str | None = None
        self.queue_position: int | None = None
        self.on_queue = on_queue
        self.progress = progress if progress is not None else _progress_wanted()
        self._bar: Any = None
        self._bar_request = 0

    # ------------------------------------------------------------------ plumbing
    def _dead(self) -> dict[int, str]:
        """Parties known to be gone, with why (LocalCluster watches its processes)."""
        return {}

    def _send(self, rank: int, frames: list[Any], block: bool = True) -> None:
        try:
            self._sockets[rank].send_multipart(frames, flags=0 if block else zmq.NOBLOCK, copy=False)
        except zmq.Again as exc:
            raise PartyError(
                f"party {rank} is not reachable (no connection within {self.timeout:.1f} s): {_UNREACHABLE_HINT}"
            ) from exc

    def _show_progress(self, request: int, done: int, total: int) -> None:
        if not self.progress:
            return
        if self._bar is None or self._bar_request != request:
            self._close_bar()
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="secure layers", unit="layer", delay=2.0, leave=False)
            self._bar_request = request
        self._bar.update(max(0, done - self._bar.n))

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _queued(self, position: int) -> None:
        """Party 0 says how many jobs run before this request (other drivers' included)."""
        self.queue_position = position
        if position > 0:
            log.info("waiting for the parties: %d job(s) ahead of this request", position)
        if self.on_queue is not None:
            self.on_queue(position)

    def _usable(self) -> None:
        if self._closed:
            raise PartyError("the cluster is closed")
        if self._broken:
            raise PartyError(f"the cluster is down: {self._broken}")

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str],
        key: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        name: str | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> Cluster:
        """Connect to the three parties a cluster file names (see ``runtime.deployment``) and
        open a session. With CURVE keys in the file, ``key`` is this driver's ``.key_secret``
        file (``securetorch keygen``); its public key must be listed under [[drivers]], whose
        entry gives this driver's name and role. A file without keys (a test setup) takes
        ``name``, one of its [[drivers]], unauthenticated. ``on_queue(position)`` hears how
        many jobs (of any driver) run before each request. ``close()`` ends the session; the
        parties keep serving."""
        config = ClusterConfig.load(path)
        keys = config.endpoint_keys(key, "pass key=<this driver's .key_secret file>")
        if keys is None and name is not None and config.driver(name) is None:
            raise ConfigError(f"{path} lists no driver named {name!r}")
        cluster = cls(
            [p.control for p in config.parties],
            config.frac_bits,
            config.timeout,
            config.compare_bits,
            progress,
            credential=keys,
            party_keys=[p.public_key for p in config.parties],
            network=config.network,
            name=name,
            on_queue=on_queue,
        )
        try:
            cluster._open()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _open(self) -> None:
        """Open the session under a random id: every party checks the settings and its rank,
        binds the session to this driver's key, and the parties agree on fresh PRG keys."""
        per_party = []
        for r in RANKS:
            args: dict[str, Any] = {
                "version": PROTOCOL_VERSION,
                "rank": r,
                "frac_bits": self.frac_bits,
                "compare_bits": self.compare_bits,
            }
            if self._name is not None:
                args["driver"] = self._name
            per_party.append(args)
        try:
            results = self._exchange(Verb.OPEN, per_party)
        except PartyError as exc:
            if "no reply from" in str(exc):
                raise PartyError(f"{exc}: {_UNREACHABLE_HINT}") from None
            raise
        self.role = results[0]["role"]
        self.driver = results[0]["driver"]

    # ------------------------------------------------------------------ requests
    def call(self, verb: Verb, args: dict[str, Any]) -> list[Any]:
        """Send ``verb`` with ``args`` to the three parties (``private(t)`` values dealt as
        shares) and return their three results, secrets reconstructed."""
        self._usable()
        return self._exchange(verb, deal_tree(args, self.frac_bits, self.compare_bits))

    def _exchange(self, verb: Verb, per_party: list[dict[str, Any]]) -> list[Any]:
        request = next(self._requests)
        for r in RANKS:
            self._send(r, encode_request(verb, self.session, request, per_party[r]))
        del per_party  # the shares are on their way: do not hold them while the parties work
        try:
            results = self._collect(request)
        finally:
            self._close_bar()
        return self._reconstruct(results)

    def _collect(self, request: int) -> list[Any]:
        """The three results of ``request``. Each party first acknowledges it (or answers)
        within the timeout; then the driver waits as long as the parties work, showing its
        place in the queue. When a party fails or dies, the others are told to abandon the
        request, and the failure is raised."""
        results: dict[int, Any] = {}
        errors: dict[int, dict[str, Any]] = {}
        dead: dict[int, str] = {}
        heard: set[int] = set()
        ack_deadline = time.monotonic() + self.timeout + 10
        abort_deadline = float("inf")
        aborted = False
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        while len(results) + len(errors) + len(dead) < 3:
            for sock, _ in poller.poll(200):
                rank = self._sockets.index(sock)
                frames = sock.recv_multipart(copy=False)
                try:
                    reply = decode_reply([f.buffer for f in frames])
                except FrameError as exc:
                    log.warning("party %d sent a malformed reply (%s): ignored", rank, exc)
                    if rank not in results:
                        errors[rank] = {"type": "PartyError", "message": f"party {rank} sent a malformed reply ({exc})"}
                    continue
                if reply.request != request or rank in results or rank in errors:
                    continue  # a late reply to an earlier request
                heard.add(rank)
                if reply.status is Status.QUEUED:
                    if rank == 0 and isinstance(reply.header.get("position"), int):
                        self._queued(reply.header["position"])
                elif reply.status is Status.PROGRESS:
                    done, total = reply.header.get("done"), reply.header.get("total")
                    if isinstance(done, int) and isinstance(total, int):
                        self._show_progress(request, done, total)
                elif reply.status is Status.OK:
                    results[rank] = reply.result
                else:
                    errors[rank] = reply.header["error"]
            pending = [r for r in RANKS if r not in results and r not in errors and r not in dead]
            dead.update({r: why for r, why in self._dead().items() if r in pending})
            pending = [r for r in pending if r not in dead]
            if (errors or dead) and pending and not aborted:
                reason = "; ".join(dead.values()) or f"party {min(errors)} failed: {errors[min(errors)]['message']}"
                self._abort(request, pending, reason)
                aborted = True
                abort_deadline = time.monotonic() + self.timeout + 5
            now = time.monotonic()
            silent = [r for r in pending if r not in heard]
            if silent and now > ack_deadline:
                raise PartyError(f"no reply from parties {silent} within {self.timeout:.1f} s")
            if pending and now > abort_deadline:
                raise PartyError(f"parties {pending} did not abandon request {request} within {self.timeout + 5:.1f} s")
        if dead:
            self._broken = "; ".join(dead.values())
            reports = {r: f"{e['type']}: {e['message']}" for r, e in errors.items()}
            raise PartyError(
                "; ".join([self._broken, *(f"party {r}: {m}" for r, m in sorted(reports.items()))]), reports
            )
        if errors:
            raise self._failure(errors)
        return [results[r] for r in RANKS]

    def _abort(self, request: int, ranks: list[int], reason: str) -> None:
        for r in ranks:
            try:
                frames = encode_request(
                    Verb.ABORT, self.session, next(self._requests), {"target": request, "reason": reason}
                )
                self._send(r, frames, block=False)
            except (PartyError, zmq.ZMQError):
                pass  # a party that cannot be reached has nothing to abandon

    @staticmethod
    def _failure(errors: dict[int, dict[str, Any]]) -> BaseException:
        """What to raise for the parties' errors: the first party's own error (raised as its
        type when it is a known one), or a PartyError listing what each party reported."""
        user = {r: e for r, e in errors.items() if e["type"] not in ("PartyError", "PeerAbort")}
        reports = {r: f"{e['type']}: {e['message']}" for r, e in errors.items()}
        if not user:
            return PartyError("; ".join(e["message"] for e in errors.values()), reports)
        rank = min(user)
        return _remote_exception(rank, user[rank])

    def _reconstruct(self, results: list[Any]) -> list[Any]:
        try:
            return reconstruct_tree(results, self.frac_bits)
        except ValueError as exc:
            raise PartyError(str(exc)) from None

    # ------------------------------------------------------------------ public API
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` inside each party (SPMD); return the 3 results in rank order.

        ``private(t)`` arguments arrive secret-shared; other arguments are public. A
        ``SharedTensor`` in a result comes back to the driver only: each party sends its
        share pair and the driver puts the reconstructed plaintext in its place. Results are
        data (numbers, strings, tensors, lists, tuples, dicts, ``CommStats``). An exception
        in any party is re-raised here with that party's traceback.

        The function is shipped by value and runs with full access to the party: only a
        ``LocalCluster`` and drivers whose role is admin may do this.
        """
        self._usable()
        if self.role != "admin":
            raise AccessError(
                f"Cluster.run ships code into the parties: only admin drivers may, this one is {self.role}"
            )
        call, privates = pack_call(fn, args, kwargs)
        shares = [deal(p, self.frac_bits, self.compare_bits) for p in privates]
        payload = torch.frombuffer(bytearray(call), dtype=torch.uint8)
        per_party = [{"call": payload, "secrets": [s[r] for s in shares]} for r in RANKS]
        del shares
        return self._exchange(Verb.RUN, per_party)

    def stats(self) -> list[CommStats]:
        """This session's communication counters in the three parties, in rank order."""
        return self.call(Verb.STATS, {})

    def reset_stats(self) -> None:
        self.call(Verb.RESET_STATS, {})

    def netcheck(self, rounds: int = 20, megabytes: float = 8.0) -> NetworkProfile:
        """Measure the links between the running parties: each times ``rounds`` round trips
        and three rounds that send ``megabytes`` of random bytes to each peer; the slowest
        round trip and the narrowest bandwidth make the profile to declare in the cluster
        file (``network``), for which the parties then pick protocol variants. Owners and
        admins may ask (``securetorch netcheck``)."""
        views = self.call(Verb.NETCHECK, {"rounds": int(rounds), "bytes": max(1, round(megabytes * 1e6))})
        return measured_profile(views)

    @contextlib.contextmanager
    def cost_report(self) -> Iterator[costs.CostReport]:
        """Record what the secure calls made inside the ``with`` block cost, per module and op::

            with cluster.cost_report() as report:
                secure_model(**inputs)
            pandas.DataFrame(report.by("layer", "op"))

        The report fills in when the block ends (see ``costs.CostReport``)."""
        report = costs.CostReport()
        self.call(Verb.COSTS_START, {})
        try:
            yield report
        finally:
            if not self._closed and not self._broken:
                report.entries[:] = costs.combine(self.call(Verb.COSTS_STOP, {})).entries

    def _end_session(self, verb: Verb) -> None:
        for r in RANKS:
            try:
                self._send(r, encode_request(verb, self.session, next(self._requests), {}), block=False)
            except (zmq.ZMQError, PartyError):
                pass  # a party that cannot be reached has no session to end

    def close(self) -> None:
        self._leave(Verb.CLOSE, lambda: time.sleep(0.01))  # let the messages leave (LINGER is 0)

    def _leave(self, verb: Verb, wait: Callable[[], None]) -> None:
        """End the session with ``verb`` (STOP: the parties this driver started stop too),
        ``wait`` for it to take effect, and release this driver's sockets."""
        if self._closed:
            return
        self._closed = True
        self._end_session(verb)
        wait()
        for sock in self._sockets:
            sock.close(0)
        self._zmq.term()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_LIVE: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for cluster in list(_LIVE):
        cluster.close()


def _private_parties(
    directory: str,
    transport: str,
    frac_bits: int,
    compare_bits: int,
    timeout: float,
    network: NetworkProfile | None,
    play_network: bool = True,
    device: str = "cpu",
) -> tuple[ClusterConfig, list[Credential], Credential]:
    """The configuration of three parties private to one driver, their credentials and the
    driver's: ipc sockets in ``directory`` (mode 0700) with random PLAIN passwords, or
    loopback tcp with ephemeral CURVE keys; the network profile they pick protocols for
    (and play, unless ``play_network`` is False)."""
    names = [party_identity(r) for r in RANKS]
    credentials: list[Credential]
    if transport == "ipc":
        passwords = {name: PlainPassword(name) for name in [*names, LOCAL_DRIVER]}
        digests = {n: p.digest() for n, p in passwords.items()}
        config = local_config(frac_bits, compare_bits, timeout, None, digests, network, play_network, device)
        credentials, driver = [passwords[n] for n in names], passwords[LOCAL_DRIVER]
        addresses = [(f"ipc://{directory}/p{r}-control", f"ipc://{directory}/p{r}-peer") for r in RANKS]
    else:
        keys = [CurveKeys.generate() for _ in RANKS]
        driver_keys = CurveKeys.generate()
        config = local_config(frac_bits, compare_bits, timeout, driver_keys.public, {}, network, play_network, device)
        credentials, driver = list(keys), driver_keys
        addresses = [("tcp://127.0.0.1:*", "tcp://127.0.0.1:*") for _ in RANKS]
    parties = tuple(
        replace(
            p,
            control=addresses[p.rank][0],
            peer=addresses[p.rank][1],
            public_key=getattr(credentials[p.rank], "public", None),
        )
        for p in config.parties
    )
    return config.with_parties(parties), credentials, driver  # type: ignore[arg-type]


class LocalCluster(Cluster):
    """Three party processes on this machine, private to this driver.

    The parties bind ipc sockets in a directory only this user can enter (mode 0700) and
    admit only this driver and each other, by random passwords handed to them over their
    stdin (a verifier keeps their SHA-256); ``transport="tcp"`` uses loopback tcp with
    ephemeral CURVE key pairs instead (encrypted; about five times the cost per byte). The
    parties report their endpoints through pipes, never a port another process could
    answer on. This driver is their admin (it may ``run`` functions). On Linux the parties
    are forked from this driver's launcher, which imports the party code once (``launcher``):
    a cluster after the first starts without importing anything.

    ``frac_bits``: fixed-point fractional bits f (default 18); ``compare_bits``: ring bits l
    that comparisons look at (default 44: exact for reals below 2^(l-1-f) = 2^25);
    ``timeout``: seconds a party waits for a peer before raising PartyError;
    ``threads``: torch threads per party (default cores / 3); ``progress``: a per-layer
    progress bar on calls longer than 2 s (default: in a terminal or notebook, not under
    pytest); ``network``: a profile the parties' links play (``"lan"``, ``"puma"``,
    ``"wan"`` or a ``NetworkProfile``: every round lasts at least its RTT plus the bytes sent
    at its bandwidth; ``comm/profile.py``), default none (loopback as it is), for which the
    parties also pick protocol variants; ``play_network=False``: they pick for it but run at
    loopback speed (the exact rounds and bytes a deployment on that link would see, quickly);
    ``device``: where the parties compute (``"cpu"``, or an accelerator such as ``"cuda"``;
    a party that cannot use it fails at start).
    """

    def __init__(
        self,
        frac_bits: int = DEFAULT_FRAC_BITS,
        timeout: float = 60.0,
        threads: int = 0,
        transport: Literal["ipc", "tcp"] = "ipc",
        compare_bits: int = DEFAULT_COMPARE_BITS,
        progress: bool | None = None,
        network: str | NetworkProfile | None = None,
        play_network: bool = True,
        device: str = "cpu",
    ) -> None:
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"transport is 'ipc' or 'tcp', not {transport!r}")
        check_device(device)
        profile = network_profile(network)
        if not 4 <= compare_bits <= 64 or not 0 <= frac_bits <= 30:
            raise ValueError("need 0 <= frac_bits <= 30 and 4 <= compare_bits <= 64")
        self._procs: list[PartyProcess] = []
        self._closed = True  # until the session is open
        self._tmpdir = tempfile.mkdtemp(prefix="securetorch-")  # mode 0700
        try:
            self._start(frac_bits, timeout, threads, transport, compare_bits, progress, profile, play_network, device)
        except BaseException:
            self._kill()
            raise

    def _start(
        self,
        frac_bits: int,
        timeout: float,
        threads: int,
        transport: str,
        compare_bits: int,
        progress: bool | None,
        network: NetworkProfile | None,
        play_network: bool,
        device: str,
    ) -> None:
        config, credentials, driver = _private_parties(
            self._tmpdir, transport, frac_bits, compare_bits, timeout, network, play_network, device
        )
        keys = [c for c in credentials if isinstance(c, CurveKeys)] or None
        secrets_ = [
            {"public": c.public.decode(), "secret": c.secret.decode()}
            if isinstance(c, CurveKeys)
            else {"password": c.password}  # type: ignore[attr-defined]
            for c in credentials
        ]
        # The parties import what the driver can import (test modules, local packages).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        pipes = []
        for r in RANKS:
            proc, read_end = start_party(threads, env)
            self._procs.append(proc)
            pipes.append(read_end)
            first = {"rank": r, "config": config.to_json(), "credential": secrets_[r]}
            proc.stdin.write((json.dumps(first) + "\n").encode())  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        endpoints = self._read_endpoints(pipes)
        second = {
            "parties": [
                {
                    "control": endpoints[r]["control"],
                    "peer": endpoints[r]["peer"],
                    "public_key": None if keys is None else keys[r].public.decode(),
                }
                for r in RANKS
            ]
        }
        for proc in self._procs:
            proc.stdin.write((json.dumps(second) + "\n").encode())  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        super().__init__(
            [endpoints[r]["control"] for r in RANKS],
            frac_bits,
            timeout,
            compare_bits,
            progress,
            credential=driver,
            party_keys=None if keys is None else [k.public for k in keys],
            network=network,
        )
        _LIVE.add(self)
        self._open()

    def _read_endpoints(self, pipes: list[int]) -> list[dict[str, str]]:
        """Each party's bound endpoints, from its pipe (within 120 s)."""
        buffers = {r: b"" for r in RANKS}
        found: dict[int, dict[str, str]] = {}
        deadline = time.monotonic() + 120
        try:
            while len(found) < 3:
                waiting = {pipes[r]: r for r in RANKS if r not in found}
                ready, _, _ = select.select(list(waiting), [], [], 0.2)
                for fd in ready:
                    r = waiting[fd]
                    chunk = os.read(fd, 4096)
                    buffers[r] += chunk
                    if b"\n" in buffers[r]:
                        found[r] = json.loads(buffers[r].split(b"\n", 1)[0])
                    elif not chunk:
                        raise PartyError(f"party {r} exited during start-up")
                for r, p in enumerate(self._procs):
                    if p.poll() is not None and r not in found:
                        raise PartyError(f"party {r} exited during start-up (code {p.returncode})")
                if time.monotonic() > deadline:
                    raise PartyError("the parties did not start within 120 s")
        finally:
            for fd in pipes:
                os.close(fd)
        return [found[r] for r in RANKS]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _dead(self) -> dict[int, str]:
        return {
            r: f"party {r} died (exit code {p.returncode})" for r, p in enumerate(self._procs) if p.poll() is not None
        }

    def _kill(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            p.wait()
        self._procs = []
        _LIVE.discard(self)
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def close(self) -> None:
        if not self._procs:
            return

        def exited() -> None:
            deadline = time.monotonic() + 3
            for p in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.0, deadline - time.monotonic()))

        self._leave(Verb.STOP, exited)  # this driver started the parties: they stop with it
        self._kill()


class InProcessCluster(Cluster):
    """Three parties as threads of this process, serving this driver as a ``LocalCluster``'s
    processes do: the same service, protocols, checks, bytes and rounds, without starting
    processes (for notebooks, tests and quick experiments).

    No isolation: the parties share this process's memory, so anyone who can read it can
    read every share. The sockets are still ipc in a 0700 directory with PLAIN passwords,
    so no other process can reach them. Arguments as for ``LocalCluster``.
    """

    def __init__(
        self,
        frac_bits: int = DEFAULT_FRAC_BITS,
        timeout: float = 60.0,
        compare_bits: int = DEFAULT_COMPARE_BITS,
        progress: bool | None = None,
        network: str | NetworkProfile | None = None,
        play_network: bool = True,
        device: str = "cpu",
    ) -> None:
        if not 4 <= compare_bits <= 64 or not 0 <= frac_bits <= 30:
            raise ValueError("need 0 <= frac_bits <= 30 and 4 <= compare_bits <= 64")
        profile = network_profile(network)
        self._closed = True  # until the session is open
        self._servers: list[PartyServer] = []
        self._threads: list[threading.Thread] = []
        self._tmpdir = tempfile.mkdtemp(prefix="securetorch-")  # mode 0700
        try:
            config, credentials, driver = _private_parties(
                self._tmpdir, "ipc", frac_bits, compare_bits, timeout, profile, play_network, device
            )
            self._servers = [PartyServer(r, config, credentials[r]) for r in RANKS]
            parties = tuple(
                replace(config.parties[r], control=server.control_address, peer=server.net.address)
                for r, server in enumerate(self._servers)
            )
            for server in self._servers:
                server.config = config.with_parties(parties)
                server.connect_peers()
            self._threads = [
                threading.Thread(target=server.serve, name=f"securetorch-party{r}", daemon=True)
                for r, server in enumerate(self._servers)
            ]
            for thread in self._threads:
                thread.start()
            super().__init__(
                [server.control_address for server in self._servers],
                frac_bits,
                timeout,
                compare_bits,
                progress,
                credential=driver,
                network=profile,
            )
            _LIVE.add(self)
            self._open()
        except BaseException:
            self._stop()
            raise

    def _dead(self) -> dict[int, str]:
        return {r: f"party {r}'s thread ended" for r, t in enumerate(self._threads) if not t.is_alive()}

    def _stop(self) -> None:
        for server in self._servers:
            server.stopping = True
        for r, thread in enumerate(self._threads):
            thread.join(10)
            if thread.is_alive():
                log.warning("party %d did not stop within 10 s", r)
        if not self._threads:  # start-up failed before the parties served: close their sockets here
            for server in self._servers:
                server.close()
        self._servers, self._threads = [], []
        _LIVE.discard(self)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        release_freed_memory()

    def close(self) -> None:
        if not self._servers:
            return
        self._leave(Verb.STOP, lambda: [thread.join(3) for thread in self._threads])
        self._stop()


def run_local(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """One shot: start a LocalCluster, ``run`` fn on it, stop the cluster."""
    with LocalCluster() as cluster:
        return cluster.run(fn, *args, **kwargs)
