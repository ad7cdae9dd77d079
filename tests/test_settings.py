import pytest

from perfkit.core.errors import ConfigError
import perfkit  # noqa: F401  (the server kinds register their settings names)
from perfkit.core.settings import parse_keep_alive_s
from perfkit.kinds.ollama.settings import to_env as to_ollama_env
from perfkit.kinds.llamacpp.flags import check_applied, to_flags as to_llama_server_flags


def test_one_table_translates_ollama_names_to_flags():
    flags = to_llama_server_flags({"OLLAMA_FLASH_ATTENTION": 1, "OLLAMA_NUM_PARALLEL": 4, "OLLAMA_KV_CACHE_TYPE": "q8_0",
                                   "OLLAMA_CONTEXT_LENGTH": 8192, "OLLAMA_KEEP_ALIVE": "5m",
                                   "OLLAMA_MAX_LOADED_MODELS": 2, "num_thread": 2, "num_batch": 256})
    assert flags == ["-fa", "on", "-np", "4", "-ctk", "q8_0", "-ctv", "q8_0", "-c", "8192",
                     "--sleep-idle-seconds", "300", "--models-max", "2", "-t", "2", "-b", "256", "-ub", "256"]
    assert to_llama_server_flags({"OLLAMA_FLASH_ATTENTION": 0}) == ["-fa", "off"]
    assert to_llama_server_flags({"OLLAMA_FLASH_ATTENTION": "auto"}) == ["-fa", "auto"]
    assert to_llama_server_flags({"OLLAMA_KEEP_ALIVE": -1}) == []  # forever: no idle sleep


@pytest.mark.parametrize("settings,match", [
    ({"OLLAMA_NUM_PARALEL": 2}, "unknown setting 'OLLAMA_NUM_PARALEL'; allowed: OLLAMA_FLASH_ATTENTION"),
    ({"OLLAMA_KV_CACHE_TYPE": "q5_1"}, "allowed: f16 | q8_0 | q4_0"),
    ({"OLLAMA_NUM_PARALLEL": 0}, "allowed: an integer ≥ 1"),
    ({"OLLAMA_KEEP_ALIVE": "soon"}, "OLLAMA_KEEP_ALIVE='soon' is not allowed"),
    ({"OLLAMA_FLASH_ATTENTION": "maybe"}, "allowed: 1, 0 or auto"),
])
def test_bad_settings_name_key_and_allowed(settings, match):
    with pytest.raises(ConfigError, match=match):
        to_llama_server_flags(settings)


def test_keep_alive_durations():
    assert parse_keep_alive_s("1h30m") == 5400
    assert parse_keep_alive_s("90s") == 90 and parse_keep_alive_s(-1) == -1 and parse_keep_alive_s("250ms") == 0.25


def test_ollama_env_excludes_per_request_options():
    assert to_ollama_env({"OLLAMA_NUM_PARALLEL": 2, "num_thread": 4}) == {"OLLAMA_NUM_PARALLEL": "2"}


def test_check_applied_reads_the_model_process_arguments():
    args = ["llama-server", "--ctx-size", "4096", "--flash-attn", "on", "--parallel", "4"]
    assert check_applied({"OLLAMA_CONTEXT_LENGTH": 4096, "OLLAMA_FLASH_ATTENTION": 1, "OLLAMA_NUM_PARALLEL": 4}, args) == {
        "OLLAMA_CONTEXT_LENGTH": True, "OLLAMA_FLASH_ATTENTION": True, "OLLAMA_NUM_PARALLEL": True}
    assert check_applied({"OLLAMA_NUM_PARALLEL": 2, "OLLAMA_KV_CACHE_TYPE": "q8_0"}, args) == {
        "OLLAMA_NUM_PARALLEL": False, "OLLAMA_KV_CACHE_TYPE": False}


def test_speculative_decoding_settings_become_the_draft_flags():
    from pathlib import Path

    flags = to_llama_server_flags({"draft_model": "smollm2-135m-q4_0", "draft_max": 6, "draft_min": 1},
                                  models_dir=Path("/store"))
    assert flags == ["--spec-type", "draft-simple", "--spec-draft-model", "/store/smollm2-135m-q4_0.gguf",
                     "--spec-draft-n-max", "6", "--spec-draft-n-min", "1"]
    child = ["llama-server", "--spec-type", "draft-simple", "--model-draft", "/store/smollm2-135m-q4_0.gguf",
             "--spec-draft-n-max", "6"]
    assert check_applied({"draft_model": "smollm2-135m-q4_0", "draft_max": 6, "draft_min": 1}, child,
                         Path("/store")) == {"draft_model": True, "draft_max": True, "draft_min": False}
    assert to_ollama_env({"draft_model": "x", "OLLAMA_NUM_PARALLEL": 2}) == {"OLLAMA_NUM_PARALLEL": "2"}
    with pytest.raises(ConfigError, match="draft_max=0 is not allowed; allowed: an integer ≥ 1"):
        to_llama_server_flags({"draft_max": 0})
