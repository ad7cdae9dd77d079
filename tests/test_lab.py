"""`perfkit lab`: JupyterLab's own save path (its FileContentsManager with perfkit's hook) keeps the study
notebooks as stored, whatever a session adds."""

import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture
def lab(tmp_path):
    from jupyter_server.services.contents.filemanager import FileContentsManager

    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "results").mkdir()
    return tmp_path, FileContentsManager(root_dir=str(tmp_path), pre_save_hook="perfkit.run.lab.pre_save")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_stored_notebooks_are_what_jupyter_writes(path):
    """Byte for byte what JupyterLab's save writes: a save that changes nothing leaves no diff."""
    assert nbformat.writes(nbformat.read(path, as_version=4)) + "\n" == path.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opening_and_running_a_notebook_in_the_lab_leaves_it_as_stored(lab, path):
    root, cm = lab
    rel = f"notebooks/{path.name}"
    model = cm.get(rel)
    nb = model["content"]
    # What a JupyterLab session adds: the kernel's version, outputs, counts, per-cell timings and UI state.
    nb.metadata.language_info["version"] = "3.11.2"
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for k, cell in enumerate(nb.cells):
        cell.metadata["execution"] = {"iopub.status.busy": "2026-12-05T00:00:00Z"}
        cell.metadata["scrolled"] = True
        if cell.cell_type == "code":
            cell.execution_count = k
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="measuring 3/37\n")]
    cm.save({"type": "notebook", "format": "json", "content": nb}, rel)
    assert (root / rel).read_text() == path.read_text()


def test_an_edit_is_kept_and_a_notebook_outside_notebooks_keeps_its_outputs(lab):
    root, cm = lab
    nb = cm.get("notebooks/cold_start.ipynb")["content"]
    code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
    code.source += "\nreps = 3  # mine"
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
    cm.save({"type": "notebook", "format": "json", "content": nb}, "notebooks/cold_start.ipynb")
    saved = nbformat.read(root / "notebooks" / "cold_start.ipynb", as_version=4)
    kept = next(c for c in saved.cells if "parameters" in c.metadata.get("tags", []))
    assert kept.source.endswith("reps = 3  # mine") and kept.outputs == []
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
    cm.save({"type": "notebook", "format": "json", "content": nb}, "results/cold_start.ipynb")
    other = nbformat.read(root / "results" / "cold_start.ipynb", as_version=4)
    assert next(c for c in other.cells if "parameters" in c.metadata.get("tags", [])).outputs


def test_the_lab_command_carries_the_save_hook():
    from perfkit.run.lab import command

    cmd = command(ROOT, ["--no-browser"])
    assert "--ContentsManager.pre_save_hook=perfkit.run.lab.pre_save" in cmd and cmd[-1] == "--no-browser"
