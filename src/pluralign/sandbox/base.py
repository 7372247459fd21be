"""The sandbox base model: a small Llama-style LM trained on the world's corpus, cached by config hash.

Two phases through the project's training loop (`pluralign.train.loop.train`): language modelling on free
responses (the "pretraining corpus"), then a short fine-tune on `question: … answer: …` requests with the
loss on the answer only. The model therefore answers in the request format with the grammar's full
diversity of styles, which is what alignment methods then reshape.

Reproducibility: the weights are a function of (seed, config, world source, library versions): fixed
thread count, deterministic algorithms, seeded init and a seeded data order. The cache key hashes all of
them, so a changed grammar or config never reuses stale weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pluralign.config import option
from pluralign.runs import atomic_write_bytes, atomic_write_json, cache_root, follow_umask
from pluralign.sandbox import attributes, world

SANDBOX_VERSION = 1  # bump when the build procedure changes in a way the hashed inputs do not capture
MANIFEST = "manifest.json"
INFO = "sandbox.json"


@dataclasses.dataclass
class SandboxConfig:
    """How the base model is built. `SandboxConfig.tiny()` is the preset for tests (~15 s)."""

    hidden_size: int = option(64, help="Model width.")
    num_layers: int = option(2, help="Transformer blocks.")
    num_heads: int = option(4, help="Attention heads.")
    n_corpus: int = option(3000, help="Free responses in the pretraining corpus.")
    n_requests: int = option(3000, help="(request, response) pairs for the request-format fine-tune.")
    pretrain_steps: int = option(250, help="Optimizer steps of language modelling on the corpus.")
    finetune_steps: int = option(250, help="Optimizer steps of fine-tuning on requests (loss on answers).")
    batch_size: int = option(32, help="Sequences per optimizer step.")
    learning_rate: float = option(3e-3, help="Peak AdamW learning rate (linear decay, 5% warmup).")
    max_length: int = option(96, help="Longest training sequence in tokens (request + answer).")
    num_threads: int = option(1, help="torch CPU threads while building (fixed, since results depend on it; one thread is also the fastest for a model this small).")

    @classmethod
    def tiny(cls) -> SandboxConfig:
        """A much smaller model and schedule for tests: builds in about 15 s on 2 cores."""
        return cls(hidden_size=32, num_layers=1, num_heads=2, n_corpus=600, n_requests=600,
                   pretrain_steps=40, finetune_steps=60, batch_size=16, learning_rate=5e-3)


def config_hash(seed: int, config: SandboxConfig) -> str:
    """SHA-256 of everything the weights depend on: config, seed, the source of the world, the attributes, the
    tiny model and word tokenizer (`pluralign.models.tiny`) and this builder, and library versions."""
    import transformers

    from pluralign.models import tiny

    sources = [Path(m.__file__).read_bytes() for m in (world, attributes, tiny)] + [Path(__file__).read_bytes()]
    key = {
        "version": SANDBOX_VERSION, "seed": seed, "config": dataclasses.asdict(config),
        "sources": [hashlib.sha256(s).hexdigest() for s in sources],
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def build_base(out_dir: str | os.PathLike | None = None, seed: int = 0, config: SandboxConfig | None = None,
               *, force: bool = False, verbose: bool = False) -> Path:
    """Build (or reuse from the cache) the base model for `seed` and return its directory, loadable with
    `pluralign.models.load.load_model`/`load_tokenizer` or `transformers.AutoModelForCausalLM`.

    The model lives in `cache_root()/sandbox/base-<hash>`; with `out_dir`, its files are also copied there
    and `out_dir` is returned. `force` rebuilds even when cached.
    """
    config = config or SandboxConfig()
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    digest = config_hash(seed, config)
    cached = cache_root() / "sandbox" / f"base-{digest[:16]}"
    if force or not (cached / MANIFEST).exists():
        _build_into(cached, seed, config, digest, force=force, verbose=verbose)
    if out_dir is None:
        return cached
    out = Path(out_dir)
    for f in sorted(cached.iterdir()):
        if f.is_file():
            atomic_write_bytes(out / f.name, f.read_bytes())
    return out


def check_out_dir(out: Path) -> None:
    """`out_dir` may be new, empty, or an earlier copy of a base (its files are replaced). Anything else holds
    someone's files: a trained model or an adapter there was overwritten in place, and a leftover
    adapter_config.json made the copy load as an adapter without a base."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / INFO).is_file())):
        from pluralign.errors import ConfigError

        raise ConfigError(f"{out} exists and is not a copy of a sandbox base model (no {INFO}); its files would be "
                          "overwritten: choose a new or empty directory", field="out")


def _build_into(target: Path, seed: int, config: SandboxConfig, digest: str, *, force: bool,
                verbose: bool) -> None:
    """Train in a temporary sibling directory and rename it into place, so a crash or a concurrent build
    never leaves a half-written model under the cache key."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        t0 = time.perf_counter()
        # The loop prints its config and transformers a save progress bar: noise for a cached build step.
        with _deterministic(config.num_threads), _quiet(not verbose):
            model, tok, losses = train_base(seed, config, verbose=verbose)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        info = {"seed": seed, "config": dataclasses.asdict(config), "config_hash": digest,
                "sandbox_version": SANDBOX_VERSION, "final_losses": losses}
        atomic_write_json(tmp / INFO, info)
        write_manifest(tmp, extra={"config_hash": digest, "build_seconds": round(time.perf_counter() - t0, 2)})
        follow_umask(tmp)  # mkdtemp made it private, transformers its weights: the cache is an ordinary directory
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same build first: keep theirs (same weights)
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def train_base(seed: int, config: SandboxConfig, *, verbose: bool = False):
    """Train a fresh base model in memory: returns (model, tokenizer, final losses per phase)."""
    from pluralign.data.collate import SFTCollator
    from pluralign.models.tiny import tiny_llama
    from pluralign.train.loop import LoopConfig, train

    w = world.World(seed)
    tok = w.tokenizer()
    model = tiny_llama(len(tok), hidden_size=config.hidden_size, num_layers=config.num_layers,
                       num_heads=config.num_heads, max_position_embeddings=max(128, config.max_length), seed=seed,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    # The world's texts are raw LM text and already-rendered "question: … answer:" requests: no template.
    collate = SFTCollator(tok, max_length=config.max_length, chat_template="never")
    # Pretraining texts have an empty prompt: the collator conditions them on BOS and scores every token.
    phases = [("pretrain", [("", t) for t in w.corpus(config.n_corpus)], config.pretrain_steps),
              ("finetune", w.pairs(config.n_requests), config.finetune_steps)]
    losses = {}
    for i, (name, data, steps) in enumerate(phases):
        loop = LoopConfig(learning_rate=config.learning_rate, batch_size=config.batch_size, max_steps=steps,
                          warmup_ratio=0.05, seed=seed * 10 + i, log_every=max(1, steps), progress=verbose)
        result = train(model, data, collate, nll_step, loop)
        losses[name] = round(float(result.metrics.get("loss", float("nan"))), 4)
    model.eval()
    return model, tok, losses


def nll_step(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Per-sequence mean negative log-likelihood of the completion tokens (teacher forcing)."""
    from pluralign.models.logprobs import sequence_logps

    sums, n_tokens = sequence_logps(model, batch)
    return -sums / n_tokens.clamp_min(1), {}


@contextlib.contextmanager
def _quiet(enabled: bool):
    if not enabled:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _deterministic(threads: int):
    """Fixed thread count and deterministic kernels while building; the caller's settings come back after."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(model_dir: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write `manifest.json`: SHA-256 of the weights and of every other file in `model_dir`."""
    model_dir = Path(model_dir)
    files = {f.name: sha256_file(f) for f in sorted(model_dir.iterdir()) if f.is_file() and f.name != MANIFEST}
    weights = {k: v for k, v in files.items() if k.endswith(".safetensors")}
    manifest = {"weights_sha256": weights.get("model.safetensors") or next(iter(weights.values()), None),
                "files": files, **(extra or {})}
    atomic_write_json(model_dir / MANIFEST, manifest)
    return manifest


def read_manifest(model_dir: str | os.PathLike) -> dict:
    """The `manifest.json` of `write_manifest`: SHA-256 of the weights and of every other file, plus what the
    builder added (the base's config)."""
    return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8"))


def weights_hash(model_dir: str | os.PathLike) -> str:
    """SHA-256 of the model's weights file."""
    return sha256_file(Path(model_dir) / "model.safetensors")


def load(model_dir: str | os.PathLike) -> tuple[Any, Any]:
    """(model, tokenizer) of a model directory (the base or any aligned model), in eval mode."""
    from pluralign.models.load import load_model, load_tokenizer

    return load_model(model_dir), load_tokenizer(model_dir)
