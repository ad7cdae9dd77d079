"""GuideLLM (PyPI ``guidellm``) as an outside comparison client, run fully offline.

GuideLLM pulls in torch, transformers and datasets (about 6 GB), so it lives in its own venv,
bench/.guidellm/venv, and is only ever run as a subprocess: this module is stdlib-only and
imports from perfkit's venv. Its synthetic prompts need a Hugging Face tokenizer, which normally
comes from the hub; instead ensure_venv() builds a tiny word-level one (faker's en_US lorem word
list, which is exactly what GuideLLM's synthetic text is drawn from) into bench/.guidellm/tokenizer.
One of its "tokens" is one word, punctuation mark or digit, close to a real tokenizer's count for
common English words; the server's own `usage` is what GuideLLM reports as token counts anyway.

    from bench._guidellm import run_guidellm
    run_guidellm("http://127.0.0.1:8080", concurrency=64, requests=640, output_tokens=128,
                 prompt_tokens=32, out_dir=Path("results/guidellm"))
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Pinned: the CLI (kind=... argument strings) and the JSON layout parsed below are this version's.
GUIDELLM_VERSION = "0.8.1"
HOME = Path(__file__).resolve().parent / ".guidellm"
VENV = HOME / "venv"
TOKENIZER = HOME / "tokenizer"

# The tokenizer is a local path, but without these transformers/datasets still try the hub for
# metadata and would hang or fail on a machine without access to it.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

_BUILD_TOKENIZER = r"""
import string, sys
from faker.providers.lorem.en_US import Provider
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
# Faker capitalises sentence starts, and GuideLLM prefixes each prompt with "<n> <m> m<turn>", so
# single characters, digits and capitalised words are in the vocabulary too: no [UNK], which
# decode(skip_special_tokens=True) would silently drop, making prompts shorter than asked.
vocab = ["[UNK]", *string.digits, *string.ascii_letters, *string.punctuation]
vocab += [v for w in sorted(set(Provider.word_list)) for v in (w, w.capitalize())]
vocab = list(dict.fromkeys(vocab))
tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(sys.argv[1])
"""


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _installed_version(py: Path) -> str | None:
    if not py.exists():
        return None
    r = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('guidellm'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_venv() -> Path:
    """Create bench/.guidellm/venv with guidellm==GUIDELLM_VERSION and the local tokenizer, if
    missing; return the venv's python. Idempotent; the first install downloads ~6 GB (torch with
    its CUDA wheels is a hard dependency) and took ~80 s here. Raises RuntimeError on failure."""
    py = _venv_python()
    try:
        if _installed_version(py) != GUIDELLM_VERSION:
            if not py.exists():
                base = shutil.which("python3.11") or sys.executable
                subprocess.run([base, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", f"guidellm=={GUIDELLM_VERSION}"],
                           check=True)
            if _installed_version(py) != GUIDELLM_VERSION:
                raise RuntimeError(f"guidellm {GUIDELLM_VERSION} still not importable after pip install")
        if not (TOKENIZER / "tokenizer.json").exists():
            subprocess.run([str(py), "-c", _BUILD_TOKENIZER, str(TOKENIZER)], check=True,
                           env={**os.environ, **OFFLINE_ENV})
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"could not set up GuideLLM in {VENV}: {e}") from e
    return py


def _run_once(url: str, concurrency: int, requests: int, output_tokens: int, prompt_tokens: int,
              endpoint: str, model: str | None, out_dir: Path, name: str) -> tuple[dict, float, float]:
    """One `guidellm run`; returns (its JSON report, CPU seconds of the whole process tree, wall s)."""
    report = out_dir / f"{name}.json"
    report.unlink(missing_ok=True)  # a stale report must not pass for this run's
    cmd = [
        str(VENV / "bin" / "guidellm"), "run",
        # validate_backend=false: otherwise GuideLLM first GETs /health, which not every
        # OpenAI-compatible server has.
        "--backend", f"kind=openai_http,target={url},request_format={endpoint},validate_backend=false"
                     + (f",model={model}" if model else ""),
        "--profile", f"kind=concurrent,streams={concurrency}",
        "--constraint", f"kind=max_requests,count={requests}",
        "--tokenizer", f"kind=huggingface_auto,model={TOKENIZER}",
        "--data", f"kind=synthetic_text,prompt_tokens={prompt_tokens},output_tokens={output_tokens}",
        "--output", f"kind=json,path={report}",
        "--disable-console",
    ]
    env = {**os.environ, **OFFLINE_ENV}
    # RUSAGE_CHILDREN counts every descendant once it has been waited for: GuideLLM joins its
    # spawned workers and multiprocessing Manager, so the delta covers the whole tree. It is only
    # exact if the caller reaps no other children meanwhile (e.g. from another thread).
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(out_dir / f"{name}.log", "w") as log:
        # cwd=out_dir: GuideLLM's settings read a `.env` from the working directory.
        rc = subprocess.run(cmd, cwd=out_dir, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if rc != 0 or not report.exists():
        tail = (out_dir / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"guidellm exited with {rc}; log {out_dir / f'{name}.log'}:\n{tail}")
    return json.loads(report.read_text()), cpu, wall


def run_guidellm(url: str, concurrency: int, requests: int, output_tokens: int, prompt_tokens: int,
                 out_dir: Path, *, endpoint: str = "/v1/chat/completions", model: str | None = None,
                 measure_startup: bool = True) -> dict:
    """Run GuideLLM at a fixed concurrency for a fixed number of requests; return its numbers.

    Sends streaming requests to `url` + `endpoint` (/v1/chat/completions or /v1/completions) with
    stream_options {include_usage, continuous_usage_stats}, max_completion_tokens (max_tokens for
    /v1/completions) = output_tokens and ignore_eos. Without `model` GuideLLM sends the first id
    GET /v1/models lists (asked once, by its main process). Files land in out_dir:
    guidellm.json / .log, and startup.json / .log for the start-up baseline run.

    Returned keys, and where each comes from in GuideLLM's JSON (B = benchmarks[0],
    M = B.metrics, S = "successful" group):
      completed, errored, incomplete  M.request_totals.{successful,errored,incomplete}
      output_tokens        M.output_token_count.S.total_sum. Per request this is the server's
                           usage.completion_tokens. Without usage GuideLLM does NOT count chunks:
                           it falls back to the output_tokens it asked for, even if fewer came
                           (and ITL / tok/s are then computed from that number too).
      prompt_tokens_median M.prompt_token_count.S.median (server usage.prompt_tokens, else
                           GuideLLM's own count of its synthetic prompt)
      wall_s               B.duration: first request start to last request end, i.e. the
                           benchmark proper, without GuideLLM's start-up and shut-down
      output_tok_s         M.output_tokens_per_second.S.mean, which equals output_tokens / wall_s
      ttft_ms_median, ttft_ms_p99  M.time_to_first_token_ms.S.median / .percentiles.p99:
                           request headers sent -> first chunk with content, per request,
                           stamped with time.time() inside the worker's asyncio loop
      itl_ms_median        M.inter_token_latency_ms.S.median. Careful: this is not a median of
                           token gaps. Each request contributes its mean gap,
                           (last - first content chunk) / (output_tokens - 1), weighted by
                           output_tokens - 1
      workers              B.config.strategy.worker_count: GuideLLM spawns min(concurrency, 10)
                           worker processes, each with its own asyncio loop and httpx client
      process_wall_s       wall time of the whole guidellm subprocess
      cpu_s                CPU seconds (user+sys) of the whole guidellm process tree. This includes
                           start-up: imports of torch/transformers in the main process and in every
                           spawned worker, tokenizer load, prompt generation, report writing
      startup_cpu_s        cpu_s of a run with the same concurrency (so the same number of
                           workers) but 1 request of 1 output token; cpu_s - startup_cpu_s
                           approximates the cost of the requests themselves. None if
                           measure_startup is False.
    """
    ensure_venv()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    startup_cpu = None
    if measure_startup:
        _, startup_cpu, _ = _run_once(url, concurrency, 1, 1, prompt_tokens, endpoint, model, out_dir,
                                     "startup")
    rep, cpu, wall = _run_once(url, concurrency, requests, output_tokens, prompt_tokens, endpoint,
                               model, out_dir, "guidellm")
    b = rep["benchmarks"][0]
    m = b["metrics"]
    totals = m["request_totals"]
    return {
        "completed": totals["successful"],
        "errored": totals["errored"],
        "incomplete": totals["incomplete"],
        "output_tokens": int(m["output_token_count"]["successful"]["total_sum"]),
        "prompt_tokens_median": m["prompt_token_count"]["successful"]["median"],
        "wall_s": b["duration"],
        "output_tok_s": m["output_tokens_per_second"]["successful"]["mean"],
        "ttft_ms_median": m["time_to_first_token_ms"]["successful"]["median"],
        "ttft_ms_p99": m["time_to_first_token_ms"]["successful"]["percentiles"]["p99"],
        "itl_ms_median": m["inter_token_latency_ms"]["successful"]["median"],
        "workers": b["config"]["strategy"]["worker_count"],
        "process_wall_s": wall,
        "cpu_s": cpu,
        "startup_cpu_s": startup_cpu,
        "guidellm_version": GUIDELLM_VERSION,
    }
