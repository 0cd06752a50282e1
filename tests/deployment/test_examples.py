"""The example scripts run end to end with their fast defaults (a subprocess, as a user runs
it); ``test_notebooks.py`` runs the notebooks (a file of its own, so that the two halves can
run on different test workers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# script -> lines its output must contain (regular expressions)
SCRIPTS = {
    "semantic_search.py": [
        r"same ranking: yes",
        r"max \|secure - plaintext\|: score [0-9.e+-]+, hidden state \(real tokens\) [0-9.e+-]+",
        r"secure call: [0-9.]+ s, \d+ rounds, [0-9.]+ MB sent by the parties",
    ],
    "gpt2_generation.py": [
        r"equal to plaintext greedy: yes",
        r"tokens 2-8: [0-9.]+ s, [0-9.]+ MB, \d+ rounds each on average",
    ],
    "bert_classification.py": [
        r"same predicted classes: yes",
        r"max \|secure - plaintext\| logit: [0-9.e+-]+",
    ],
}

# script -> (pattern of a printed error, its bound)
ERRORS = {
    "semantic_search.py": (r"\|: score ([0-9.e+-]+)", 2e-3),
    "bert_classification.py": (r"logit: ([0-9.e+-]+)", 2e-2),
}


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_example_script_runs(name: str) -> None:
    result = run_script(name)
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    for pattern in SCRIPTS[name]:
        assert re.search(pattern, result.stdout), f"{name}: no line matching {pattern!r} in\n{result.stdout}"
    if name in ERRORS:
        pattern, bound = ERRORS[name]
        assert float(re.search(pattern, result.stdout).group(1)) < bound, result.stdout


def test_gpt2_example_refuses_a_model_not_in_the_local_cache() -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = run_script("gpt2_generation.py", "--model", "securetorch-tests/no-such-model", env=env)
    assert result.returncode == 1
    assert "is not in the local Hugging Face cache" in result.stderr
    assert "Traceback" not in result.stderr
