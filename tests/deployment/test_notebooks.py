"""The notebooks run end to end, each in a fresh kernel on this interpreter (nbclient), and
are stored without outputs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))

# notebook -> (a line its printed output must contain, whether it draws figures)
NOTEBOOK_OUTPUT = {
    "01_quickstart.ipynb": (r"embedding cosine, secure vs plaintext: >= (0\.9999|1\.0000)", False),
    "02_secure_generation.ipynb": (r"secure greedy: +\[", True),
    "03_where_the_cost_goes.ipynb": (r"WAN: 100 Mbps, 40 ms +[0-9.]+ s = compute", True),
}


def test_notebooks_are_stored_without_outputs() -> None:
    assert {p.name for p in NOTEBOOKS} == set(NOTEBOOK_OUTPUT)
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path.name
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name}: a code cell has stored outputs"
                assert cell["execution_count"] is None, f"{path.name}: a code cell has an execution count"
            assert "execution" not in cell.get("metadata", {}), f"{path.name}: a cell has stored timings"


def this_interpreters_kernel():
    """A kernel manager for ipykernel on this very interpreter (sys.executable), whatever
    kernel specs are installed elsewhere (a user-level ``python3`` spec could point to
    another Python)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # no spec directories: the native "python3" spec comes from ipykernel itself, whose
    # command line is [sys.executable, "-m", "ipykernel_launcher", ...]
    return KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_errors(path: Path) -> None:
    nbclient = pytest.importorskip(
        "nbclient", reason="the notebooks extra is not installed (pip install -e '.[notebooks]')"
    )
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)\nprint(sys.executable)"))
    client = nbclient.NotebookClient(
        nb,
        km=this_interpreters_kernel(),
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    prefix, executable = "".join(o["text"] for o in nb.cells[-1].outputs if o["output_type"] == "stream").split()
    assert Path(prefix) == Path(sys.prefix), f"the kernel ran in {prefix}, not {sys.prefix}"
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    printed = "".join(
        o["text"] for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o["output_type"] == "stream"
    )
    pattern, draws = NOTEBOOK_OUTPUT[path.name]
    assert re.search(pattern, printed), printed
    if draws:
        figures = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        assert figures, f"{path.name}: no figure was drawn"
