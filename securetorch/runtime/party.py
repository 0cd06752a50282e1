"""The party process: serves the driver's jobs and runs protocols with its two peers.

Run as ``python -m securetorch.runtime.party --rank R ...`` (``LocalCluster`` does this).
The party binds a control socket (ROUTER) for drivers and a PULL socket for its peers; on
``setup`` it connects to its peers and agrees on PRG keys (ABY3 §2.2: P_i draws k_i and sends
it to P_{i-1}; each party contributes to one key common to all three).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import signal
import sys
import traceback
from typing import Any

import torch
import zmq

from securetorch.comm.network import SESSION_SHIFT, PeerNetwork, bind_any
from securetorch.comm.security import DRIVERS_DOMAIN, CurveKeys, start_authenticator
from securetorch.comm.stats import CommStats
from securetorch.errors import PartyError
from securetorch.prg import new_key
from securetorch.ring import DEFAULT_FRAC_BITS
from securetorch.runtime import context
from securetorch.runtime.context import PartyContext, PartyKeys
from securetorch.runtime.deployment import PROTOCOL_VERSION, ClusterConfig, ConfigError, settings_mismatch
from securetorch.runtime.wire import SharePayload, dumps, loads, map_structure


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent (the driver) exits, so no party is orphaned."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _to_shared(value: Any) -> Any:
    from securetorch.tensor import SharedTensor

    if isinstance(value, SharePayload):
        return SharedTensor(value.tensors(), value.dtype)
    return value


def _from_shared(value: Any) -> Any:
    from securetorch.tensor import SharedTensor

    if isinstance(value, SharedTensor):
        first, second = value.shares
        return SharePayload(first.contiguous(), second.contiguous(), value.dtype)
    return value


class PartyServer:
    """One party: serves drivers on its control socket, one session (driver) at a time.

    With a ``config`` (``securetorch party --config``) the party is a long-lived service: its
    addresses, its peers and the fixed-point setting come from the cluster file, every
    socket runs CURVE with ``keys``, a driver's settings must match the file, and secured
    models stay in the party's store across driver sessions. Without one (``LocalCluster``)
    the driver tells the party its peers and settings.
    """

    def __init__(
        self,
        rank: int,
        control_address: str,
        peer_address: str,
        timeout: float,
        config: ClusterConfig | None = None,
        keys: CurveKeys | None = None,
    ) -> None:
        self.rank = rank
        self.timeout = timeout
        self.config = config
        self.zmq = zmq.Context()
        self.auth = None
        if keys is not None and config is not None:
            others = tuple(p.public_key for p in config.parties if p.rank != rank and p.public_key)
            self.auth = start_authenticator(self.zmq, config.driver_keys, others)
        self.control = self.zmq.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.server(self.control, DRIVERS_DOMAIN)
        self.control_address = bind_any(self.control, control_address)
        self.net = PeerNetwork(
            rank, self.zmq, peer_address, timeout, self._on_control_during_job, self.control, curve=keys
        )
        self.ctx: PartyContext | None = None
        self.store: dict[str, object] = {}  # secured models and KV caches, across sessions
        self.session = 0
        self.job: int | None = None
        self._deferred: list[list[bytes]] = []

    # ------------------------------------------------------------------ control
    def _reply(self, ident: bytes, kind: bytes, payload: bytes = b"") -> None:
        self.control.send_multipart([ident, kind, payload])

    def _on_control_during_job(self) -> None:
        frames = self.control.recv_multipart()
        if len(frames) < 2:
            _log(f"party {self.rank}: dropped a control message of {len(frames)} frame(s)")
            return
        if frames[1] == b"abort" and self.job is not None and int(frames[2]) == self.job:
            reason = frames[3].decode(errors="replace") if len(frames) > 3 else "the driver abandoned it"
            raise PartyError(f"party {self.rank}: job {self.job} abandoned: {reason}")
        if frames[1] != b"abort":
            self._deferred.append(frames)

    def _check_driver(self, config: dict[str, Any]) -> str | None:
        """Why this driver's session cannot start here, or None."""
        if int(config.get("rank", self.rank)) != self.rank:
            return f"the driver expects rank {config['rank']} at this address, but this is party {self.rank}"
        if self.config is not None:
            return settings_mismatch(self.config.settings(), config)
        if int(config.get("version", PROTOCOL_VERSION)) != PROTOCOL_VERSION:
            return settings_mismatch({"version": PROTOCOL_VERSION}, config)
        return None

    def _setup(self, ident: bytes, config: dict[str, Any]) -> None:
        """Start a driver's session: check its settings, connect to the peers (once), and
        agree on fresh PRG keys with them."""
        problem = self._check_driver(config)
        if problem is not None:
            _log(f"party {self.rank}: refused a driver: {problem}")
            self._reply(ident, b"err", dumps((PartyError(f"party {self.rank}: {problem}"), "")))
            return
        if self.config is None:
            self.net.timeout = float(config.get("timeout", self.timeout))
        if not self.net.connected:
            if self.config is not None:
                peers = {p.rank: p.peer for p in self.config.parties}
                keys = {p.rank: p.public_key for p in self.config.parties if p.public_key is not None}
                self.net.connect(peers, keys or None)
            else:
                self.net.connect({int(k): v for k, v in config["peers"].items()})
        self.session = int(config["session"])
        prev, nxt = (self.rank - 1) % 3, (self.rank + 1) % 3
        own_key, common_part = new_key(), new_key()

        def as_tensor(key: bytes) -> torch.Tensor:
            return torch.frombuffer(bytearray(key), dtype=torch.uint8)

        self.net.begin_session(self.session)
        got = self.net.exchange(
            {prev: [as_tensor(own_key), as_tensor(common_part)], nxt: [as_tensor(common_part)]}, [nxt, prev]
        )
        next_key = bytes(got[nxt][0].numpy())
        parts = {self.rank: common_part, nxt: bytes(got[nxt][1].numpy()), prev: bytes(got[prev][0].numpy())}
        common = hashlib.sha256(b"".join(parts[r] for r in range(3))).digest()[:16]
        keys = PartyKeys(prev=own_key, next=next_key, common=common, private=new_key())
        self.ctx = PartyContext(self.rank, int(config["frac_bits"]), int(config["compare_bits"]), self.net, keys)
        self.ctx.store = self.store
        self.net.stats = CommStats()
        context.set_current(self.ctx)
        self._reply(ident, b"ready", json.dumps({"rank": self.rank}).encode())

    def _run(self, ident: bytes, job: int, frames: list[bytes]) -> None:
        """Run the job in ``frames[3]``; the payload frame is taken out of the list so that its
        bytes (a model's weight shares can be gigabytes) are freed once unpickled."""
        payload = frames.pop(3)
        self.job = job
        self.ctx.start_job((self.session << SESSION_SHIFT) | job)

        def progress(done: int, total: int) -> None:
            self._reply(ident, b"progress", json.dumps([job, done, total]).encode())

        self.ctx.progress = progress if self.rank == 0 else None
        try:
            fn, (args, kwargs) = loads(payload)
            del payload
            args, kwargs = map_structure((args, kwargs), _to_shared)
            result = fn(*args, **kwargs)
            reply = (b"ok", dumps(map_structure(result, _from_shared)))
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            tb = traceback.format_exc()
            try:
                blob = dumps((exc, tb))
            except Exception:
                blob = dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), tb))
            reply = (b"err", blob)
        finally:
            self.job = None
            self.ctx.progress = None
        self._reply(ident, *reply)

    def _handle_safely(self, frames: list[bytes]) -> bool:
        """``_handle``, except that a malformed request (too few frames, a job number that
        is not a number, a broken setup document) is logged and dropped: never fatal."""
        try:
            return self._handle(frames)
        except (IndexError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            _log(f"party {self.rank}: dropped a malformed control message ({type(exc).__name__}: {exc})")
            return True

    def _handle(self, frames: list[bytes]) -> bool:
        ident, kind = frames[0], frames[1]
        body = frames[2] if len(frames) > 2 else b""
        if kind == b"setup":
            self._setup(ident, json.loads(body))
        elif kind == b"run":
            if self.ctx is None:
                self._reply(ident, b"err", dumps((RuntimeError("party not set up"), "")))
            else:
                self._run(ident, int(frames[2]), frames)
        elif kind == b"stats":
            self._reply(ident, b"stats", json.dumps(self.net.stats.as_dict()).encode())
        elif kind == b"reset_stats":
            self.net.stats = CommStats()
            self._reply(ident, b"stats", json.dumps(self.net.stats.as_dict()).encode())
        elif kind == b"end":  # the driver's session is over; the party keeps serving
            self.ctx = None
            context.set_current(None)
            self._reply(ident, b"bye")
        elif kind == b"stop":
            if self.config is not None:  # a service is stopped by its operator, not by a driver
                self._reply(
                    ident,
                    b"err",
                    dumps((PartyError(f"party {self.rank}: a service party is not stopped by drivers"), "")),
                )
                return True
            self._reply(ident, b"bye")
            return False
        # b"abort" outside a job: nothing to abort
        return True

    def serve(self) -> None:
        parent = os.getppid()
        running = True
        while running:
            while self._deferred and running:
                running = self._handle_safely(self._deferred.pop(0))
            if not running:
                break
            if self.control.poll(1000) == 0:
                if self.config is None and os.getppid() != parent and parent != 1:
                    break  # the driver that started us is gone
                continue
            running = self._handle_safely(self.control.recv_multipart())
        self.close()

    def close(self) -> None:
        self.net.close()
        self.control.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.zmq.term()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a securetorch party process")
    parser.add_argument("--rank", type=int, required=True, choices=[0, 1, 2])
    parser.add_argument("--control", default="tcp://127.0.0.1:*", help="address for drivers")
    parser.add_argument("--peer", default="tcp://127.0.0.1:*", help="address for the other parties")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a peer")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: cores / 3)")
    parser.add_argument("--announce", default=None, help="PUSH address to report bound endpoints to")
    parser.add_argument("--die-with-parent", action="store_true")
    parser.add_argument("--config", default=None, help="cluster file (TOML): run as a long-lived service")
    parser.add_argument("--key", default=None, help="this party's CURVE secret key file (securetorch keygen)")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a cluster file without keys (unencrypted links, tests only)"
    )
    parser.add_argument(
        "--shares", action="append", default=[], help="a shares file to serve (puma.save_shares); repeatable"
    )
    opts = parser.parse_args(argv)
    config = keys = None
    if opts.config:
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
        me = config.parties[opts.rank]
        opts.control, opts.peer, opts.timeout = me.control, me.peer, config.timeout
    if opts.die_with_parent:
        _die_with_parent()
    torch.set_num_threads(opts.threads or max(1, (os.cpu_count() or 3) // 3))
    import securetorch.tensor  # noqa: F401 - registers the op tables
    from securetorch.ring import resolve_kernel

    resolve_kernel()  # time the ring matmul kernels now, not during the first product

    server = PartyServer(opts.rank, opts.control, opts.peer, opts.timeout, config, keys)
    if opts.shares:
        from securetorch.secure import load_shares_file

        frac_bits = config.frac_bits if config is not None else DEFAULT_FRAC_BITS
        for path in opts.shares:
            try:
                name, state = load_shares_file(path, opts.rank, frac_bits)
            except (OSError, ValueError, KeyError) as exc:
                server.close()
                parser.exit(2, f"securetorch party: cannot serve {path}: {exc}\n")
            server.store[name] = state
            print(f"securetorch party {opts.rank}: serving model {name!r} from {path}", flush=True)
    if config is not None:
        print(f"securetorch party {opts.rank}: serving drivers on {server.control_address}, "
              f"peers on {server.net.address}{' (CURVE)' if keys else ' (unencrypted)'}", flush=True)  # fmt: skip
    if opts.announce:
        push = server.zmq.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(opts.announce)
        push.send_json({"rank": opts.rank, "control": server.control_address, "peer": server.net.address})
        push.close()
    server.serve()


if __name__ == "__main__":
    main()
