"""`model=x.gguf`: a GGUF file is converted once into a plain model directory in the cache and read from there
(the conversion itself, on a real GGUF file, runs in `make real-model`: tests/test_real_model.py). Here: the
rebuilt model holds the loaded weights without the GGUF quantization config, so it saves; the cache is keyed
by the file and reused; a file transformers cannot read, or a missing `gguf` package, is a clear error."""

from __future__ import annotations

import sys

import pytest
import torch

from pluralign.errors import PluralignError
from pluralign.models import gguf
from pluralign.models.load import load_model, load_tokenizer, resolve


def test_the_rebuilt_model_holds_the_weights_without_the_quantization_config(tiny_llama_dir, tmp_path):
    loaded = load_model(str(tiny_llama_dir))
    loaded.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF load leaves in the config
    model = gguf.rebuilt(loaded)
    assert not hasattr(model.config, "quantization_config")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))
    model.save_pretrained(tmp_path / "saved")  # what a GGUF-loaded model refuses
    ids = torch.tensor([[1, 5, 7]])
    assert torch.allclose(load_model(str(tmp_path / "saved"))(ids).logits, loaded(ids).logits)


def test_a_gguf_path_resolves_to_its_cached_conversion_made_once(tmp_path, monkeypatch, tiny_llama_dir):
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(src, out):  # a stand-in for the dequantization: copy a model directory
        import shutil

        calls.append(src)
        shutil.copytree(tiny_llama_dir, out)
        return out

    monkeypatch.setattr(gguf, "convert", convert)
    path = tmp_path / "model.Q4.gguf"
    path.write_bytes(b"GGUF v3")
    first = resolve(str(path))
    assert resolve(str(path)) == first and len(calls) == 1 and first.startswith(str(tmp_path / "cache" / "gguf"))
    assert load_tokenizer(str(path)) is not None and load_model(str(path)) is not None
    path.write_bytes(b"GGUF v3, another file")  # changed: converted anew
    assert resolve(str(path)) != first and len(calls) == 2


def test_unreadable_gguf_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file")
    monkeypatch.setitem(sys.modules, "gguf", None)  # the package missing
    with pytest.raises(PluralignError, match=r"broken.gguf': reading a GGUF model needs the gguf package: pip install gguf"):
        resolve(str(path))
    monkeypatch.setitem(sys.modules, "gguf", type(sys)("gguf"))  # present, but the file is no GGUF
    with pytest.raises(PluralignError, match=r"cannot read GGUF model '.*broken.gguf'"):
        resolve(str(path))
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())
