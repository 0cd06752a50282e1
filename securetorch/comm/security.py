"""Encrypted, authenticated links: ZeroMQ CURVE (Curve25519 key exchange, then
XSalsa20-Poly1305 on every message) with a ZAP handler that admits known public keys only.

``keygen`` writes a key pair in ZeroMQ's certificate format; ``CurveKeys`` configures a
socket as a CURVE server (binding side) or client (connecting side, which must know the
server's public key); ``start_authenticator`` admits drivers' keys on the control sockets
and the other parties' keys on the peer sockets.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth

DRIVERS_DOMAIN = "securetorch-drivers"
PEERS_DOMAIN = "securetorch-peers"


class KeyFileError(ValueError):
    """A key file that cannot be read or holds no secret key."""


def keygen(directory: str | pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path, str]:
    """Write a CURVE key pair as ``<name>.key`` (public) and ``<name>.key_secret`` (secret,
    mode 600) in ZeroMQ's certificate format; return both paths and the Z85 public key."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = (pathlib.Path(p) for p in zmq.auth.create_certificates(str(directory), name))
    secret_file.chmod(0o600)
    public, _ = zmq.auth.load_certificate(str(public_file))
    return public_file, secret_file, public.decode()


def load_keypair(path: str | pathlib.Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file written by ``keygen``."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key: pass the .key_secret file")
    return public, secret


@dataclass(frozen=True)
class CurveKeys:
    """This endpoint's key pair (Z85), which it sets on its sockets."""

    public: bytes
    secret: bytes

    def server(self, sock: zmq.Socket, domain: str) -> None:
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.zap_domain = domain.encode()

    def client(self, sock: zmq.Socket, server_key: bytes) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = server_key


class _Allowed:
    """ZAP credentials provider: a fixed set of Z85 public keys."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(context: zmq.Context, drivers: tuple[bytes, ...], peers: tuple[bytes, ...]) -> Any:
    """A ZAP handler in a thread: drivers' keys on the control socket, the peers' on the peer
    socket; every other key is refused."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(DRIVERS_DOMAIN, _Allowed(drivers))
    auth.configure_curve_callback(PEERS_DOMAIN, _Allowed(peers))
    return auth
