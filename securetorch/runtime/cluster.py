"""The driver's side: clusters of three parties and running SPMD functions on them.

``Cluster`` talks to three running party processes over ZeroMQ; ``LocalCluster`` starts them
on this machine (tcp over loopback by default, or ipc) and stops them on close, on error and
at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import zmq

from securetorch.comm.security import CurveKeys
from securetorch.comm.stats import CommStats
from securetorch.errors import PartyError
from securetorch.prg import new_key
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS, encode
from securetorch.runtime import costs
from securetorch.runtime.context import current
from securetorch.runtime.deployment import PROTOCOL_VERSION, ClusterConfig
from securetorch.runtime.wire import SeededShare, SharePayload, dumps_callable, loads, map_structure
from securetorch.tensor.shared import decode_as, scale_bits

RANKS = (0, 1, 2)


def _progress_wanted() -> bool:
    """Progress bars on long calls: in a terminal or a notebook, not under pytest or CI, and
    not with SECURETORCH_PROGRESS=0."""
    if os.environ.get("SECURETORCH_PROGRESS", "") == "0" or "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("CI"):
        return False
    in_notebook = "ipykernel" in sys.modules
    return in_notebook or bool(getattr(sys.stderr, "isatty", lambda: False)())


class Private:
    """Marks a driver-held tensor that must enter the parties secret-shared (see ``private``)."""

    def __init__(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        self.tensor = torch.as_tensor(tensor)
        self.dtype = dtype or (self.tensor.dtype if self.tensor.is_floating_point() else torch.get_default_dtype())


def private(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> Private:
    """Pass a tensor to ``Cluster.run`` secretly: the driver splits it into shares and each
    party receives only its pair, as a ``SharedTensor``. Plain arguments are public."""
    return Private(tensor, dtype)


class Cluster:
    """A driver's connection to three party processes (ranks 0, 1, 2) by their control
    addresses. ``LocalCluster`` starts three parties on this machine; ``Cluster.from_config``
    connects to long-lived parties (``securetorch party --config``) over CURVE."""

    def __init__(
        self,
        control_addresses: list[str],
        frac_bits: int = DEFAULT_FRAC_BITS,
        timeout: float = 60.0,
        compare_bits: int = DEFAULT_COMPARE_BITS,
        progress: bool | None = None,
        keys: CurveKeys | None = None,
        party_keys: list[bytes] | None = None,
    ) -> None:
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
            if keys is not None:
                if party_keys is None:
                    raise ValueError("an encrypted cluster needs the parties' public keys")
                keys.client(sock, party_keys[r])
            sock.connect(addr)
            self._sockets.append(sock)
        self._end_message = b"end"  # a session ends; the parties keep running
        self._jobs = itertools.count(1)
        self._broken: str | None = None
        self._closed = False
        self.progress = progress if progress is not None else _progress_wanted()
        self._bar: Any = None
        self._bar_job = 0

    # ------------------------------------------------------------------ plumbing
    def _dead(self) -> dict[int, str]:
        """Parties known to be gone, with why (LocalCluster watches its processes)."""
        return {}

    def _send(self, rank: int, *frames: bytes, block: bool = True) -> None:
        try:
            self._sockets[rank].send_multipart(list(frames), flags=0 if block else zmq.NOBLOCK)
        except zmq.Again as exc:
            raise PartyError(f"party {rank} is not reachable (no connection within {self.timeout:.1f} s)") from exc

    def _poll(self, ranks: list[int], wait: float) -> dict[int, list[bytes]]:
        """Replies that arrive from ``ranks`` within ``wait`` seconds (progress reports are
        shown, not returned)."""
        poller = zmq.Poller()
        for r in ranks:
            poller.register(self._sockets[r], zmq.POLLIN)
        replies = {}
        for sock, _ in poller.poll(wait * 1000):
            frames = sock.recv_multipart()
            if frames[0] == b"progress":
                self._show_progress(*json.loads(frames[1]))
            else:
                replies[self._sockets.index(sock)] = frames
        return replies

    def _show_progress(self, job: int, done: int, total: int) -> None:
        if not self.progress:
            return
        if self._bar is None or self._bar_job != job:
            self._close_bar()
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="secure layers", unit="layer", delay=2.0, leave=False)
            self._bar_job = job
        self._bar.update(max(0, done - self._bar.n))

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _recv_all(self, ranks: list[int], deadline: float) -> dict[int, list[bytes]]:
        replies: dict[int, list[bytes]] = {}
        while len(replies) < len(ranks):
            replies.update(self._poll([r for r in ranks if r not in replies], 0.2))
            dead = {r: why for r, why in self._dead().items() if r not in replies}
            if dead:
                self._broken = "; ".join(dead.values())
                raise PartyError(self._broken)
            if time.monotonic() > deadline and len(replies) < len(ranks):
                missing = sorted(set(ranks) - set(replies))
                raise PartyError(f"no reply from parties {missing} within {self.timeout:.1f} s")
        return replies

    def _usable(self) -> None:
        if self._closed:
            raise PartyError("the cluster is closed")
        if self._broken:
            raise PartyError(f"the cluster is down: {self._broken}")

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str], key: str | os.PathLike[str] | None = None, progress: bool | None = None
    ) -> Cluster:
        """Connect to the three parties a cluster file names (see ``runtime.deployment``) and
        start a session: every party checks the protocol version, the fixed-point setting and
        its rank against the driver's; with CURVE keys in the file, ``key`` is this driver's
        ``.key_secret`` file (``securetorch keygen``), and its public key must be listed under
        [drivers]. ``close()`` ends the session; the parties keep serving."""
        config = ClusterConfig.load(path)
        keys = config.endpoint_keys(key, "pass key=<this driver's .key_secret file>")
        cluster = cls(
            [p.control for p in config.parties],
            config.frac_bits,
            config.timeout,
            config.compare_bits,
            progress,
            keys=keys,
            party_keys=[p.public_key for p in config.parties] if keys else None,  # type: ignore[misc]
        )
        try:
            cluster._setup(None)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _setup(self, peers: dict[int, str] | None) -> None:
        """Start the session (parties with a cluster file know their peers: ``peers=None``)
        under a random session id, so that no party confuses it with an earlier one."""
        session = secrets.randbits(31) | 1
        for r in RANKS:
            config = {
                "version": PROTOCOL_VERSION,
                "session": session,
                "rank": r,
                "peers": peers,
                "frac_bits": self.frac_bits,
                "compare_bits": self.compare_bits,
                "timeout": self.timeout,
            }
            self._send(r, b"setup", json.dumps(config).encode())
        try:
            replies = self._recv_all(list(RANKS), time.monotonic() + self.timeout + 10)
        except PartyError as exc:
            raise PartyError(
                f"{exc}: are the parties running at these addresses, and is this driver's public key "
                "listed under [drivers] in their cluster file?"
            ) from None
        errors = {r: loads(f[1])[0] for r, f in replies.items() if f[0] == b"err"}
        if errors:
            raise PartyError("; ".join(str(e) for e in errors.values()), {r: str(e) for r, e in errors.items()})
        for r, frames in replies.items():
            if frames[0] != b"ready":
                raise PartyError(f"party {r} failed to set up")

    # ------------------------------------------------------------------ secrets
    def _split(self, value: Private) -> list[SharePayload]:
        """Replicated shares of a driver-held tensor. x_0 and x_1 are fresh AES streams, so they
        travel as 16-byte keys; only x_2 = x - x_0 - x_1 travels in full (to P_1 and P_2)."""
        x = encode(value.tensor, scale_bits(value.dtype, self.frac_bits))
        shape = tuple(x.shape)
        seeded = [SeededShare(new_key(), shape), SeededShare(new_key(), shape)]
        parts: list[torch.Tensor | SeededShare] = [*seeded, x - seeded[0].expand() - seeded[1].expand()]
        return [SharePayload(parts[r], parts[(r + 1) % 3], value.dtype) for r in RANKS]

    def _reconstruct(self, results: list[Any]) -> list[Any]:
        """Replace every returned share pair by the plaintext, rebuilt from the three parties'
        pairs (and checked: P_r's second share must equal P_{r+1}'s first)."""
        pairs: list[list[SharePayload]] = [[], [], []]
        for r in RANKS:
            map_structure(results[r], lambda v, r=r: pairs[r].append(v) if isinstance(v, SharePayload) else None)
        if len({len(p) for p in pairs}) != 1:
            raise PartyError("the parties returned different numbers of secret outputs")
        plain = []
        for trio in zip(*pairs, strict=True):
            for r in RANKS:
                if not torch.equal(trio[r].second, trio[(r + 1) % 3].first):
                    raise PartyError("the parties returned inconsistent shares")
            total = trio[0].first + trio[1].first + trio[2].first
            plain.append(decode_as(total, self.frac_bits, trio[0].dtype))

        def substitute(results_r: Any) -> Any:
            queue = iter(plain)
            return map_structure(results_r, lambda v: next(queue) if isinstance(v, SharePayload) else v)

        return [substitute(results[r]) for r in RANKS]

    # ------------------------------------------------------------------ public API
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` inside each party (SPMD); return the 3 results in rank order.

        ``private(t)`` arguments arrive secret-shared; other arguments are public. A
        ``SharedTensor`` in a result comes back to the driver only: each party sends its
        share pair and the driver puts the reconstructed plaintext in its place.
        An exception in any party is re-raised here with that party's traceback.
        """
        self._usable()
        job = next(self._jobs)
        secrets_: dict[int, list[SharePayload]] = {}

        def split(value: Any) -> Any:
            if isinstance(value, Private):
                secrets_[id(value)] = self._split(value)
            return value

        map_structure((args, kwargs), split)
        for r in RANKS:

            def for_rank(value: Any, r: int = r) -> Any:
                return secrets_[id(value)][r] if isinstance(value, Private) else value

            payload = dumps_callable(fn, map_structure((args, kwargs), for_rank))
            self._send(r, b"run", str(job).encode(), payload)
        del payload  # the shares are on their way: do not hold them while the parties work
        secrets_.clear()
        try:
            replies = self._collect(job)
        finally:
            self._close_bar()
        return self._reconstruct([loads(replies[r][1]) for r in RANKS])

    def _collect(self, job: int) -> dict[int, list[bytes]]:
        """Wait for the three replies to ``job``. When a party fails or dies, the others are
        told to abandon the job (they raise PartyError at once), and the failure is raised."""
        replies: dict[int, list[bytes]] = {}
        dead: dict[int, str] = {}
        reason: str | None = None
        deadline = float("inf")
        while len(replies) + len(dead) < 3:
            pending = [r for r in RANKS if r not in replies and r not in dead]
            got = self._poll(pending, 0.2)
            replies.update(got)
            new_dead = {r: why for r, why in self._dead().items() if r not in replies and r not in dead}
            dead.update(new_dead)
            failed = [r for r, f in got.items() if f[0] == b"err"]
            if reason is None and (failed or new_dead):
                reason = "; ".join(new_dead.values()) or f"party {failed[0]} failed"
                for r in RANKS:
                    if r not in replies and r not in dead:
                        self._send(r, b"abort", str(job).encode(), reason.encode())
                deadline = time.monotonic() + self.timeout + 5
            if time.monotonic() > deadline:
                missing = [r for r in RANKS if r not in replies and r not in dead]
                raise PartyError(f"parties {missing} did not abandon job {job} within {self.timeout + 5:.1f} s")
        errors = {r: loads(f[1]) for r, f in replies.items() if f[0] == b"err"}
        if dead:
            self._broken = "; ".join(dead.values())
            reports = {r: f"{type(e).__name__}: {e}" for r, (e, _) in errors.items()}
            raise PartyError(
                "; ".join([self._broken, *(f"party {r}: {m}" for r, m in sorted(reports.items()))]), reports
            )
        if not errors:
            return replies
        user = {r: e for r, e in errors.items() if not isinstance(e[0], PartyError)}
        if not user:
            raise PartyError(
                "; ".join(str(e) for e, _ in errors.values()),
                {r: f"{type(e).__name__}: {e}" for r, (e, _) in errors.items()},
            )
        rank = min(user)
        exc, tb = user[rank]
        exc.add_note(f"raised in party {rank}:\n{tb}")
        raise exc

    def _query(self, kind: bytes) -> list[CommStats]:
        self._usable()
        for r in RANKS:
            self._send(r, kind)
        replies = self._recv_all(list(RANKS), time.monotonic() + self.timeout)
        return [CommStats(**json.loads(replies[r][1])) for r in RANKS]

    def stats(self) -> list[CommStats]:
        """The three parties' communication counters, in rank order."""
        return self._query(b"stats")

    def reset_stats(self) -> None:
        self._query(b"reset_stats")

    @contextlib.contextmanager
    def cost_report(self) -> Iterator[costs.CostReport]:
        """Record what the secure calls made inside the ``with`` block cost, per module and op::

            with cluster.cost_report() as report:
                secure_model(**inputs)
            pandas.DataFrame(report.by("layer", "op"))

        The report fills in when the block ends (see ``costs.CostReport``)."""
        report = costs.CostReport()
        self.run(_start_costs)
        try:
            yield report
        finally:
            if not self._closed:
                report.entries[:] = costs.combine(self.run(_stop_costs)).entries

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for r in RANKS:
            try:
                self._send(r, self._end_message, block=False)
            except (zmq.ZMQError, PartyError):
                pass  # a party that cannot be reached has no session to end
        for sock in self._sockets:
            sock.close(0)
        self._zmq.term()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_LIVE: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


def _start_costs() -> None:
    costs.start(current().net)


def _stop_costs() -> list[dict[str, Any]]:
    return costs.stop()


@atexit.register
def _close_all() -> None:
    for cluster in list(_LIVE):
        cluster.close()


class LocalCluster(Cluster):
    """Three party processes on this machine, connected over tcp loopback (or ipc).

    ``frac_bits``: fixed-point fractional bits f (default 18); ``compare_bits``: ring bits l
    that comparisons look at (default 44: exact for reals below 2^(l-1-f) = 2^25);
    ``timeout``: seconds a party waits for a peer before raising PartyError;
    ``threads``: torch threads per party (default cores / 3); ``transport``: "tcp" or "ipc";
    ``progress``: a per-layer progress bar on calls longer than 2 s (default: in a terminal
    or notebook, not under pytest).
    """

    def __init__(
        self,
        frac_bits: int = DEFAULT_FRAC_BITS,
        timeout: float = 60.0,
        threads: int = 0,
        transport: Literal["tcp", "ipc"] = "tcp",
        compare_bits: int = DEFAULT_COMPARE_BITS,
        progress: bool | None = None,
    ) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._tmpdir = tempfile.mkdtemp(prefix="securetorch-") if transport == "ipc" else None
        zctx = zmq.Context.instance()
        announce = zctx.socket(zmq.PULL)
        announce.setsockopt(zmq.LINGER, 0)
        port = announce.bind_to_random_port("tcp://127.0.0.1")
        # The parties import what the driver can import (test modules, local packages).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            for r in RANKS:
                if transport == "ipc":
                    control, peer = (f"ipc://{self._tmpdir}/p{r}-{kind}" for kind in ("control", "peer"))
                else:
                    control = peer = "tcp://127.0.0.1:*"
                cmd = [
                    sys.executable, "-m", "securetorch.runtime.party", "--rank", str(r),
                    "--control", control, "--peer", peer, "--timeout", str(timeout),
                    "--threads", str(threads), "--announce", f"tcp://127.0.0.1:{port}", "--die-with-parent",
                ]  # fmt: skip
                self._procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env))
            found: dict[int, dict[str, Any]] = {}
            deadline = time.monotonic() + 120
            while len(found) < 3:
                if announce.poll(200):
                    msg = announce.recv_json()
                    found[int(msg["rank"])] = msg
                for r, p in enumerate(self._procs):
                    if p.poll() is not None:
                        raise PartyError(f"party {r} exited during start-up (code {p.returncode})")
                if time.monotonic() > deadline:
                    raise PartyError("the parties did not start within 120 s")
            super().__init__([found[r]["control"] for r in RANKS], frac_bits, timeout, compare_bits, progress)
            self._end_message = b"stop"  # this driver started the parties: they stop with it
            _LIVE.add(self)
            self._setup({r: found[r]["peer"] for r in RANKS})
        except BaseException:
            self._kill()
            raise
        finally:
            announce.close(0)

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

    def close(self) -> None:
        if getattr(self, "_closed", True) and not self._procs:
            return
        if not getattr(self, "_closed", True):
            super().close()
        deadline = time.monotonic() + 3
        for p in self._procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._kill()
        self._procs = []
        _LIVE.discard(self)
        if self._tmpdir:
            import shutil

            shutil.rmtree(self._tmpdir, ignore_errors=True)


def run_local(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """One shot: start a LocalCluster, ``run`` fn on it, stop the cluster."""
    with LocalCluster() as cluster:
        return cluster.run(fn, *args, **kwargs)
