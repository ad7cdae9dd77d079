"""The layering contract (import-linter, in pyproject.toml) holds: no import cycle, no lower layer importing a
higher one, no study importing another, compare reading only figures and manifests."""

import ast
import re
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


# Each server kind's folder and the names that are its own (a kind is named only there; documentation anywhere).
# Ollama's own programs and log lines say "llama" (ollama_llama_server, "llama runner started"): its vocabulary.
KIND_FOLDERS = {"ollama": ("ollama", "llama"), "llamacpp": ("llama",), "openai": ("openai",), "vllm": ("vllm",)}
KIND_NAME = re.compile("|".join(n for names in KIND_FOLDERS.values() for n in names), re.I)
MAX_MODULE_LINES = 700


def _documentation(tree: ast.AST) -> set[int]:
    """ids of the string constants that document: docstrings, and a parameter's or command's description/help."""
    out: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            out.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg in ("description", "help", "epilog"):
            out |= {id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    return out


def kind_names_in_code(path: Path) -> list[str]:
    """Where ``path``'s code (not its documentation) names a server kind that is not its folder's own."""
    rel = path.relative_to(ROOT / "perfkit").parts
    own = KIND_FOLDERS.get(rel[1], ()) if rel[0] == "kinds" and len(rel) > 2 else ()
    tree = ast.parse(path.read_text())
    docs = _documentation(tree)
    found = []
    for node in ast.walk(tree):
        texts = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts.append(node.name)
        elif isinstance(node, ast.alias):
            texts.append(node.name + " " + (node.asname or ""))
        elif isinstance(node, ast.ImportFrom):
            texts.append(node.module or "")
        for t in texts:
            hits = {m.group(0).lower() for m in KIND_NAME.finditer(t)} - set(own)
            if hits:
                found.append(f"{'/'.join(rel)}:{getattr(node, 'lineno', '?')}: {t[:80]!r}")
    return found


def test_a_server_kind_is_named_only_in_its_own_folder():
    """Outside perfkit/kinds/<kind>/ the code names no server kind (its documentation may): core, measure, run,
    studies … ask a kind by the name a parameter file gives, and what differs is what the kind declares."""
    found = [hit for p in sorted((ROOT / "perfkit").rglob("*.py")) for hit in kind_names_in_code(p)]
    assert found == [], "\n".join(found)


def test_the_check_finds_a_kind_named_in_code():
    """The check above can fail: a string, a name and an import that name a kind are found; a docstring is not."""
    sample = ROOT / "perfkit" / "core" / "_kind_check_sample.py"
    sample.write_text('"""Ollama is fine in a docstring."""\nfrom perfkit.kinds.ollama import x\n'
                      'if kind == "vllm":\n    llama_flags = 1\n')
    try:
        found = kind_names_in_code(sample)
    finally:
        sample.unlink()
    assert len(found) == 3 and any("vllm" in f for f in found) and any("llama_flags" in f for f in found)


def test_no_module_is_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "perfkit").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
