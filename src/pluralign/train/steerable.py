"""Training one model that trades objectives off per request, beyond the preference recipe's options:
DPA's rejection-sampling rounds, rewarded soups, and MAP's palette turned into training weights.

- `dpa`: Directional Preference Alignment (Wang et al., ACL 2024, "Arithmetic Control of LLMs for Diverse
  User Preferences"; shared/specs/training.md §4.2). Each round samples a unit direction v per prompt
  (angles in a range for two objectives, |N(0, I)| normalised for more), draws N responses from the
  current policy conditioned on v (the ``system_message`` scheme states it), keeps the best by the
  multi-objective reward's vᵀr (best-of-N, `pluralign.decode`), and fine-tunes on the kept responses
  with v stated in the prompt (the SFT recipe). [RECON: N, T and the angle range are not pinned by the
  paper; defaults here are small.]
- `train_soup`: one preference run per objective (its own pairs), then a soup directory
  (`pluralign.models.soup`) whose weights are interpolated per request.
- `palette_weights`: MAP (Wang et al., ICLR 2025; §4.5) at training time: λ* solving the palette targets
  c on reward samples of the base policy; pairs ordered by λ*ᵀr then train the policy toward
  p_0·exp(λ*ᵀr) (Theorem 2: the linear reward λ*ᵀr is sufficient).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.conditioning import ensure_vocabulary
from pluralign.conditioning import get as get_scheme
from pluralign.errors import ConfigError


def sample_directions(n: int, k: int, rng: np.random.Generator, angles: tuple[float, float] = (0.0, 90.0)) -> np.ndarray:
    """[n, k] unit directions: for k = 2, (cos θ, sin θ) with θ uniform in `angles` (degrees); otherwise
    |N(0, I)| normalised (directions with no negative component)."""
    if k == 2:
        theta = np.deg2rad(rng.uniform(angles[0], angles[1], size=n))
        return np.stack([np.cos(theta), np.sin(theta)], 1)
    v = np.abs(rng.normal(size=(n, k)))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def dpa_records(model: Any, tokenizer: Any, prompts: Sequence[Any], objectives: Sequence[str], reward: Any, *,
                n: int = 4, seed: int = 0, max_new_tokens: int = 32, angles: tuple[float, float] = (0.0, 90.0),
                conditioned: bool = True) -> list[Any]:  # fmt: skip
    """One DPA rejection-sampling round: per prompt a direction v, N samples conditioned on v, the best by
    vᵀr kept as an SFT record whose ``meta.direction`` states v. `reward` scores the objectives (in order).
    `conditioned=False` samples from the plain prompt: the first round, from a model that has never seen
    a direction statement (its samples would only be disturbed by words it cannot read yet)."""
    from pluralign.conditioning import attached
    from pluralign.data.records import Rated
    from pluralign.decode.api import Controls, decode

    scheme = attached(model)
    if conditioned and (scheme is None or scheme.name != "system_message"):
        model.pluralign_conditioning = get_scheme("system_message", objectives)
    elif not conditioned:
        model.pluralign_conditioning = None
    directions = sample_directions(len(prompts), len(objectives), np.random.default_rng(seed), angles)
    controls = [Controls(weights=v.tolist(), direction=v.tolist(), n=n, max_new_tokens=max_new_tokens, seed=seed)
                for v in directions]
    out = decode("bon", model, tokenizer, list(prompts), reward=reward, controls=controls)
    records = []
    for p, text, v, s in zip(prompts, out.texts, directions, out.scores, strict=True):
        if not text.strip():  # an empty answer can win on brevity, but is no response to train on
            continue
        records.append(Rated(p, text, dict(zip(objectives, s.tolist(), strict=True)),
                             meta={"direction": dict(zip(objectives, v.tolist(), strict=True))}))
    return records


def dpa(model_dir: str | Path, prompts: Sequence[Any], objectives: Sequence[str], reward: Any, out_dir: str | Path, *,
        rounds: int = 2, n: int = 4, loop: Mapping[str, Any] | None = None, seed: int = 0, max_new_tokens: int = 32,
        angles: tuple[float, float] = (0.0, 90.0), max_length: int = 128,
        sft: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """`rounds` of DPA rejection-sampling fine-tuning from `model_dir`; returns the last model directory
    (saved with the ``system_message`` scheme, so `decode` states each request's direction). `sft` holds
    further settings of each round's SFT recipe (e.g. ``{"use_lora": True}``; LoRA adapters are merged
    into each round's model, so the next round samples from it)."""
    from pluralign.decode.steer import load_policy
    from pluralign.runs import atomic_write_json, atomic_write_jsonl
    from pluralign.train import run_sft

    if rounds < 1:
        raise ConfigError(f"dpa: rounds must be at least 1, got {rounds}")
    batch = _effective_batch(loop)
    # A round keeps at most one response per prompt: too few prompts fail every round's SFT, so say so
    # before sampling, and before any round's files are written.
    if len(prompts) < batch:
        raise ConfigError(f"dpa: {len(prompts)} prompt(s) give at most {len(prompts)} training examples per round, "
                          f"fewer than one effective batch ({batch}: loop.batch_size x loop.grad_accum x processes); "
                          "give more prompts or a smaller loop.batch_size")
    out = Path(out_dir)
    current = Path(model_dir)
    for t in range(rounds):
        data = out / f"round{t}.jsonl"
        drawn = _sampling_key(current, t > 0, prompts, objectives, n=n, seed=seed + t, max_new_tokens=max_new_tokens,
                              angles=angles)
        if not _samples_on_disk(out, t, drawn):
            model, tokenizer = load_policy(current)
            trained = getattr(model, "pluralign_conditioning", None) is not None  # it has learnt statements
            ensure_vocabulary(tokenizer, model, get_scheme("system_message", objectives).vocabulary())
            records = dpa_records(model, tokenizer, prompts, objectives, reward, n=n, seed=seed + t,
                                  max_new_tokens=max_new_tokens, angles=angles, conditioned=trained)
            if len(records) < batch:  # empty answers were dropped: the SFT would refuse the round's data
                raise ConfigError(f"dpa round {t}: {len(records)} of {len(prompts)} prompts got a non-empty response, "
                                  f"fewer than one effective batch ({batch}); give more prompts, a larger n or "
                                  "max_new_tokens, or a smaller loop.batch_size")
            atomic_write_jsonl(data, [_row(r) for r in records])
            atomic_write_json(_key_path(out, t), drawn)  # after the data: a kill between them samples again
        result = run_sft(model=str(current), data=[str(data)], output_dir=str(out / f"round{t}"),
                         objectives=list(objectives), conditioning="system_message", max_length=max_length,
                         conditioning_params={"states": "direction"},  # requests' weights: their direction
                         **({"packing": False, "gradient_checkpointing": False} | dict(sft or {})),
                         loop=dict(loop or {}) | {"seed": seed + t})
        current = result.model_dir
    return current


def _sampling_key(source: str | Path, hashed: bool, prompts: Sequence[Any], objectives: Sequence[str],
                  **settings: Any) -> dict:
    """What a round's samples depend on, beyond the reward: the model drawn from, the prompts and the sampling
    settings. A round's model is known by its files' SHA-256 (`hashed`: a round 0 trained further since is
    another source); the run's own base by its name, as its rounds' configs know it (hashing a base of many GB
    on every run would cost more than it guards)."""
    files = sorted(f for f in Path(source).iterdir() if f.is_file()) if hashed and Path(source).is_dir() else []
    digest = hashlib.sha256(str(source).encode() if not files else b"")
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    prompts_digest = hashlib.sha256(json.dumps(list(prompts), sort_keys=True).encode()).hexdigest()
    return {"source": digest.hexdigest(), "prompts": prompts_digest, "objectives": list(objectives),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}


def _key_path(out: Path, t: int) -> Path:
    return out / f"round{t}.sampling.json"


def _samples_on_disk(out: Path, t: int, key: dict) -> bool:
    """Whether round t's samples on disk are the ones `key` would draw, so a rerun (a resume) trains on the very
    data its checkpoints saw: drawn again, they need not repeat bit for bit (sampling on a GPU). Samples of
    another model or settings, under checkpoints trained on them, are refused: continuing those checkpoints on
    new samples would mix two data sets into one model."""
    from pluralign.train.state import list_checkpoints

    path, data = _key_path(out, t), out / f"round{t}.jsonl"
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and data.is_file() else None
    except (OSError, ValueError):
        saved = None
    if saved == key:
        return True
    if saved is not None and list_checkpoints(out / f"round{t}" / "checkpoints"):
        changed = sorted(k for k in key.keys() | saved.keys() if key.get(k) != saved.get(k))
        if "source" in changed:
            what = "another model" + (f" (round {t - 1} has trained on since, e.g. a larger loop.max_steps)" if t else "")
        else:
            what = f"other settings ({', '.join(changed)})"
        raise ConfigError(f"dpa round {t}: {out / f'round{t}'} was trained on samples of {what}; its checkpoints "
                          f"cannot go on with new samples: remove {out / f'round{t}'} and the later rounds to train "
                          "them again, or use a new output_dir")
    return False


def _effective_batch(loop: Mapping[str, Any] | None) -> int:
    """Examples per optimizer step of a round's SFT (its loop settings, with the loop's defaults)."""
    from pluralign.config import from_dict
    from pluralign.train.loop import LoopConfig
    from pluralign.train.loop_config import effective_batch

    return effective_batch(from_dict(LoopConfig, dict(loop or {}), "loop."))


def _row(record: Any) -> dict:
    return {"prompt": record.prompt, "response": record.response, "ratings": record.ratings, "meta": record.meta}


def train_soup(member_configs: Sequence[Any], objectives: Sequence[str], out_dir: str | Path,
               run: Callable[[Any], Any] | None = None) -> Path:
    """Train one member per objective (preference-recipe configs, in objective order) and save the soup."""
    from pluralign.models.soup import save_soup
    from pluralign.train import run_preference

    if len(member_configs) != len(objectives):
        raise ConfigError(f"a soup needs one member per objective: {len(member_configs)} configs for {list(objectives)}")
    members = [(run or run_preference)(c).model_dir for c in member_configs]
    return save_soup(members, objectives, out_dir)


def palette_weights(rewards: Any, targets: Sequence[float]) -> np.ndarray:
    """MAP's λ* ≥ 0 for palette targets c from base-policy reward samples [S, m] (`decode.map_palette`);
    a ConfigError when the palette is infeasible on these samples."""
    from pluralign.decode.map_palette import solve_palette

    sol = solve_palette(torch.as_tensor(np.asarray(rewards, dtype=np.float64)), list(targets))
    if not sol.feasible:
        raise ConfigError(f"MAP palette {list(targets)} is not reachable from these reward samples "
                          f"(best achieved {sol.achieved.tolist()})")
    return sol.lam.double().numpy()


def palette_pairs(records: Sequence[Any], objectives: Sequence[str], targets: Sequence[float]) -> tuple[list[Any], np.ndarray]:
    """(pairs ordered by λ*ᵀr, λ*) from rated records of base-policy responses: MAP's palette as a
    training reward for DPO."""
    from pluralign.data.convert import rated_to_pairwise

    x = np.array([[r.ratings[k] for k in objectives] for r in records])
    lam = palette_weights(x, targets)
    if not np.any(lam > 0):  # the base already meets the palette: nothing to prefer
        return [], lam
    return rated_to_pairwise(records, weights=dict(zip(objectives, lam.tolist(), strict=True))), lam


def write_pairs(path: str | Path, pairs: Sequence[Any]) -> Path:
    from pluralign.data.io import write_records

    return write_records(path, list(pairs))

