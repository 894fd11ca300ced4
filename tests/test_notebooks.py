"""Every notebook in notebooks/ executes top to bottom without errors."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path: Path, monkeypatch, tmp_path):
    # notebooks that train a long demo (03_faceswap_demo) switch to a few-step schedule under this flag
    monkeypatch.setenv("REPSUITE_NOTEBOOK_QUICK", "1")
    # their tempfile.mkdtemp() folders (hundreds of MB of demo data) land under pytest's own, cleaned, tmp
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    # run from notebooks/ like a user; the notebooks write their outputs to temporary folders
    resources = {"metadata": {"path": str(path.parent)}}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
