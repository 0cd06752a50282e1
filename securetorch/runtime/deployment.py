"""Deployment settings: the cluster file, driver roles, and the session handshake.

A cluster file (TOML) names each party's addresses and CURVE public key, the drivers that
may connect with their roles, and the fixed-point setting every party and driver shares::

    [settings]
    frac_bits = 18
    compare_bits = 44
    timeout = 60.0

    [[parties]]
    rank = 0
    control = "tcp://10.0.0.1:7100"   # drivers connect here
    peer = "tcp://10.0.0.1:7101"      # the other parties connect here
    public_key = "Z85 public key of party 0 (securetorch keygen)"
    shares_dir = "/var/lib/securetorch"   # optional: where this party saves and loads shares
    checkpoints_dir = "/srv/models"       # optional: public-weight checkpoints this party opens
    device = "cuda:0"                     # optional: where this party computes (default "cpu")
    # ... ranks 1 and 2

    [[drivers]]
    name = "alice"
    public_key = "Z85 public key of alice's driver"
    role = "owner"      # owner | client | admin

Roles: an **owner** installs, replaces, saves and deletes its own models and names the
clients that may call each; a **client** describes and calls the models that name it; an
**admin** may also run shipped functions (``Cluster.run``) and so can read every secret.

Every socket runs ZeroMQ CURVE (``comm/security.py``): a party admits the listed drivers on
its control socket (each connection then carries the driver's name) and only the two other
parties on its peer socket. A driver's session starts with a check of the protocol version,
the fixed-point setting and the ranks (``settings_mismatch``).

A ``LocalCluster`` builds the same configuration in memory (``ClusterConfig.local``) and
hands it to its parties over their stdin (``to_json``/``from_json``).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from dataclasses import dataclass, field, replace
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import torch

from securetorch.comm.network import DEFAULT_MAX_MESSAGE_BYTES
from securetorch.comm.profile import NetworkProfile, network_profile
from securetorch.comm.security import CurveKeys, KeyFileError, load_keypair
from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS

PROTOCOL_VERSION = 2
"""Bumped whenever party-to-party or driver-to-party messages change meaning."""

ROLES = ("owner", "client", "admin")
LOCAL_DRIVER = "local"
"""The name of the driver that started a ``LocalCluster`` (its role: admin)."""

_NEW_DRIVERS_FORM = """[[drivers]]
name = "alice"
public_key = "<alice's public key>"
role = "owner"      # owner | client | admin"""


class ConfigError(ValueError):
    """A cluster file or key file that cannot be used, with what is wrong."""


@dataclass(frozen=True)
class PartyAddress:
    rank: int
    control: str
    peer: str
    public_key: bytes | None
    shares_dir: str | None = None
    checkpoints_dir: str | None = None
    device: str = "cpu"  # where this party computes (its own choice: the wire carries bytes)


@dataclass(frozen=True)
class DriverEntry:
    name: str
    public_key: bytes | None
    role: str


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed cluster file (or a local cluster's configuration)."""

    parties: tuple[PartyAddress, PartyAddress, PartyAddress]
    drivers: tuple[DriverEntry, ...] = ()
    frac_bits: int = DEFAULT_FRAC_BITS
    compare_bits: int = DEFAULT_COMPARE_BITS
    timeout: float = 60.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    password_digests: dict[str, str] = field(default_factory=dict)  # local ipc clusters (PLAIN)
    local: bool = False
    network: NetworkProfile | None = None  # declared; a local cluster's parties play it
    play_network: bool = True  # a local cluster's parties play ``network`` (else: only pick for it)

    @property
    def encrypted(self) -> bool:
        return all(p.public_key is not None for p in self.parties)

    @property
    def authenticated(self) -> bool:
        return self.encrypted or bool(self.password_digests)

    def driver(self, name: str) -> DriverEntry | None:
        return next((d for d in self.drivers if d.name == name), None)

    def endpoint_keys(self, key: str | pathlib.Path | None, how_to_pass: str) -> CurveKeys | None:
        """This endpoint's key pair from its ``.key_secret`` file when the cluster is encrypted
        (None when it is not); a missing, unreadable or world-readable file is a ``ConfigError``."""
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

    # ------------------------------------------------------------------ local clusters

    def with_parties(self, parties: tuple[PartyAddress, PartyAddress, PartyAddress]) -> ClusterConfig:
        return replace(self, parties=parties)

    def to_json(self) -> str:
        doc = {
            "parties": [
                {
                    "rank": p.rank,
                    "control": p.control,
                    "peer": p.peer,
                    "public_key": _text(p.public_key),
                    "shares_dir": p.shares_dir,
                    "checkpoints_dir": p.checkpoints_dir,
                    "device": p.device,
                }
                for p in self.parties
            ],
            "drivers": [{"name": d.name, "public_key": _text(d.public_key), "role": d.role} for d in self.drivers],
            "frac_bits": self.frac_bits,
            "compare_bits": self.compare_bits,
            "timeout": self.timeout,
            "max_message_bytes": self.max_message_bytes,
            "password_digests": self.password_digests,
            "local": self.local,
            "network": None if self.network is None else self.network.to_dict(),
            "play_network": self.play_network,
        }
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> ClusterConfig:
        doc = json.loads(text)
        parties = [PartyAddress(**{**p, "public_key": _bytes(p["public_key"])}) for p in doc["parties"]]
        drivers = tuple(DriverEntry(d["name"], _bytes(d["public_key"]), d["role"]) for d in doc["drivers"])
        return cls(
            parties=(parties[0], parties[1], parties[2]),
            drivers=drivers,
            frac_bits=int(doc["frac_bits"]),
            compare_bits=int(doc["compare_bits"]),
            timeout=float(doc["timeout"]),
            max_message_bytes=int(doc["max_message_bytes"]),
            password_digests=dict(doc["password_digests"]),
            local=bool(doc["local"]),
            network=network_profile(doc.get("network")),
            play_network=bool(doc.get("play_network", True)),
        )

    # ------------------------------------------------------------------ cluster files

    @classmethod
    def load(cls, path: str | pathlib.Path) -> ClusterConfig:
        path = pathlib.Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read cluster file {path}: {exc}") from exc
        return _parse(doc, str(path))


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode()


def _bytes(key: str | None) -> bytes | None:
    return None if key is None else key.encode()


class _Fields:
    """Typed access to one TOML table, with errors that name the file, table and field."""

    def __init__(self, source: str, where: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where} must be a table")
        self.source, self.where, self.table = source, where, table

    def error(self, name: str, expected: str) -> ConfigError:
        got = self.table.get(name, "nothing")
        return ConfigError(f"{self.source}: {self.where} {name} must be {expected}, got {got!r}")

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        value = self.table.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.error(name, f"an integer in {low}..{high}")
        return value

    def number(self, name: str, low: float, default: float) -> float:
        value = self.table.get(name, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= low:
            raise self.error(name, f"a number above {low}")
        return float(value)

    def string(self, name: str, prefixes: tuple[str, ...] = (), optional: bool = False) -> str | None:
        value = self.table.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value or (prefixes and not value.startswith(prefixes)):
            expected = f"a string starting with {' or '.join(prefixes)}" if prefixes else "a non-empty string"
            raise self.error(name, expected)
        return value

    def device(self, name: str) -> str:
        """A torch device name (checked for syntax here; for presence by the party at start)."""
        value = self.table.get(name, "cpu")
        try:
            if not isinstance(value, str) or torch.device(value).type == "meta":
                raise ValueError
        except (RuntimeError, ValueError):
            raise self.error(name, 'a torch device such as "cpu", "cuda" or "cuda:1"') from None
        return value

    def key(self, name: str) -> bytes | None:
        value = self.table.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or len(value.encode()) != 40:
            raise self.error(name, "a Z85 CURVE public key (40 characters, from securetorch keygen)")
        return value.encode()


def _parse(doc: dict[str, Any], source: str) -> ClusterConfig:
    settings = _Fields(source, "[settings]", doc.get("settings", {}))
    frac_bits = settings.integer("frac_bits", 0, 30, DEFAULT_FRAC_BITS)
    compare_bits = settings.integer("compare_bits", frac_bits + 2, 64, DEFAULT_COMPARE_BITS)
    timeout = settings.number("timeout", 0.0, 60.0)
    max_mb = settings.integer("max_message_mb", 1, 1 << 20, DEFAULT_MAX_MESSAGE_BYTES >> 20)
    entries = doc.get("parties")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: no [[parties]] tables: name three parties (ranks 0, 1, 2) with their addresses")
    parties: dict[int, PartyAddress] = {}
    for i, entry in enumerate(entries):
        fields = _Fields(source, f"[[parties]] entry {i + 1}:", entry)
        rank = fields.integer("rank", 0, 2)
        if rank in parties:
            raise ConfigError(f"{source}: two [[parties]] entries have rank {rank}")
        control = fields.string("control", ("tcp://", "ipc://"))
        peer = fields.string("peer", ("tcp://", "ipc://"))
        shares_dir = fields.string("shares_dir", optional=True)
        checkpoints_dir = fields.string("checkpoints_dir", optional=True)
        device = fields.device("device")
        parties[rank] = PartyAddress(rank, control, peer, fields.key("public_key"), shares_dir, checkpoints_dir, device)  # type: ignore[arg-type]
    if sorted(parties) != [0, 1, 2]:
        raise ConfigError(
            f"{source}: need exactly three [[parties]] with ranks 0, 1, 2 (found ranks {sorted(parties)})"
        )
    if len({p.public_key is None for p in parties.values()}) != 1:
        raise ConfigError(f"{source}: give every party a public_key, or none (unencrypted, for tests only)")
    try:
        network = network_profile(doc.get("network"))
    except ValueError as exc:
        raise ConfigError(f"{source}: network: {exc}") from None
    config = ClusterConfig(
        parties=(parties[0], parties[1], parties[2]),
        drivers=_drivers(doc.get("drivers"), source),
        frac_bits=frac_bits,
        compare_bits=compare_bits,
        timeout=timeout,
        max_message_bytes=max_mb << 20,
        network=network,
    )
    if not config.drivers:
        raise ConfigError(
            f"{source}: no [[drivers]] tables: no driver could connect. Add one per driver:\n{_NEW_DRIVERS_FORM}"
        )
    for d in config.drivers:
        if config.encrypted and d.public_key is None:
            raise ConfigError(f"{source}: driver {d.name!r} has no public_key (the parties use CURVE keys)")
    return config


def _drivers(value: Any, source: str) -> tuple[DriverEntry, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):  # the old form: [drivers] public_keys = [...]
        raise ConfigError(
            f"{source}: [drivers] with public_keys is the old form; drivers now have names and roles, "
            f"one [[drivers]] table each:\n{_NEW_DRIVERS_FORM}"
        )
    if not isinstance(value, list):
        raise ConfigError(f"{source}: drivers must be [[drivers]] tables:\n{_NEW_DRIVERS_FORM}")
    drivers: list[DriverEntry] = []
    for i, entry in enumerate(value):
        fields = _Fields(source, f"[[drivers]] entry {i + 1}:", entry)
        name = fields.string("name")
        if name in {d.name for d in drivers}:
            raise ConfigError(f"{source}: two [[drivers]] entries are named {name!r}")
        role = entry.get("role")
        if role not in ROLES:
            raise fields.error("role", " or ".join(ROLES))
        key = fields.key("public_key")
        if key is not None and key in {d.public_key for d in drivers}:
            raise ConfigError(f"{source}: driver {name!r} has the same public_key as another driver")
        drivers.append(DriverEntry(name, key, role))  # type: ignore[arg-type]
    return tuple(drivers)


def settings_mismatch(party: dict[str, Any], driver: dict[str, Any]) -> str | None:
    """The first setting that differs, as a sentence, or None."""
    for name in ("version", "frac_bits", "compare_bits"):
        if party.get(name) != driver.get(name):
            what = "protocol version" if name == "version" else f"fixed-point setting {name}"
            return f"{what} differs: the party has {party.get(name)}, the driver has {driver.get(name)}"
    return None


def local_config(
    frac_bits: int,
    compare_bits: int,
    timeout: float,
    driver_key: bytes | None,
    password_digests: dict[str, str],
    network: NetworkProfile | None = None,
    play_network: bool = True,
    device: str = "cpu",
) -> ClusterConfig:
    """A ``LocalCluster``'s configuration before its parties bind: one admin driver, and
    either CURVE keys (tcp) or PLAIN password digests (ipc) for every endpoint; the network
    profile its parties pick protocols for, and play unless ``play_network`` is False; the
    device all three compute on."""
    pending = PartyAddress(0, "", "", None, device=device)
    return ClusterConfig(
        parties=(pending, replace(pending, rank=1), replace(pending, rank=2)),
        drivers=(DriverEntry(LOCAL_DRIVER, driver_key, "admin"),),
        frac_bits=frac_bits,
        compare_bits=compare_bits,
        timeout=timeout,
        password_digests=password_digests,
        local=True,
        network=network,
        play_network=play_network,
    )
