"""The layering contract (import-linter, in pyproject.toml) holds: no import cycle, no lower layer importing a
higher one, no study importing another, compare reading only figures and manifests."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_layering_contract_holds():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    r = subprocess.run([exe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_the_registry_is_the_only_list_of_studies():
    """No module names the built-in studies in a list of its own (a hand-kept list that a new study would miss)."""
    names = ("cold_start", "model_size", "quantization", "config_tuning", "fleet")
    offenders = []
    for p in (ROOT / "perfkit").rglob("*.py"):
        text = p.read_text()
        if sum(f'"{n}"' in text for n in names) >= 3:
            offenders.append(str(p.relative_to(ROOT)))
    assert offenders == []
