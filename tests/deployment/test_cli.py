"""The ``securetorch`` command: ``demo`` runs MiniLM securely and compares; ``netcheck``
measures the links between running parties."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import securetorch as puma

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_demo_command_compares_secure_and_plaintext() -> None:
    cli = [sys.executable, "-c", "from securetorch.cli import main; main()", "demo"]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=600, check=True)
    out = result.stdout
    assert "similarity   secure   plaintext" in out
    cosine = float(re.search(r"embedding cosine >= ([0-9.]+)", out).group(1))
    assert cosine >= 0.9999
    assert re.search(r"\d+ rounds, [0-9.]+ MB sent by the parties", out)


def test_cli_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "securetorch.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in result.stdout and "party" in result.stdout
    assert "netcheck" in result.stdout


def test_netcheck_prints_the_measured_profile_to_declare(deployment, capsys) -> None:
    """``securetorch netcheck`` against running service parties (an owner's key): the round
    trip and bandwidth it measured, as the cluster file's ``[network]`` table, which parses."""
    from securetorch.cli import main

    main(["netcheck", "--config", deployment.config, "--key", str(deployment.keys["owner"]), "--rounds", "5"])
    out = capsys.readouterr().out
    table = out[out.index("[network]") :]
    parsed = tomllib.loads(table)["network"]
    assert parsed["bandwidth_bps"] > 0 and 0 < parsed["rtt_s"] < 1


def test_a_client_may_not_run_netcheck(deployment) -> None:
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["client"]) as client:
        with pytest.raises(puma.AccessError, match="netcheck is not allowed for a driver whose role is client"):
            client.netcheck(rounds=2, megabytes=0.01)
        assert all(s.bytes_sent == 0 for s in client.stats())  # refused before the parties exchanged a byte
