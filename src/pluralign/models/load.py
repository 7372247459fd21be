"""Loading and saving models and tokenizers: a hub id or a local directory, the same call for both.

`load_model("org/name")` and `load_model("runs/x/model")` go through `transformers`' Auto classes; a GGUF file
(`load_model("x.gguf")`) is converted once into a cached model directory (`pluralign.models.gguf`). User
mistakes (a missing directory, a directory without a model, an unknown hub id, a hub id while offline)
raise `PluralignError` with a message instead of a traceback. `trust_remote_code` stays off unless asked.

LoRA comes through peft (`pluralign.models.lora`). A directory holding a saved adapter
(``adapter_config.json``) loads as its base model with the adapter attached.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from pluralign.errors import ConfigError, PluralignError
from pluralign.models.lora import LoraSpec, add_lora, is_peft_model, peft_module, peft_quietly
from pluralign.runs import write_dir

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def load_model(name_or_path: str | os.PathLike, *, dtype: str = "auto", device: str | torch.device | None = None,
               lora: LoraSpec | None = None, trust_remote_code: bool = False,
               kind: Literal["causal", "encoder"] = "causal", gradient_checkpointing: bool = False) -> Any:
    """A `transformers` model (``kind="causal"``: AutoModelForCausalLM, ``"encoder"``: AutoModel) from a hub
    id or a local directory, in ``dtype``, on ``device`` (None: where it loads; ``"auto"``: the best one),
    with fresh LoRA adapters when ``lora`` is given. Returned in eval mode. ``gradient_checkpointing``:
    in training mode each decoder layer keeps only its input and recomputes the rest in backward."""
    from transformers import AutoModel, AutoModelForCausalLM

    if kind not in ("causal", "encoder"):
        raise ConfigError(f"model kind must be 'causal' or 'encoder', got {kind!r}")
    source = resolve(name_or_path)
    auto = AutoModelForCausalLM if kind == "causal" else AutoModel
    adapter = _adapter_base(source)
    model = _from_pretrained(auto, adapter or source, dtype=_dtype(dtype), trust_remote_code=trust_remote_code)
    mask_added_tokens(model)
    if adapter is not None:
        _grow_for_adapter(model, source)
        with peft_quietly():
            model = peft_module().PeftModel.from_pretrained(model, source, is_trainable=lora is not None)
    elif lora is not None:
        model = add_lora(model, lora, task_type="CAUSAL_LM" if kind == "causal" else "FEATURE_EXTRACTION")
    if gradient_checkpointing:
        _enable_activation_checkpointing(model)
    if device is not None:
        model = model.to(resolve_device(device))
    return model.eval()


def _grow_for_adapter(model: Any, source: str) -> None:
    """The base model's embeddings grown to the rows an adapter directory saved: peft saves the embedding
    layers whole when training added tokens (control tokens, a word-level tokenizer's statement words), and
    loads them only into a base of that size. The added rows are prompt-only tokens, as the training run's
    (`conditioning.grow_embeddings`), whose config with `pluralign_output_vocab` the adapter does not keep."""
    from safetensors import safe_open

    path = Path(source) / "adapter_model.safetensors"
    embeddings = model.get_input_embeddings()
    name = next((n for n, m in model.named_modules() if m is embeddings), None)
    if not path.is_file() or name is None:
        return
    with safe_open(str(path), framework="pt") as f:
        key = next((k for k in f.keys() if k.endswith(f"{name}.weight")), None)
        rows = f.get_slice(key).get_shape()[0] if key is not None else 0
    old = embeddings.weight.shape[0]
    if rows > old:
        model.resize_token_embeddings(rows, mean_resizing=False)
        if getattr(model.config, OUTPUT_VOCAB, None) is None:
            setattr(model.config, OUTPUT_VOCAB, old)
        mask_added_tokens(model)


def disable_dropout(model: Any) -> None:
    """Turn off the model's own dropout (LoRA's adapter dropout, a setting of the run, is kept). With dropout
    a training-mode forward scores other log-probs than the eval-mode reference, its cache and the rollouts:
    DPO's loss is not log 2 at step 0 and a policy ratio is not 1 before any update (GPT-2, OPT, BLOOM ship
    with 0.1). Some modules hold the rate as an nn.Dropout, others as a float read in forward."""
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for attr, value in vars(module).items():
            if "dropout" in attr and isinstance(value, float):
                setattr(module, attr, 0.0)


def _enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant checkpointing of every decoder layer (transformers 5 renamed the method)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def vocabulary_mismatch(ours: Any, theirs: Any, *, ours_may_add: bool) -> str | None:
    """How tokenizer `theirs` reads token ids otherwise than `ours` (the policy's), or None: a token at
    another id, or tokens of ours it lacks (with `ours_may_add`, tokens added to ours after theirs, by a
    conditioning scheme, are allowed).
    A model of another vocabulary scores other tokens than the policy's without a word, or fails on ids past
    its embedding."""
    vocab, their_vocab = ours.get_vocab(), theirs.get_vocab()
    other = sorted((i, t) for t, i in their_vocab.items() if vocab.get(t) != i)
    if other:
        return f"token {other[0][1]!r} is id {other[0][0]} there and {vocab.get(other[0][1])} in the policy's"
    extra = set(vocab) - set(their_vocab) - (set(ours.get_added_vocab()) if ours_may_add else set())
    if extra:  # added tokens are never sampled (`mask_added_tokens`); others the policy may answer with
        return f"{len(their_vocab)} vs {len(vocab)} tokens"
    return None


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False,
                   padding_side: Literal["left", "right"] | None = None) -> Any:
    """The tokenizer of a hub id or local directory, with a pad token: when it has none, EOS is used (padding
    is always masked, so this needs no new embedding)."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, resolve(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def save_model(model: Any, tokenizer: Any, out_dir: str | os.PathLike, *, merge_lora: bool = True,
               extra_files: Mapping[str, str] | None = None, write: Callable[[Path], None] | None = None,
               state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Save ``model`` and ``tokenizer`` as a HF directory that `load_model` reads back.

    A peft model is saved with its adapters merged into the weights (``merge_lora=True``; the caller's
    model is left untouched, at the cost of a temporary copy) or as an adapter directory. The directory
    is written under a temporary name next to ``out_dir`` and renamed into place, so ``out_dir`` never
    holds a half-written model. ``extra_files`` ({name: text}) are written into it too (e.g. the
    conditioning scheme, `pluralign.conditioning`), and ``write(directory)`` adds what else belongs to the
    model (a scheme's weights, person vectors) before the rename: the model appears whole or not at all.
    ``state_dict``: the weights to save in place of the model's own (its full weights gathered from the
    shards FSDP left it, `pluralign.train.parallel.full_weights`).
    """
    if merge_lora and is_peft_model(model):
        # FSDP's sharded modules cannot be copied: the gathered weights go through an adapter directory
        model = _reloaded(model, state_dict) if state_dict is not None else copy.deepcopy(model)
        model, state_dict = model.merge_and_unload(), None

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, **({"state_dict": dict(state_dict)} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if write is not None:
            write(tmp)

    return write_dir(out_dir, fill)


def _reloaded(model: Any, state_dict: Mapping[str, torch.Tensor]) -> Any:
    """A plain (unsharded) copy of peft `model` holding `state_dict`, its full weights: saved as an adapter
    directory and loaded back with its base, to be merged."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, state_dict=dict(state_dict))
        return load_model(tmp)


OUTPUT_VOCAB = "pluralign_output_vocab"  # config field: the vocabulary the model may answer with


def mask_added_tokens(model: Any) -> None:
    """Give tokens added for prompts (statement words, control tokens: ids from the config's
    `pluralign_output_vocab` on) the lowest logit, so the model never answers with them. Their output rows
    would otherwise take probability mass from every real token: the model could emit its control tokens,
    and a KL to the base model, estimated from log-probs that lost that mass, came out negative."""
    vocab = getattr(getattr(model, "config", None), OUTPUT_VOCAB, None)
    head = model.get_output_embeddings() if vocab is not None else None
    if head is None or getattr(head, "_pluralign_masked_from", None) == vocab:
        return

    def mask(module: Any, inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] > vocab:
            logits[..., vocab:] = torch.finfo(logits.dtype).min  # in place: a Linear keeps no output for backward
        return logits

    head.register_forward_hook(mask)
    head._pluralign_masked_from = vocab


def resolve(name_or_path: str | os.PathLike, where: str | None = None) -> str:
    """A local directory (checked), a GGUF file (as the directory it is converted into once,
    `pluralign.models.gguf`) or a hub id (left to the hub to check). A bad one is a ConfigError, naming
    `where` (the flag or config key that gave it) when given."""
    try:
        return _resolve(name_or_path)
    except PluralignError as e:
        if where is None:
            raise
        raise ConfigError(f"{where}: {e}") from None


def _resolve(name_or_path: str | os.PathLike) -> str:
    from pluralign.models.gguf import cached_directory

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".gguf":
            return str(cached_directory(path))
        if not path.is_dir():
            raise PluralignError(f"'{name}' is a file; a model is loaded from a directory, a .gguf file or a hub id")
        if not any((path / f).exists() for f in ("config.json", "adapter_config.json", "tokenizer_config.json")):
            raise PluralignError(f"'{name}' holds no model (no config.json or adapter_config.json)")
        return str(path)
    # `runs/dpo` has a hub id's shape (owner/name), but when `runs` is a local directory it is a path: refused
    # at once, where the hub would be retried for a minute and more before saying no.
    local = name.count("/") == 1 and Path(name.split("/")[0]).expanduser().is_dir()
    if isinstance(name_or_path, os.PathLike) or name.startswith(_PATH_PREFIXES) or name.count("/") > 1 or local or "\\" in name:
        raise PluralignError(f"model directory not found: '{name}'")
    return name


@contextlib.contextmanager
def expected_extra_keys(keys: Sequence[str]) -> Iterator[None]:
    """Within the context, transformers' load report is dropped when the only keys it reports are these
    unexpected ones: weights saved with the model that a conditioning scheme reads itself (MAH-DPO's extra
    heads), which the bare architecture rightly does not know. Any other finding is still reported."""
    if not keys:
        yield
        return

    def only_ours(record: logging.LogRecord) -> bool:
        lines = [line for line in str(record.getMessage()).splitlines() if " | " in line]
        findings = [line for line in lines if any(w in line for w in ("UNEXPECTED", "MISSING", "MISMATCH"))]
        ours = findings and all("UNEXPECTED" in line and line.split("|")[0].strip() in keys for line in findings)
        return not ours

    logger = logging.getLogger("transformers.modeling_utils")  # the logger the report goes through
    logger.addFilter(only_ours)
    try:
        yield
    finally:
        logger.removeFilter(only_ours)


def _from_pretrained(auto: Any, source: str, **kwargs: Any) -> Any:
    from huggingface_hub import constants
    from safetensors import SafetensorError

    try:
        return auto.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # a bad directory or hub id; a truncated or corrupt weights file
        if "trust_remote_code" in str(e) and not kwargs.get("trust_remote_code"):
            # transformers says to pass trust_remote_code=True, which no command or config of pluralign takes
            raise PluralignError(f"cannot load '{source}': it needs Python code of its own (its config's auto_map), "
                                 "which pluralign does not run: use a model of an architecture transformers "
                                 "implements, or, trusting that code, load_model(..., trust_remote_code=True) in "
                                 "Python") from None
        if Path(source).is_dir():
            raise PluralignError(f"cannot load '{source}': {e}") from None
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise PluralignError(f"'{source}' is not a local directory and could not be loaded from the "
                             f"Hugging Face hub{offline}: {str(e).splitlines()[0]}") from None


def is_adapter_dir(source: str | os.PathLike) -> bool:
    """Whether `source` is a directory holding a saved peft adapter (it loads as its base with the adapter)."""
    return (Path(source) / "adapter_config.json").exists()


def _adapter_base(source: str) -> str | None:
    """The base model of a saved peft adapter directory, or None when ``source`` is not one."""
    if not is_adapter_dir(source):
        return None
    base = peft_module().PeftConfig.from_pretrained(source).base_model_name_or_path
    if not base:
        raise PluralignError(f"adapter '{source}' does not name its base model (base_model_name_or_path)")
    return resolve(base)


def _dtype(name: str) -> torch.dtype | str:
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device; "auto" is CUDA, else MPS, else the CPU. A clear error for a bad name."""
    if device != "auto":
        try:
            resolved = torch.device(device)
        except RuntimeError as e:
            raise ConfigError(f"bad device {device!r}: {e}") from None
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise PluralignError(f"device {device!r} asked for, but CUDA is not available here")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
