"""Gold evaluation: what a model's samples are truly worth in the sandbox, with standard errors.

For responses sampled from a model on fixed evaluation prompts:
- the mean of every gold attribute;
- the utility of every group and every user of a population, and the population's share-weighted utility;
- the sequence-level KL(π‖π_base), estimated by Monte Carlo as the mean over y ~ π of
  log π(y|x) − log π_base(y|x) (both log-probs teacher-forced on the same sampled tokens);
- the win rate against the base model's samples on the same prompts under each group's (and, on request,
  one user's) utility, ties counting one half.

Standard errors are over prompts (the samples of one prompt are averaged first), since prompts are the
independent draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.errors import ConfigError
from pluralign.sandbox.attributes import ATTRIBUTES, score_batch
from pluralign.sandbox.users import Population, get_population, utility
from pluralign.sandbox.world import World

EVAL_SEED = 12345  # evaluation prompts come from their own stream, never the training prompts' seed


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t quantiles by df


def t975(df: int) -> float:
    """Student's t 97.5% quantile: the table to 9 degrees of freedom, then the Cornish–Fisher expansion around
    the normal 1.96 (within 2e-4 from 10 on). The normal quantile alone made 11 seeds' interval 12% too narrow."""
    if df in T975:
        return T975[df]
    z = 1.959964
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def seed_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% Student-t interval (NaN for a single seed: one seed gives
    no interval, and a half-width of 0 would read as certainty)."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), t975(len(v) - 1) * float(v.std(ddof=1)) / len(v) ** 0.5


def plus_minus(mean: float, half: float, spec: str = ".1f") -> str:
    """`mean ± half` as printed in reports, or the mean alone, marked, when there is no interval (one seed)."""
    return f"{mean:{spec}} ± {half:{spec.lstrip('+')}}" if np.isfinite(half) else f"{mean:{spec}} (one seed, no CI)"


def mean_se(values: np.ndarray) -> dict[str, float]:
    """{"mean", "se"} of a 1-D sample; se = std(ddof=1)/√n (NaN for a single value: one prompt gives no
    standard error, and 0 read as certainty)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se}


def eval_prompts(n: int, seed: int = EVAL_SEED) -> list[str]:
    """The fixed evaluation prompts (independent of any training seed)."""
    return World(seed).prompts(n)


def gold_eval(model: Any, *, tokenizer: Any = None, base: Any = None, population: str | Population = "default",
              n_prompts: int = 128, n_samples: int = 2, seed: int = 0, max_new_tokens: int = 48,
              user: str | None = None, prompts: Sequence[str] | None = None,
              per_user: bool = True, users_seed: int = 0) -> dict[str, Any]:
    """Gold metrics of `model` (a directory or a loaded model) on `n_prompts` evaluation prompts.

    `base` (a directory or a loaded model) adds KL(π‖π_base) and win rates against the base; `user` (an
    id like "g1-u3") adds that user's win rate. `users_seed` is who the users are, as in
    `pluralign.sandbox.feedback.generate`: the people whose feedback trained the model. Sampling is at temperature 1 (the model's own
    distribution, which the KL estimate requires) with a fixed seed, so results are reproducible.
    """
    if prompts is not None:  # a lone text was evaluated as one prompt per character
        from pluralign.decode.api import check_prompts

        check_prompts(prompts)
    if (prompts is None and n_prompts < 1) or n_samples < 1 or (prompts is not None and not len(prompts)):
        raise ConfigError(f"gold evaluation needs at least one prompt and one sample per prompt, got "
                          f"{len(prompts) if prompts is not None else n_prompts} prompt(s) x {n_samples}")
    pop = population if isinstance(population, Population) else get_population(population)
    users = pop.users(users_seed)  # users(): another person under each id than feedback drawn with users_seed wrote
    if user is not None:  # checked before sampling; without a base the user's win rate was dropped unsaid
        if base is None:
            raise ConfigError(f"user {user!r}: a user's win rate is against the base model; give the base (--base)")
        _find_user(users, user)
    model, tokenizer = _resolve(model, tokenizer)
    if isinstance(base, (str, Path)):
        # KL teacher-forces the model's token ids on the base, and the base samples with the model's tokenizer:
        # another vocabulary was an IndexError traceback after sampling, or numbers about garbled text.
        # Tokens added to the model in training (control tokens, statement words) are not the base's, and may stay.
        from pluralign.models.load import vocabulary_mismatch

        base, base_tokenizer = _resolve(base, None)
        if vocabulary_mismatch(tokenizer, base_tokenizer, ours_may_add=True):
            raise ConfigError("the model and the base have different tokenizers; KL and win rates against the base "
                              "compare token sequences of one vocabulary, so give a base with the model's tokenizer")
    prompts = list(prompts) if prompts is not None else eval_prompts(n_prompts)
    samples = _sample(model, tokenizer, prompts, n_samples, seed, max_new_tokens)
    x = attributes_of(prompts, samples.texts)  # [P, S, A]
    out: dict[str, Any] = {
        "n_prompts": len(prompts), "n_samples": n_samples,
        "attributes": {a: mean_se(x[:, :, i].mean(1)) for i, a in enumerate(ATTRIBUTES)},
        "groups": {g.name: mean_se(utility(g.vector(), x).mean(1)) for g in pop.groups},
        "population_utility": mean_se(sum(s * utility(g.vector(), x).mean(1) for g, s in zip(pop.groups, pop.shares, strict=True))),
        "length": mean_se(np.array([[len(t) for t in row] for row in samples.token_ids], dtype=float).mean(1)),
    }
    if per_user:
        out["users"] = {u.id: mean_se(utility(u.vector(), x).mean(1)) | {"group": u.group} for u in users}
    out["kl"] = out["win_rate"] = None
    if base is not None:
        base_model, _ = _resolve(base, tokenizer)
        out["kl"] = mean_se(sequence_kl(model, base_model, samples).mean(1))
        base_samples = _sample(base_model, tokenizer, prompts, n_samples, seed + 1, max_new_tokens)
        xb = attributes_of(prompts, base_samples.texts)
        weights = {g.name: g.vector() for g in pop.groups}
        if user is not None:
            weights[user] = _find_user(users, user).vector()
        out["win_rate"] = {name: mean_se(win_indicator(utility(w, x), utility(w, xb)).mean(1))
                           for name, w in weights.items()}
    return out


def win_indicator(u_model: np.ndarray, u_base: np.ndarray) -> np.ndarray:
    """1 where the model's sample beats the base's paired sample, 0.5 on a tie, else 0."""
    return (u_model > u_base) + 0.5 * (u_model == u_base)


def sequence_kl(model: Any, base: Any, samples: Any) -> np.ndarray:
    """[P, S] log π(y|x) − log π_base(y|x) for each sample y of `samples` (drawn from `model`)."""
    return sample_logps(model, samples) - sample_logps(base, samples)


def sample_logps(model: Any, samples: Any, batch_size: int = 64) -> np.ndarray:
    """[P, S] teacher-forced log-probability under `model` of each sampled token sequence (the exact
    generated ids, EOS included), summed over the sequence."""
    from pluralign.models.logprobs import completion_sums

    prompts = [p for p, per in zip(samples.prompt_ids, samples.token_ids, strict=True) for _ in per]
    sums = completion_sums(model, prompts, [ids for per in samples.token_ids for ids in per], batch_size)
    return sums.numpy().reshape(len(samples.token_ids), -1)


def _sample(model: Any, tokenizer: Any, prompts: list[str], n: int, seed: int, max_new_tokens: int):
    from pluralign.decode.sampler import sample

    return sample(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)


def attributes_of(prompts: list[str], texts: list[list[str]]) -> np.ndarray:
    """Gold attributes as [P, S, A]."""
    flat = score_batch([p for p, row in zip(prompts, texts, strict=True) for _ in row], [t for row in texts for t in row])
    return flat.reshape(len(prompts), -1, len(ATTRIBUTES))


def _resolve(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """A directory becomes (model, tokenizer); a loaded model keeps the given tokenizer, or gets the world's
    (every sandbox model shares the world's fixed word vocabulary)."""
    if isinstance(model, (str, Path)):
        from pluralign.sandbox.base import load

        loaded, tok = load(model)
        return loaded, tokenizer or tok
    return model, tokenizer or World().tokenizer()


def _find_user(users: list, user_id: str):
    for u in users:
        if u.id == user_id:
            return u
    raise ConfigError(f"no user '{user_id}' in this population; ids look like {users[0].id}..{users[-1].id}")


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a `gold_eval` result (per-user rows left out: see the JSON)."""
    rows = [(f"attribute/{a}", v) for a, v in result["attributes"].items()]
    rows += [(f"utility/{g}", v) for g, v in result["groups"].items()]
    rows += [("utility/population", result["population_utility"]), ("length (tokens)", result["length"])]
    if result.get("kl") is not None:
        rows.append(("KL(model || base)", result["kl"]))
        rows += [(f"win rate vs base/{g}", v) for g, v in result["win_rate"].items()]
    width = max(28, *(len(name) + 2 for name, _ in rows))  # long group names ("professionals") pushed their row out of line
    lines = [f"gold evaluation: {result['n_prompts']} prompts x {result['n_samples']} samples", ""]
    lines.append(f"{'metric':<{width}}{'mean':>10}{'± se':>10}")
    se = lambda v: f"{v['se']:>10.4f}" if np.isfinite(v["se"]) else f"{'-':>10}"
    lines += [f"{name:<{width}}{v['mean']:>10.4f}{se(v)}" for name, v in rows]
    return "\n".join(lines)
