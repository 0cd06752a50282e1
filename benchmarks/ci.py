"""How long CI takes: ``bash .ci/run`` on a fresh clone of this repository's HEAD (a new
virtualenv, every install, lint and the whole test suite), timed on this machine. Writes
``benchmarks/ci.json`` and the README's line about it (between its markers).

    python -m benchmarks.ci            # as long as CI itself (about 10 minutes on 2 cores)
    python -m benchmarks.ci --readme   # only rewrite the README's line from ci.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from benchmarks.common import machine, write_between

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "ci.json"
README_BEGIN = "<!-- CI time: written by python -m benchmarks.ci from benchmarks/ci.json -->"
README_END = "<!-- end of the CI time -->"


def run() -> dict:
    """Clone HEAD, run CI in the clone, and time it; the suite's own summary line with it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True)
    with tempfile.TemporaryDirectory(prefix="securetorch-ci-") as directory:
        clone = pathlib.Path(directory) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        started = time.perf_counter()
        done = subprocess.run(["bash", ".ci/run"], cwd=clone, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    summary = next((line for line in reversed(done.stdout.splitlines()) if " passed" in line), "")
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-5000:] + done.stderr[-5000:])
        raise SystemExit(f"CI failed (exit {done.returncode}): {summary}")
    return {
        "commit": head.stdout.strip(),
        "seconds": round(seconds, 1),
        "summary": re.sub(r"\x1b\[[0-9;]*m", "", summary).strip("= "),
        "machine": machine(),
    }


def readme_line(result: dict) -> str:
    minutes, seconds = divmod(round(result["seconds"]), 60)
    return (
        f"On this machine ({result['machine']['cores']} cores) `bash .ci/run` on a fresh clone takes "
        f"{minutes} min {seconds:02d} s, installs included ({result['summary']}; `python -m benchmarks.ci`)."
    )


def update_readme(result: dict) -> None:
    write_between(ROOT / "README.md", README_BEGIN, README_END, readme_line(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="only rewrite the README's line from ci.json")
    if parser.parse_args().readme:
        update_readme(json.loads(OUTPUT.read_text()))
        return
    result = run()
    OUTPUT.write_text(json.dumps(result, indent=1) + "\n")
    update_readme(result)
    print(readme_line(result))


if __name__ == "__main__":
    main()
