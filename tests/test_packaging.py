"""environment.yml (conda users) and pyproject.toml declare the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name_spec(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req.split(";")[0])  # an environment marker is pip's alone
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = dict(_name_spec(r) for r in py["dependencies"] + py["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    have = dict(_name_spec(d) for d in conda if not d.startswith(("python", "pip")))
    assert have == want
    assert "conda-forge" in env["channels"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    py_req = next(d for d in conda if d.startswith("python"))
    assert py["requires-python"] in py_req


def test_engine_pin_matches_the_builder():
    from perfkit.kinds.llamacpp.engine import ENGINE_PACKAGE, ENGINE_VERSION

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert py["optional-dependencies"]["engine"] == [f"{ENGINE_PACKAGE}=={ENGINE_VERSION}"]
