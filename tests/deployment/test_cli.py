"""The README's main command: ``securetorch demo`` runs MiniLM securely and compares."""

from __future__ import annotations

import re
import subprocess
import sys


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
