"""Every notebook in notebooks/ executes top to bottom (nbclient), with its outputs stripped in
git. Each writes its run directories to a temporary folder."""
from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook_per_method():
    names = {p.stem for p in NOTEBOOKS}
    assert {"quickstart", "personalization", "floral", "fedhca2", "async", "fedgc"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped_and_executes(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: outputs not stripped"
    client = nbclient.NotebookClient(book, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), f"{path.name}: no figure shown"
