"""Authenticated links: who is at the other end of a socket, proven by a credential.

Two mechanisms, both checked by a ZAP handler (ZeroMQ's authentication protocol, RFC 27) in
each party that admits known credentials only and names the endpoint that presented them:

* **CURVE** (Curve25519 key exchange, then XSalsa20-Poly1305 on every message): deployments
  (key pairs from ``securetorch keygen``) and local clusters over tcp (ephemeral key pairs).
  The connecting side must know the server's public key, so an impostor cannot answer.
* **PLAIN** over ipc, for local clusters: a random 256-bit password per endpoint, handed to
  the parties over their stdin; a verifier keeps only SHA-256 digests, so no party can pose
  as another. The socket files sit in a 0700 directory of the driver's; ipc traffic never
  leaves the kernel, so it is not encrypted (CURVE costs ~5x the time per byte here).

Every message then carries the ZAP ``User-Id`` of its sender: a driver's name, or
``party0``..``party2``. The party binds sessions to driver names and peer messages to ranks
through it, never through what a frame claims.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pathlib
import secrets
import stat
import threading
from dataclasses import dataclass, field
from typing import Protocol

import zmq
import zmq.auth
from zmq.utils import z85

DRIVERS_DOMAIN = "securetorch-drivers"
PEERS_DOMAIN = "securetorch-peers"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_VERSION = b"1.0"


class KeyFileError(ValueError):
    """A key file that cannot be read, holds no secret key, or is readable by others."""


def party_identity(rank: int) -> str:
    """The name a party's credential proves: ``party0``, ``party1`` or ``party2``."""
    return f"party{rank}"


def peer_rank(identity: str) -> int | None:
    """The rank named by a party's identity, or None for any other name."""
    if len(identity) == 6 and identity.startswith("party") and identity[5] in "012":
        return int(identity[5])
    return None


# ----------------------------------------------------------------------------- key files

_SECRET_HEADER = (
    "#   ZeroMQ CURVE **Secret** Certificate (securetorch keygen)\n"
    "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
)
_PUBLIC_HEADER = (
    "#   ZeroMQ CURVE Public Certificate (securetorch keygen)\n"
    "#   Exchange securely, or use a secure mechanism to verify the contents\n"
    "#   of this file after exchange. Store public certificates in your home\n"
    "#   directory, in the .curve subdirectory.\n\n"
)


def _write_new(path: pathlib.Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte on (never a wider mode in between)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists: keygen never overwrites a key (remove it first)") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)  # the umask may have narrowed it further; state it exactly


def keygen(directory: str | pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path, str]:
    """Write a CURVE key pair as ``<name>.key`` (public, mode 644) and ``<name>.key_secret``
    (mode 600 from its creation) in ZeroMQ's certificate format; return both paths and the
    Z85 public key."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    keys = f'    public-key = "{public.decode()}"\n'
    _write_new(secret_file, _SECRET_HEADER + f'metadata\ncurve\n{keys}    secret-key = "{secret.decode()}"\n', 0o600)
    _write_new(public_file, _PUBLIC_HEADER + f"metadata\ncurve\n{keys}", 0o644)
    return public_file, secret_file, public.decode()


def load_keypair(path: str | pathlib.Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file written by ``keygen``; refuses a
    file that group or others may read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is open to group or others (mode {stat.S_IMODE(mode):o}); a secret key must be "
            f"readable by its owner only: chmod 600 {path}"
        )
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key: pass the .key_secret file")
    return public, secret


# ----------------------------------------------------------------------------- credentials


class Credential(Protocol):
    """What an endpoint presents, and how a socket is set up with it."""

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        """Configure a binding socket: the ZAP handler checks everyone who connects."""

    def connect(self, sock: zmq.Socket, server: bytes | None) -> None:
        """Configure a connecting socket (``server``: the server's CURVE public key)."""


@dataclass(frozen=True)
class CurveKeys:
    """This endpoint's CURVE key pair (Z85)."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        return cls(*zmq.curve_keypair())

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.zap_domain = domain.encode()

    def connect(self, sock: zmq.Socket, server: bytes | None) -> None:
        if server is None:
            raise ValueError("a CURVE client needs the server's public key")
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = server


@dataclass(frozen=True)
class PlainPassword:
    """A name and a random password (local ipc clusters); verifiers keep ``digest()`` only."""

    name: str
    password: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)

    def digest(self) -> str:
        return password_digest(self.password)

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        sock.plain_server = True
        sock.zap_domain = domain.encode()

    def connect(self, sock: zmq.Socket, server: bytes | None) -> None:
        sock.plain_username = self.name.encode()
        sock.plain_password = self.password.encode()


def password_digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class Admission:
    """Who may connect in one ZAP domain: CURVE public keys (Z85) or PLAIN password digests,
    each mapped to the name the connection then carries as its ``User-Id``."""

    curve: dict[bytes, str] = field(default_factory=dict)
    plain: dict[str, str] = field(default_factory=dict)  # name -> SHA-256 hex of its password

    def admit(self, mechanism: bytes, credentials: list[bytes]) -> str | None:
        if mechanism == b"CURVE" and len(credentials) == 1:
            return self.curve.get(z85.encode(credentials[0]))
        if mechanism == b"PLAIN" and len(credentials) == 2:
            name = credentials[0].decode(errors="replace")
            expected = self.plain.get(name)
            given = hashlib.sha256(credentials[1]).hexdigest()
            if expected is not None and hmac.compare_digest(expected, given):
                return name
        return None


class Authenticator:
    """A ZAP handler in a thread: per domain, admits the credentials its ``Admission`` lists
    and names the connection; refuses everything else (NULL included)."""

    def __init__(self, context: zmq.Context, domains: dict[str, Admission]) -> None:
        self._domains = domains
        self._socket = context.socket(zmq.REP)
        self._socket.linger = 0
        self._socket.bind(_ZAP_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="securetorch-zap", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(100):
                continue
            msg = self._socket.recv_multipart()
            if len(msg) < 6:
                self._socket.send_multipart(
                    [_ZAP_VERSION, msg[1] if len(msg) > 1 else b"", b"400", b"bad request", b"", b""]
                )
                continue
            version, request_id, domain, _address, _identity, mechanism = msg[:6]
            admission = self._domains.get(domain.decode(errors="replace"))
            name = admission.admit(mechanism, msg[6:]) if admission is not None and version == _ZAP_VERSION else None
            if name is None:
                self._socket.send_multipart([_ZAP_VERSION, request_id, b"400", b"not admitted", b"", b""])
            else:
                self._socket.send_multipart([_ZAP_VERSION, request_id, b"200", b"OK", name.encode(), b""])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close(0)


def sender_identity(frame: zmq.Frame) -> str | None:
    """The ZAP ``User-Id`` a received frame carries (None on an unauthenticated socket)."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return value or None
