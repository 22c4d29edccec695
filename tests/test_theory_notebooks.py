"""The theory notebooks: stored without outputs, up to date with notebooks/build_notebooks.py, and each
executes headless (nbclient, kernel `python3`) without error. Each asserts its own symbolic checks and
numeric predictions, so an error here is a failed check, not only a crash.
"""
import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NB_DIR / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BUILDER = _builder()
NAMES = sorted(BUILDER.NOTEBOOKS)


def test_theory_notebooks_cover_four_families():
    assert {"entropy_dynamics.ipynb", "kl_estimators.ipynb", "advantage_estimators.ipynb", "off_policy.ipynb"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_theory_notebook_is_stored_without_outputs_and_up_to_date(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: stored with outputs"
    want = BUILDER.build(BUILDER.NOTEBOOKS[name])
    assert [c.source for c in nb.cells] == [c.source for c in want.cells], \
        f"{name} differs from notebooks/build_notebooks.py; rerun it"


@pytest.mark.parametrize("name", NAMES)
def test_theory_notebook_executes_headless(name, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # no display needed (Agg inside)
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError on any error, naming the cell
