"""Deployment settings: the cluster file, CURVE key pairs, and the session handshake.

A cluster file (TOML) names each party's addresses and CURVE public key, the drivers that
may connect, and the fixed-point setting every party and driver must share::

    [settings]
    frac_bits = 18
    compare_bits = 44
    timeout = 60.0

    [[parties]]
    rank = 0
    control = "tcp://10.0.0.1:7100"   # drivers connect here
    peer = "tcp://10.0.0.1:7101"      # the other parties connect here
    public_key = "Z85 public key of party 0 (securetorch keygen)"
    # ... ranks 1 and 2

    [drivers]
    public_keys = ["Z85 public key of each driver allowed to connect"]

Every socket then runs ZeroMQ CURVE (``comm/security.py``): a party accepts drivers whose
keys the file lists on its control socket and only the two other parties on its peer
socket; anyone else is refused during the handshake. A driver's session then starts with a
check of the protocol version, the fixed-point setting and the ranks (``settings_mismatch``).
"""

from __future__ import annotations

import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from securetorch.comm.security import CurveKeys, KeyFileError, load_keypair
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS

PROTOCOL_VERSION = 1
"""Bumped whenever party-to-party or driver-to-party messages change meaning."""


class ConfigError(ValueError):
    """A cluster file or key file that cannot be used, with what is wrong."""


@dataclass(frozen=True)
class PartyAddress:
    rank: int
    control: str
    peer: str
    public_key: bytes | None


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed cluster file."""

    parties: tuple[PartyAddress, PartyAddress, PartyAddress]
    frac_bits: int = DEFAULT_FRAC_BITS
    compare_bits: int = DEFAULT_COMPARE_BITS
    timeout: float = 60.0
    driver_keys: tuple[bytes, ...] = field(default_factory=tuple)

    @property
    def encrypted(self) -> bool:
        return all(p.public_key is not None for p in self.parties)

    def endpoint_keys(self, key: str | pathlib.Path | None, how_to_pass: str) -> CurveKeys | None:
        """This endpoint's key pair from its ``.key_secret`` file when the cluster is encrypted
        (None when it is not); a missing or unreadable file is a ``ConfigError``."""
        if not self.encrypted:
            return None
        if key is None:
            raise ConfigError(f"the cluster file uses CURVE keys: {how_to_pass}")
        try:
            return CurveKeys(*load_keypair(key))
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from exc

    def settings(self) -> dict[str, Any]:
        """What the handshake compares between a driver and each party."""
        return {"version": PROTOCOL_VERSION, "frac_bits": self.frac_bits, "compare_bits": self.compare_bits}

    @classmethod
    def load(cls, path: str | pathlib.Path) -> ClusterConfig:
        path = pathlib.Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read cluster file {path}: {exc}") from exc
        settings = doc.get("settings", {})
        entries = doc.get("parties", [])
        ranks = sorted(int(e.get("rank", -1)) for e in entries)
        if ranks != [0, 1, 2]:
            raise ConfigError(f"{path}: need exactly three [[parties]] with ranks 0, 1, 2 (found ranks {ranks})")
        parties = []
        for entry in sorted(entries, key=lambda e: int(e["rank"])):
            for name in ("control", "peer"):
                address = entry.get(name, "")
                if not isinstance(address, str) or not address.startswith(("tcp://", "ipc://")):
                    raise ConfigError(f"{path}: party {entry['rank']}: {name} must be a tcp:// or ipc:// address")
            key = entry.get("public_key")
            parties.append(
                PartyAddress(int(entry["rank"]), entry["control"], entry["peer"], _key(key, path) if key else None)
            )
        if len({p.public_key is None for p in parties}) != 1:
            raise ConfigError(f"{path}: give every party a public_key, or none (unencrypted, for tests only)")
        driver_keys = tuple(_key(k, path) for k in doc.get("drivers", {}).get("public_keys", []))
        config = cls(
            parties=(parties[0], parties[1], parties[2]),
            frac_bits=int(settings.get("frac_bits", DEFAULT_FRAC_BITS)),
            compare_bits=int(settings.get("compare_bits", DEFAULT_COMPARE_BITS)),
            timeout=float(settings.get("timeout", 60.0)),
            driver_keys=driver_keys,
        )
        if config.encrypted and not driver_keys:
            raise ConfigError(f"{path}: [drivers] public_keys is empty: no driver could connect")
        return config


def _key(value: Any, path: pathlib.Path) -> bytes:
    key = str(value).encode()
    if len(key) != 40:
        raise ConfigError(f"{path}: {value!r} is not a Z85 CURVE public key (40 characters)")
    return key


def settings_mismatch(party: dict[str, Any], driver: dict[str, Any]) -> str | None:
    """The first setting that differs, as a sentence, or None."""
    for name in ("version", "frac_bits", "compare_bits"):
        if party.get(name) != driver.get(name):
            what = "protocol version" if name == "version" else f"fixed-point setting {name}"
            return f"{what} differs: the party has {party.get(name)}, the driver has {driver.get(name)}"
    return None
