"""A GGUF file (llama.cpp's format) as a plain transformers model directory, converted once and cached.

transformers reads GGUF with ``gguf_file=`` (it needs the `gguf` package) and dequantizes the weights to
float. A model loaded that way refuses `save_pretrained`, though, and its config keeps a
`quantization_config` that marks the float model as quantized, so nothing trained from it could be saved.
So the model is rebuilt from its config without that entry, given the loaded weights, and saved with its
tokenizer under the cache (``$PLURALIGN_CACHE`` or ~/.cache/pluralign, in ``gguf/``), keyed by the file's
path, size and modification time: later loads of the same file read that directory, and a changed file is
converted again. `pluralign.models.load.resolve` sends every ``*.gguf`` path here, so ``model=x.gguf``
works wherever a model directory does.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from pluralign.errors import PluralignError


def cached_directory(path: Path) -> Path:
    """The plain model directory of GGUF file `path`, converting it on first use."""
    from pluralign.runs import cache_root

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_root() / "gguf" / f"{path.stem}-{key}"
    if not (out / "config.json").exists():
        convert(path, out)
    return out


def convert(src: Path, out: Path) -> Path:
    """Dequantize GGUF file `src` into a plain float32 model directory `out` (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pluralign.models.load import save_model

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise PluralignError(f"'{src}': reading a GGUF model needs the gguf package: pip install gguf") from None
    t0 = time.time()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:  # not GGUF, an architecture it cannot read
        raise PluralignError(f"cannot read GGUF model '{src}': {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model = rebuilt(loaded)
    save_model(model, tokenizer, out)
    print(f"converted {src} to a model directory in {time.time() - t0:.0f} s: {out}", flush=True)
    return out


def rebuilt(loaded: Any) -> Any:
    """A fresh model of `loaded`'s architecture, without its quantization config, holding its weights."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantized: a plain float model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    if unexpected or [k for k in missing if not (tied and "lm_head" in k)]:  # a tied head has no weights of its own
        raise PluralignError(f"GGUF conversion: the rebuilt model does not match the file's weights "
                             f"(missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    return model.eval()
