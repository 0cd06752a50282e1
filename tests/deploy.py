"""Helpers for tests of deployments: cluster files, service parties, a ready deployment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from securetorch.comm.security import keygen

TIMEOUT = 5.0
# driver name -> role (two owners and two clients, so that each can try the others' things)
ROLES = {"admin": "admin", "owner": "owner", "mallory": "owner", "client": "client", "other": "client"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cluster_file(
    path: Path, ports, party_keys, drivers, frac_bits=18, shares_dir=None, extra="", checkpoints_dir=None
) -> str:
    """A cluster file; ``drivers`` maps a name to (public key, role)."""
    lines = [f"[settings]\nfrac_bits = {frac_bits}\ncompare_bits = 44\ntimeout = {TIMEOUT}\n{extra}"]
    for r in range(3):
        shares = f'shares_dir = "{shares_dir}/party{r}"\n' if shares_dir else ""
        if checkpoints_dir:
            shares += f'checkpoints_dir = "{checkpoints_dir}/party{r}"\n'
        lines.append(
            f'[[parties]]\nrank = {r}\ncontrol = "tcp://127.0.0.1:{ports[2 * r]}"\n'
            f'peer = "tcp://127.0.0.1:{ports[2 * r + 1]}"\npublic_key = "{party_keys[r]}"\n{shares}'
        )
    for name, (key, role) in drivers.items():
        lines.append(f'[[drivers]]\nname = "{name}"\npublic_key = "{key}"\nrole = "{role}"\n')
    path.write_text("\n".join(lines))
    return str(path)


def start_party(config: str, rank: int, key, *shares) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", "securetorch.cli", "party", "--rank", str(rank), "--config", config, "--key", str(key)]
    for path in shares:
        cmd += ["--shares", str(path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline() for _ in range(1 + len(shares))]
    assert "serving drivers" in lines[-1], lines
    return proc


@dataclass
class Deployment:
    """Three service parties over CURVE on loopback, and key files of the drivers in ROLES."""

    config: str
    keys: dict[str, Path]  # driver name -> .key_secret file
    drivers: dict[str, tuple[str, str]]  # driver name -> (public key, role)
    party_keys: list[tuple[Path, Path, str]]
    intruder: Path
    ports: list[int]
    shares: Path
    checkpoints: Path  # party r opens public-weight checkpoints in checkpoints/party<r>
    procs: list[subprocess.Popen] = field(default_factory=list)

    def restart(self, rank: int, *shares) -> None:
        self.procs[rank] = start_party(self.config, rank, self.party_keys[rank][1], *shares)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)


def start_deployment(keys: Path, shares: Path) -> Deployment:
    party = [keygen(keys, f"party{r}") for r in range(3)]
    made = {name: keygen(keys, name) for name in ROLES}
    drivers = {n: (d[2], ROLES[n]) for n, d in made.items()}
    ports = free_ports(6)
    checkpoints = shares / "checkpoints"
    config = cluster_file(
        keys / "cluster.toml", ports, [p[2] for p in party], drivers, shares_dir=shares, checkpoints_dir=checkpoints
    )
    deployment = Deployment(
        config,
        {n: d[1] for n, d in made.items()},
        drivers,
        party,
        keygen(keys, "intruder")[1],
        ports,
        shares,
        checkpoints,
    )
    deployment.procs = [start_party(config, r, party[r][1]) for r in range(3)]
    return deployment
