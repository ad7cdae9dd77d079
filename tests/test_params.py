import re
from pathlib import Path

import pytest

from perfkit.studies import params
from perfkit.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name,studies", [
    ("demo.yaml", list(params.study_names())), ("smoke.yaml", list(params.study_names())),
    # a fleet needs the user's proxy and servers: its own file
    ("ollama-qwen2.5.yaml", [s for s in params.study_names() if s != "fleet"]), ("ollama-fleet.yaml", ["fleet"]),
    ("cluster-fleet.yaml", ["fleet"])])
def test_shipped_parameter_sets_validate(name, studies):
    p = params.load(ROOT / "params" / name, check_models=False)
    assert p.enabled() == studies


@pytest.mark.parametrize("text,match", [
    ("name: x\nstudiez: {}\n", r"p.yaml: unknown key 'studiez'; allowed here: name, description, backend"),
    ("name: x\nstudies:\n  cold_start:\n    model: m\n    reps: many\n", r"p.yaml: studies.cold_start.reps: .*integer"),
    ("name: x\nstudies:\n  cold_start:\n    model: m\n    states: [cold]\n",
     r"studies.cold_start.states: unknown cache state 'cold'; allowed: .*cold_disk, cold_memory, .*warm_cached"),
    ("name: x\nstudies:\n  cold_start:\n    model: m\n    strategies: [prewarm]\n",
     r"unknown warmup strategy 'prewarm'; allowed: none, preload, keep_warm"),
    ("name: x\nstudies:\n  config_tuning:\n    model: m\n    settings: [{OLLAMA_KV_CACHE_TYPE: q5}]\n",
     r"studies.config_tuning.settings: entry 0: OLLAMA_KV_CACHE_TYPE='q5' is not allowed; allowed: f16 \| q8_0 \| q4_0"),
    ("name: x\nstudies:\n  model_size:\n    models: [a, b]\n    extra: 1\n",
     r"unknown key 'studies.model_size.extra'; allowed here: models, reps"),
    ("name: x\nbackend: {kind: ollama}\nstudies: {}\n", r"backend: Value error|backend: backend kind 'ollama' needs a url"),
    ("name: x\nbackend: {kind: sglang, url: 'http://h:1'}\nstudies: {}\n",
         r"backend.kind: Input should be 'embedded', 'ollama', 'llama-server', 'openai' or 'vllm'"),
    ("- a list\n", r"expected a mapping at the top level"),
    ("name: [unclosed\n", r"not valid YAML"),
])
def test_bad_files_name_file_key_and_allowed(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        params.load(write(tmp_path, text), check_models=False)


def test_unknown_model_in_the_embedded_store(tmp_path, monkeypatch):
    store = tmp_path / "models"
    store.mkdir()
    (store / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("PERFKIT_MODELS_DIR", str(store))
    p = write(tmp_path, "name: x\nstudies:\n  model_size:\n    models: [tiny, huge]\n")
    with pytest.raises(ConfigError, match=r"studies.model_size.models\[1\]: unknown model 'huge'; allowed: tiny"):
        params.load(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such parameter file"):
        params.load("nope.yaml")


CS = "name: x\nstudies:\n  cold_start:\n    model: m\n"


@pytest.mark.parametrize("text,match", [
    (CS + "    idle_gaps_s: [-1]\n", r"p.yaml: studies.cold_start.idle_gaps_s: .*each 0 ≤ gap ≤ 86400"),
    (CS + "    idle_gaps_s: []\n", r"p.yaml: studies.cold_start.idle_gaps_s: a non-empty list of idle gaps"),
    (CS + "    states: []\n", r"p.yaml: studies.cold_start.states: .*at least 1 item"),
    (CS + "    states: [warm, warm]\n", r"studies.cold_start.states: cache state 'warm' is listed twice"),
    (CS + "    reps: 1000000000\n", r"p.yaml: studies.cold_start.reps: .*less than or equal to 10000"),
    (CS + "    reps: 1.0e+9\n", r"p.yaml: studies.cold_start.reps: .*less than or equal to 10000"),
    (CS + "    num_predict: 10000000\n", r"studies.cold_start.num_predict: .*less than or equal to 131072"),
    ("name: x\nstudies:\n  model_size:\n    models: [a, a]\n", r"p.yaml: studies.model_size.models: model 'a' is listed twice"),
    ("name: x\nstudies:\n  quantization:\n    models: [a, b, a]\n", r"studies.quantization.models: model 'a' is listed twice"),
    ("name: x\nstudies:\n  config_tuning:\n    model: m\n    settings: [{}]\n    requests: 100001\n",
     r"studies.config_tuning.requests: .*less than or equal to 100000"),
    ("name: x\nstudies:\n  config_tuning:\n    model: m\n    settings: [{}]\n    concurrency: [1, 5000]\n",
     r"studies.config_tuning.concurrency: a non-empty list of integers 1 ≤ clients ≤ 1024"),
    ("name: x\nbackend: {kind: ollama, url: 'localhost:11434'}\nstudies: {cold_start: {model: m}}\n",
     r"p.yaml: backend.url: expected an http:// or https:// URL with a host"),
    ("name: x\nbackend: {kind: ollama, url: 'ftp://h:1'}\nstudies: {cold_start: {model: m}}\n", r"backend.url: expected an http://"),
    ("name: x\nbackend: {kind: ollama, url: 'http://h:99999'}\nstudies: {cold_start: {model: m}}\n", r"backend.url: expected"),
    ("name: x\nbackend: {url: 'http://h:1'}\nstudies: {cold_start: {model: m}}\n",
     r"backend: url is not used with kind 'embedded' \(perfkit picks its port\)"),
    ("name: x\nstudies: {}\n", r"p.yaml: studies: no study enabled; set at least one of: cold_start, model_size"),
    ("name: ../../../x\nstudies: {cold_start: {model: m}}\n",
     r"p.yaml: name: .*use letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64 characters"),
    ("name: " + "n" * 300 + "\nstudies: {cold_start: {model: m}}\n", r"p.yaml: name: .*at most 64 characters"),
    ("name: x\nname: y\nstudies: {cold_start: {model: m}}\n", r"not valid YAML: duplicate key 'name'"),
    (CS + "    reps: yes\n", r"p.yaml: studies.cold_start.reps: a number, not true"),
])
def test_values_that_would_fail_later_or_do_nothing_are_refused(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        params.load(write(tmp_path, text), check_models=False)


def test_files_that_are_not_parameter_files(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not a parameter file"):
        params.load(tmp_path)
    (tmp_path / "b.yaml").write_bytes(b"\x00\x01\x02GGUF")
    with pytest.raises(ConfigError, match=r"b.yaml: a binary file, not a YAML parameter file"):
        params.load(tmp_path / "b.yaml")
    (tmp_path / "l.yaml").write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"l.yaml: not UTF-8 text"):
        params.load(tmp_path / "l.yaml")


def test_a_safe_name_and_good_values_pass(tmp_path):
    p = params.load(write(tmp_path, "name: my-run_1.2\nbackend: {kind: ollama, url: 'https://gpu.example:443/'}\n"
                                    "studies: {cold_start: {model: m, idle_gaps_s: [0, 60], reps: 10000}}\n"),
                    check_models=False)
    assert p.name == "my-run_1.2" and p.studies.cold_start.reps == 10000


def test_scheme_a_delays_are_checked(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\nstudies: {cold_start: {model: smollm2-135m-q4_1, scheme_a_delays_s: [-1]}}\n")
    with pytest.raises(ConfigError, match=r"studies.cold_start.scheme_a_delays_s: a list of delays"):
        params.load(p, check_models=False)


def test_merge_keys_and_stdin_are_accepted(tmp_path, monkeypatch):
    import io
    import sys

    text = ("name: merged\nsampling: &s {interval_s: 0.2}\nstudies:\n  cold_start:\n    <<: {states: [warm], reps: 2}\n"
            "    model: m\n    reps: 3\n")
    p = params.load(write(tmp_path, text), check_models=False)
    assert p.studies.cold_start.states == ["warm"] and p.studies.cold_start.reps == 3  # the explicit key wins
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert params.load("-", check_models=False).name == "merged"


@pytest.mark.parametrize("text,match", [
    ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
                                             for i in range(8)), r"p.yaml: its aliases expand to more than"),
    ("name: x\nstudies: " + "[" * 5000 + "]" * 5000 + "\n", r"p.yaml: nested more than 64 levels deep"),
    ("name: x\ntimeouts: {request_s: .inf}\nstudies: {cold_start: {model: m}}\n", r"timeouts.request_s: .*finite"),
    ("name: x\nbackend: {kind: ollama, url: 'http://h:1', headers: {X-Key: 'cl\u00e9'}}\nstudies: {cold_start: {model: m}}\n",
     r"backend.headers: .*non-ASCII"),
])
def test_hostile_files_are_refused_without_echoing_them(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        params.load(write(tmp_path, text), check_models=False)
    assert "clé" not in str(e.value) and len(str(e.value)) < 400


def test_a_password_in_the_url_is_never_echoed(tmp_path):
    text = "name: x\nbackend: {kind: ollama, url: 'http://user:S3CRET@h:99999'}\nstudies: {cold_start: {model: m}}\n"
    with pytest.raises(ConfigError) as e:
        params.load(write(tmp_path, text), check_models=False)
    assert "S3CRET" not in str(e.value)


def test_every_problem_of_a_file_is_reported_at_once_with_its_line(tmp_path):
    from perfkit.studies.params import load

    p = tmp_path / "two.yaml"
    p.write_text("name: t\nstudies:\n  cold_start:\n    model: smollm2-135m-q4_1\n    repz: 3\n"
                 "  model_size:\n    modelz: [a]\n")
    with pytest.raises(ConfigError) as e:
        load(p, check_models=False)
    msg = str(e.value)
    assert msg.startswith(f"{p}: 2 problems:")
    assert re.search(r"unknown key 'studies.cold_start.repz'; allowed here: model, .* \(line 5\)", msg)
    assert re.search(r"unknown key 'studies.model_size.modelz'; allowed here: models, .* \(line 7\)", msg)
    assert "Field required" not in msg  # the misspelt key is said once, as the unknown one
    # A run of one study validates that study's section (and the shared ones), not the others'.
    with pytest.raises(ConfigError, match=r"unknown key 'studies.cold_start.repz'; allowed here: .* \(line 5\)$"):
        load(p, check_models=False, only=["cold_start"])
    p.write_text("name: t\nstudies:\n  cold_start:\n    model: smollm2-135m-q4_1\n  model_size:\n    modelz: [a]\n")
    assert load(p, check_models=False, only=["cold_start"]).enabled() == ["cold_start"]
