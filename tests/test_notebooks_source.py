"""The study notebooks as source: stored without outputs, parameterized, and runnable as they are."""

from pathlib import Path

import nbformat
import pytest

from perfkit.studies import params
from perfkit.studies import names as study_names

NB = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("study", study_names())
def test_notebook_is_clean_parameterized_and_thin(study):
    nb = nbformat.read(NB / f"{study}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # outputs live in results/
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    ns: dict = {}
    exec(tagged[0].source, ns)  # noqa: S102 - our own parameters cell
    assert set(ns) - {"__builtins__"} == {"params_path", "run_dir", "measure"}
    # Opened in JupyterLab (cwd = notebooks/), the defaults point at the demo parameter set.
    p = params.load(NB / ns["params_path"], check_models=False)
    assert study in p.enabled()
    assert f'"{study}"' in code[1].source and "run_or_load" in code[1].source
    assert max(len(c.source.splitlines()) for c in code) <= 25  # logic belongs in perfkit, not here
