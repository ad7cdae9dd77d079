"""The scripted Ollama's models: their facts (what /api/show says), their injected delays, and the
model store on disk (blobs named by their real sha256, manifests where Ollama keeps them).

Names follow the production parameter set (params/ollama-qwen2.5.yaml); blob sizes are a few MB so
tests stay fast, yet every load really reads the whole file (a cold page cache really is slower).
Each blob starts with a valid GGUF v3 header carrying the model's metadata, then random bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

MiB = 1 << 20
REGISTRY = "registry.ollama.ai"
NAMESPACE = "library"

# Qwen2.5's chat template; the prompt the "model" sees starts with its first 12 tokens (see serve.py).
QWEN_TEMPLATE = (
    "{{- if .Messages }}{{- if or .System .Tools }}<|im_start|>system\n{{- if .System }}\n{{ .System }}"
    "{{- end }}<|im_end|>\n{{ end }}{{- range $i, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}"
    "<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ else }}{{ if .System }}<|im_start|>system\n{{ .System }}"
    "<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"
)
QWEN_PARAMETERS = 'stop                           "<|im_start|>"\nstop                           "<|im_end|>"'

# GGUF general.file_type values (llama.cpp's LLAMA_FTYPE_*) for the quantizations used here.
FILE_TYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}


@dataclass
class ModelSpec:
    """One model: what the server reports about it and how it behaves (delays in seconds)."""

    name: str
    parameter_size: str = "494.03M"
    parameter_count: int = 494_032_768
    quantization: str = "Q4_K_M"
    family: str = "qwen2"
    block_count: int = 24
    context_length: int = 32768
    embedding_length: int = 896
    head_count: int = 14
    head_count_kv: int = 2
    size_mb: float = 4.0  # blob size on disk
    gpu_layers: int | None = None  # layers on the "GPU"; None = all (block_count + 1)
    fa_supported: bool = True
    load_s: float = 0.05  # injected runner start-up delay, after it has read the blob
    prefill_s_per_token: float = 0.0005  # per uncached prompt token
    itl_s: float = 0.002  # between two output tokens
    vram_release_s: float = 0.3  # runner keeps running this long after an unload drops it from /api/ps
    fa_prefill_factor: float = 0.8  # prefill time multiplier when flash attention is effectively on
    parallel_itl_penalty: float = 0.25  # ITL × (1 + penalty × (other active requests on the runner))
    weights: str = ""  # models sharing weights (quantization variants) generate the same words...
    drift_per_mille: int = 0  # ...except that at each token, this chance (‰) picks another word
    default_tokens: int = 16  # answer length when the request sets no num_predict
    # A thinking model: its first this-many tokens are thoughts (message.thinking / thinking), within num_predict as
    # Ollama counts them; it thinks unless the request says "think": false. 0: no thinking capability ("think":
    # true is refused with HTTP 400, as Ollama refuses it).
    thinking_tokens: int = 0
    fail_load: bool = False  # the runner exits during load ("llama runner process has terminated")
    template: str = QWEN_TEMPLATE
    parameters: str = QWEN_PARAMETERS
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = canonical(self.name)
        self.weights = self.weights or self.name

    @property
    def total_layers(self) -> int:
        return self.block_count + 1  # repeating blocks + the output layer, as llama.cpp counts them

    @property
    def offloaded_layers(self) -> int:
        return self.total_layers if self.gpu_layers is None else max(0, min(self.gpu_layers, self.total_layers))

    @property
    def size_bytes(self) -> int:
        return int(self.size_mb * MiB)

    def details(self) -> dict[str, Any]:
        return {"parent_model": "", "format": "gguf", "family": self.family, "families": [self.family],
                "parameter_size": self.parameter_size, "quantization_level": self.quantization}

    def model_info(self) -> dict[str, Any]:
        a = self.family
        info: dict[str, Any] = {
            "general.architecture": a, "general.basename": self.name.split(":")[0],
            "general.file_type": FILE_TYPES.get(self.quantization, 15),
            "general.parameter_count": self.parameter_count, "general.quantization_version": 2,
            f"{a}.attention.head_count": self.head_count, f"{a}.attention.head_count_kv": self.head_count_kv,
            f"{a}.attention.layer_norm_rms_epsilon": 1e-06, f"{a}.block_count": self.block_count,
            f"{a}.context_length": self.context_length, f"{a}.embedding_length": self.embedding_length,
            f"{a}.feed_forward_length": self.embedding_length * 4, f"{a}.rope.freq_base": 1000000,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
        }
        info.update(self.extra.get("model_info", {}))
        return info

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _qwen32(quant: str, **kw: Any) -> ModelSpec:
    return ModelSpec(f"qwen2.5:32b-instruct-{quant.lower() if quant != 'Q4_K_M' else 'q4_K_M'}",
                     parameter_size="32.8B", parameter_count=32_763_876_352, quantization=quant, block_count=64,
                     embedding_length=5120, head_count=40, head_count_kv=8, weights="qwen2.5:32b-instruct", **kw)


def default_models() -> list[ModelSpec]:
    """The models every scripted server has (override any field through the harness)."""
    return [
        ModelSpec("qwen2.5:72b-instruct-q4_K_M", parameter_size="72.7B", parameter_count=72_706_203_648,
                  quantization="Q4_K_M", block_count=80, embedding_length=8192, head_count=64, head_count_kv=8,
                  size_mb=24, gpu_layers=60, load_s=0.4, prefill_s_per_token=0.004, itl_s=0.01,
                  drift_per_mille=20),
        _qwen32("Q4_K_M", size_mb=10, load_s=0.25, prefill_s_per_token=0.002, itl_s=0.005, drift_per_mille=20),
        _qwen32("Q8_0", size_mb=16, load_s=0.3, prefill_s_per_token=0.0025, itl_s=0.006, drift_per_mille=0),
        _qwen32("Q4_0", size_mb=8, load_s=0.2, prefill_s_per_token=0.002, itl_s=0.005, drift_per_mille=60,
                fa_supported=False),
        ModelSpec("tiny:latest", size_mb=4),
        ModelSpec("broken:latest", size_mb=1, fail_load=True),
    ]


def merge_models(base: Iterable[ModelSpec], overrides: Mapping[str, Mapping[str, Any]] | None) -> list[ModelSpec]:
    """``overrides``: name → fields to change; a name not in ``base`` adds a model (tiny's defaults)."""
    out = {m.name: m for m in base}
    for name, fields in (overrides or {}).items():
        key = canonical(name)
        if key in out:
            out[key] = dataclasses.replace(out[key], **dict(fields))
        else:
            out[key] = ModelSpec(key, **dict(fields))
    return list(out.values())


# ---- names -------------------------------------------------------------------------------------
def canonical(name: str) -> str:
    """``tiny`` → ``tiny:latest`` (Ollama's default tag); registry prefixes dropped."""
    name = name.strip()
    for prefix in (f"{REGISTRY}/{NAMESPACE}/", f"{NAMESPACE}/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def resolve(name: str, known: Iterable[str]) -> str | None:
    """The stored name matching ``name`` the way Ollama matches it: case-insensitive, default tag."""
    want = canonical(name).lower()
    return next((k for k in known if k.lower() == want), None)


# ---- the store on disk -------------------------------------------------------------------------
def _gguf_header(spec: ModelSpec) -> bytes:
    """A GGUF v3 header (no tensors) with the metadata a GGUF reader looks for."""
    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    a = spec.family
    kvs: list[tuple[str, int, bytes]] = [
        ("general.architecture", 8, s(a)),
        ("general.name", 8, s(spec.name)),
        ("general.file_type", 4, struct.pack("<I", FILE_TYPES.get(spec.quantization, 15))),
        (f"{a}.block_count", 4, struct.pack("<I", spec.block_count)),
        (f"{a}.context_length", 4, struct.pack("<I", spec.context_length)),
        (f"{a}.embedding_length", 4, struct.pack("<I", spec.embedding_length)),
        (f"{a}.attention.head_count", 4, struct.pack("<I", spec.head_count)),
        (f"{a}.attention.head_count_kv", 4, struct.pack("<I", spec.head_count_kv)),
        ("general.parameter_count", 10, struct.pack("<Q", spec.parameter_count)),
    ]
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for key, typ, val in kvs:
        out += s(key) + struct.pack("<I", typ) + val
    return out + b"\0" * (-len(out) % 32)


def _blob_bytes(spec: ModelSpec) -> bytes:
    head = _gguf_header(spec)
    body = random.Random(f"{spec.name}/{spec.size_bytes}").randbytes(max(0, spec.size_bytes - len(head)))
    return head + body


def _write_blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = blobs / f"sha256-{digest}"
    if not (path.exists() and path.stat().st_size == len(data)):
        tmp = path.with_suffix(".partial")
        tmp.write_bytes(data)
        tmp.replace(path)
    return digest


def manifest_path(models_dir: Path, name: str) -> Path:
    model, tag = canonical(name).rsplit(":", 1)
    return models_dir / "manifests" / REGISTRY / NAMESPACE / model / tag


def write_store(models_dir: Path, specs: Iterable[ModelSpec]) -> dict[str, Path]:
    """Blobs and manifests for ``specs`` (idempotent: a blob already there is kept); returns name → blob.

    The manifest has the model layer only (plus the config), so /api/tags' size, which Ollama sums
    over the layers, equals the blob's size.
    """
    blobs = models_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    index_path = models_dir / ".scripted-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    out: dict[str, Path] = {}
    for spec in specs:
        key = f"{spec.name}|{spec.size_bytes}|{spec.quantization}|{spec.block_count}|{spec.parameter_count}"
        digest = index.get(key)
        blob = blobs / f"sha256-{digest}" if digest else None
        if not (blob and blob.exists() and blob.stat().st_size == spec.size_bytes):
            digest = _write_blob(blobs, _blob_bytes(spec))
            index[key] = digest
            blob = blobs / f"sha256-{digest}"
        config = json.dumps({"model_format": "gguf", "model_family": spec.family, "model_families": [spec.family],
                             "model_type": spec.parameter_size, "file_type": spec.quantization,
                             "architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest}"]}}).encode()
        config_digest = _write_blob(blobs, config)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": f"sha256:{config_digest}", "size": len(config)},
                    "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
                                "size": spec.size_bytes}]}
        mp = manifest_path(models_dir, spec.name)
        mp.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest)
        if not mp.exists() or mp.read_text() != text:
            mp.write_text(text)
        out[spec.name] = blob
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(index_path)
    return out


@dataclass
class StoredModel:
    """A model as found on disk: its manifest and model blob (what /api/tags lists)."""

    name: str
    blob: Path
    size: int
    digest: str  # sha256 of the manifest file, as Ollama reports it
    modified_at: float


def scan_store(models_dir: Path) -> dict[str, StoredModel]:
    """Every manifest under ``models_dir`` whose model blob exists, by canonical name."""
    root = models_dir / "manifests" / REGISTRY / NAMESPACE
    out: dict[str, StoredModel] = {}
    if not root.is_dir():
        return out
    for mp in sorted(root.glob("*/*")):
        try:
            raw = mp.read_bytes()
            manifest = json.loads(raw)
            layer = next(lay for lay in manifest.get("layers", [])
                         if lay.get("mediaType") == "application/vnd.ollama.image.model")
        except (OSError, ValueError, StopIteration):
            continue
        blob = models_dir / "blobs" / layer["digest"].replace(":", "-")
        if not blob.exists():
            continue
        name = f"{mp.parent.name}:{mp.name}"
        size = sum(int(lay.get("size", 0)) for lay in manifest.get("layers", []))
        out[name] = StoredModel(name, blob, size, hashlib.sha256(raw).hexdigest(), mp.stat().st_mtime)
    return out


def specs_from_file(path: Path) -> dict[str, ModelSpec]:
    try:
        data = json.loads(path.read_text())
        return {m.name: m for m in (ModelSpec.from_json(d) for d in data.get("models", []))}
    except (OSError, ValueError):
        return {m.name: m for m in default_models()}
