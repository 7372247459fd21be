"""Simulated feedback of every kind, from a population of sandbox users.

Responses come from a model (`model_dir`, or `model` + `tokenizer`; sampled with
`pluralign.decode.sampler.sample`) or, without one, from the world's grammar. Each record is given by one
annotator drawn from the population, and its label is drawn from that annotator's Bradley–Terry model:

- pairwise / user_pairwise: `a ≻ b` with probability σ((u_a − u_b)/T); user_pairwise also names the user
  and group;
- ranked: a Plackett–Luce ordering of k responses (Plackett, 1975; Luce, 1959) with strengths exp(u/T),
  which is BT for k = 2; sampled as the order of u/T + Gumbel noise;
- binary: thumbs-up with probability σ((u − τ)/T), τ the annotator's median utility on reference grammar
  responses (so about half of typical answers pass);
- rated: every gold attribute plus Gaussian noise, clipped to its range;
- judged: a template sentence about the attribute that moved the annotator most, with the binary label's
  polarity.

Everything is a deterministic function of the seed, so the same seed writes byte-identical files.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.data.records import Binary, Judged, Pairwise, Ranked, Rated, Record
from pluralign.errors import ConfigError, PluralignError
from pluralign.sandbox.attributes import ATTRIBUTES, RANGES, score_batch
from pluralign.sandbox.users import Population, User, get_population, preference_probability, utility
from pluralign.sandbox.world import World

FEEDBACK_KINDS = ("pairwise", "user_pairwise", "ranked", "binary", "rated", "judged")

# (attribute, level, polarity) → judgment. "high"/"low" is the response's attribute relative to typical
# responses; the polarity is the annotator's verdict, so "low conciseness, negative" reads "too long".
JUDGMENTS: dict[tuple[str, str, str], str] = {
    ("relevance", "high", "positive"): "Helpful and on topic.",
    ("relevance", "low", "negative"): "The response is off topic.",
    ("relevance", "high", "negative"): "On topic, but that is not what matters here.",
    ("relevance", "low", "positive"): "Refreshingly broad.",
    ("informativeness", "high", "positive"): "Informative: it says a lot about the topic.",
    ("informativeness", "low", "negative"): "The response says too little about the topic.",
    ("informativeness", "high", "negative"): "Too much detail.",
    ("informativeness", "low", "positive"): "Keeps the detail light.",
    ("positivity", "high", "positive"): "Pleasant, upbeat tone.",
    ("positivity", "low", "negative"): "The tone is too negative.",
    ("positivity", "high", "negative"): "Too gushing.",
    ("positivity", "low", "positive"): "Sober and critical, as it should be.",
    ("conciseness", "high", "positive"): "Short and to the point.",
    ("conciseness", "low", "negative"): "The response is too long.",
    ("conciseness", "high", "negative"): "The response is too short.",
    ("conciseness", "low", "positive"): "Nice and thorough.",
    ("formality", "high", "positive"): "Appropriately formal.",
    ("formality", "low", "negative"): "The response is too casual.",
    ("formality", "high", "negative"): "The response is too stiff and formal.",
    ("formality", "low", "positive"): "Relaxed, friendly register.",
    ("safety", "high", "positive"): "Safe and appropriate.",
    ("safety", "low", "negative"): "The response contains harmful content.",
    ("safety", "high", "negative"): "Overly cautious.",
    ("safety", "low", "positive"): "Edgy, and I like it.",
    ("compliance", "high", "positive"): "Follows the instructions.",
    ("compliance", "low", "negative"): "The response ignores the instructions.",
    ("compliance", "high", "negative"): "Follows the instructions, but that is not enough.",
    ("compliance", "low", "positive"): "Ignores the instructions, but in a good way.",
}


def generate(kind: str, population: str | Population = "default", n: int = 100,
             model_dir: str | Path | None = None, seed: int = 0, *, model: Any = None, tokenizer: Any = None,
             k: int = 4, temperature: float | None = None, rating_noise: float = 0.05,
             sample_temperature: float = 1.0, max_new_tokens: int = 48, users_seed: int = 0,
             groups: Sequence[str] | None = None, judges_per_item: int = 1, rated_per_prompt: int = 1) -> list[Record]:
    """`n` feedback records of `kind` (one of `FEEDBACK_KINDS`) from `population`'s users (a name or a `Population`).

    `temperature` overrides every group's BT temperature; `k` is the list length for "ranked";
    `users_seed` fixes who the users are (the same people across feedback files), `seed` everything else;
    `groups` restricts the annotators to those groups (e.g. `["minority"]`, to align toward one group);
    `judges_per_item` different annotators judge each prompt and its responses (records i·j … i·j + j − 1 share item
    i), as in data sets where several people label the same pair, so their disagreement can be measured;
    `rated_per_prompt` ("rated") responses to one prompt each annotator rates, the data that rated → pairwise
    and rated → ranked conversions pair (they compare one person's ratings of one prompt's responses).
    """
    if kind not in FEEDBACK_KINDS:
        raise ConfigError(f"unknown feedback kind '{kind}'; choose one of: {', '.join(FEEDBACK_KINDS)}")
    if n < 1 or k < 2 or judges_per_item < 1 or rated_per_prompt < 1:
        raise ConfigError(f"need n >= 1, k >= 2, judges_per_item >= 1 and rated_per_prompt >= 1 (got n={n}, k={k}, "
                          f"judges_per_item={judges_per_item}, rated_per_prompt={rated_per_prompt})")
    # Before any sampling, and for every kind: a negative one reversed each ranking, NaN gave every verdict to one side.
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not (np.isfinite(rating_noise) and rating_noise >= 0):  # NaN wrote every rating as null
        raise ConfigError(f"rating_noise must be a finite number >= 0, got {rating_noise}", field="rating_noise")
    _check_seeds(seed=seed, users_seed=users_seed)
    pop = population if isinstance(population, Population) else get_population(population)
    world = World(seed)
    per_annotator = rated_per_prompt if kind == "rated" else 1  # records each annotator gives
    raters = -(-n // per_annotator)
    items = -(-raters // judges_per_item)
    # Drawn (from their own stream) before any response is sampled: an unknown group or a panel larger than
    # the groups' users is refused before a model samples.
    annotators = pop.draw_panels(items, judges_per_item, _stream(seed, kind, "annotators"), seed=users_seed,
                                 groups=groups)[:raters]
    prompts = world.prompts(items, _stream(seed, kind, "prompts"))
    per_prompt = {"pairwise": 2, "user_pairwise": 2, "ranked": k, "rated": per_annotator}.get(kind, 1)
    responses = _responses(prompts, per_prompt, seed, kind, model_dir=model_dir, model=model, tokenizer=tokenizer,
                           temperature=sample_temperature, max_new_tokens=max_new_tokens)
    rng = _stream(seed, kind, "labels")
    make = {"pairwise": _pairwise, "user_pairwise": _pairwise, "ranked": _ranked, "binary": _binary,
            "rated": _rated, "judged": _judged}[kind]
    out = []
    for i, user in enumerate(annotators):
        prompt, resp = prompts[i // judges_per_item], responses[i // judges_per_item]
        x = score_batch([prompt] * len(resp), resp)
        t = temperature if temperature is not None else user.temperature
        made = make(prompt, resp, x, user, t, rng, named=kind != "pairwise", rating_noise=rating_noise)
        out += made if isinstance(made, list) else [made]
    return out[:n]


def generate_file(path: str | Path, kind: str, population: str | Population = "default", n: int = 100,
                  model_dir: str | Path | None = None, seed: int = 0, **kwargs: Any) -> Path:
    """`generate(...)` written with `pluralign.data.io.write_records` (format from the extension)."""
    from pluralign.data.io import write_records

    return write_records(path, generate(kind, population, n, model_dir, seed, **kwargs))


def draw_responses(prompts: Sequence[str], k: int, *, seed: int = 0, model_dir: str | Path | None = None,
                   model: Any = None, tokenizer: Any = None, temperature: float = 1.0,
                   max_new_tokens: int = 48, stream: str = "responses") -> list[list[str]]:
    """`k` responses per prompt ([P][k]): sampled from the model when one is given, else from the grammar.
    `stream` names an independent random stream, so different uses of one seed do not share samples."""
    from pluralign.decode.api import check_prompts

    check_prompts(prompts)  # a lone text drew responses to each of its characters
    if model is None and model_dir is None:
        return World(seed).responses(list(prompts), k, rng=_stream(seed, stream, "grammar"))
    from pluralign.decode.sampler import sample

    if model is None:
        from pluralign.sandbox.base import load

        model, tokenizer = load(model_dir)
    if tokenizer is None:
        tokenizer = World(seed).tokenizer()
    sampler_seed = seed * 100_003 + zlib.crc32(stream.encode()) % 100_003
    return sample(model, tokenizer, list(prompts), n=k, max_new_tokens=max_new_tokens, temperature=temperature,
                  seed=sampler_seed).texts


def _responses(prompts: list[str], m: int, seed: int, kind: str, *, rounds: int = 4, **source: Any) -> list[list[str]]:
    """`m` non-blank, preferably distinct responses per prompt. Lists are drawn with spares, and prompts
    still short of `m` usable responses (a model may answer with EOS at once) are drawn again, in up to
    `rounds` rounds: the data layer rejects blank text, and identical pairs teach nothing."""
    pools: list[list[str]] = [[] for _ in prompts]
    todo = list(range(len(prompts)))
    for r in range(rounds):
        drawn = draw_responses([prompts[i] for i in todo], m + 1, seed=seed, stream=f"{kind}/responses/{r}", **source)
        for i, cand in zip(todo, drawn, strict=True):
            pools[i] += [c for c in cand if c.strip()]
        todo = [i for i in todo if len(set(pools[i])) < m]
        if not todo:
            break
    if any(not pool for pool in pools):
        raise PluralignError(f"the model answered {rounds * (m + 1)} samples of a prompt with blank text; "
                             "it cannot be used to simulate feedback")
    if kind in ("pairwise", "user_pairwise"):  # topped up with a repeat, the pair was written and then rejected on reading
        short = [prompts[i] for i, pool in enumerate(pools) if len(set(pool)) < 2]
        if short:
            raise PluralignError(f"the model gave one distinct answer in {rounds * (m + 1)} samples to {len(short)} "
                                 f"prompt(s) (e.g. {short[0]!r}): a pair of identical responses states no preference "
                                 "and the data layer rejects it; sample from a less peaked model")
    return [_distinct(pool, m) for pool in pools]


def pair_probabilities(records: Sequence[Pairwise], population: str | Population = "default", *,
                       users_seed: int = 0, temperature: float | None = None) -> np.ndarray:
    """P(chosen ≻ rejected) [N, U] of each pair under each of the records' annotators (columns in order of
    first appearance): the Bradley–Terry probabilities the labels were drawn from, recomputed from the
    gold attributes. Records must name their user (user_pairwise feedback)."""
    pop = population if isinstance(population, Population) else get_population(population)
    by_id = {u.id: u for u in pop.users(users_seed)}
    missing = sorted({str(r.user) for r in records if r.user is None or str(r.user) not in by_id})
    if missing:
        raise ConfigError(f"pair_probabilities needs records whose user is one of population '{pop.name}': "
                          f"unknown {missing[:5]}")
    users = [by_id[u] for u in dict.fromkeys(str(r.user) for r in records)]
    dx = score_batch([r.prompt for r in records], [r.chosen for r in records]) - \
        score_batch([r.prompt for r in records], [r.rejected for r in records])
    return np.stack([preference_probability(utility(u.vector(), dx), 0.0, temperature or u.temperature)
                     for u in users], axis=1)


def bayes_accuracy(records: Sequence[Pairwise], population: str | Population = "default", *, users_seed: int = 0,
                   per_user: bool = True, temperature: float | None = None) -> float:
    """The best expected accuracy on `records` the label noise allows (the Bayes ceiling).

    per_user: a model that knows each record's annotator predicts their likelier label, E[max(p, 1 − p)]
    with p from that annotator. Otherwise a model that sees only the text predicts the label the
    annotators (in the records' own mix) give more often: E[max(p̄, 1 − p̄)], p̄ the mix's mean p."""
    if not records:
        raise ConfigError("bayes_accuracy: no records")
    p = pair_probabilities(records, population, users_seed=users_seed, temperature=temperature)
    ids = list(dict.fromkeys(str(r.user) for r in records))
    column = np.array([ids.index(str(r.user)) for r in records])
    if per_user:
        mine = p[np.arange(len(records)), column]
        return float(np.maximum(mine, 1 - mine).mean())
    share = np.bincount(column, minlength=len(ids)) / len(records)
    mean = p @ share
    return float(np.maximum(mean, 1 - mean).mean())


# --- one record per kind -----------------------------------------------------------------------------
def _pairwise(prompt: str, resp: list[str], x: np.ndarray, user: User, t: float, rng: np.random.Generator,
              *, named: bool, **_: Any) -> Pairwise:
    u = utility(user.vector(), x)
    first_wins = rng.random() < preference_probability(u[0], u[1], t)
    chosen, rejected = (resp[0], resp[1]) if first_wins else (resp[1], resp[0])
    return Pairwise(prompt, chosen, rejected, user=user.id if named else None, group=user.group if named else None)


def _ranked(prompt: str, resp: list[str], x: np.ndarray, user: User, t: float, rng: np.random.Generator,
            *, named: bool, **_: Any) -> Ranked:
    noisy = utility(user.vector(), x) / t + rng.gumbel(size=len(resp))
    order = np.argsort(-noisy, kind="stable")
    ranks = np.empty(len(resp), dtype=int)
    ranks[order] = np.arange(1, len(resp) + 1)
    return Ranked(prompt, list(resp), ranks=[int(r) for r in ranks], user=user.id, group=user.group)


def _binary(prompt: str, resp: list[str], x: np.ndarray, user: User, t: float, rng: np.random.Generator,
            *, named: bool, **_: Any) -> Binary:
    return Binary(prompt, resp[0], bool(_thumbs_up(x[0], user, t, rng)), user=user.id, group=user.group)


def _rated(prompt: str, resp: list[str], x: np.ndarray, user: User, t: float, rng: np.random.Generator,
           *, named: bool, rating_noise: float, **_: Any) -> list[Rated]:
    out = []
    for response, gold in zip(resp, x, strict=True):  # one annotator rates each response to the prompt
        noisy = gold + rng.normal(0.0, rating_noise, size=len(ATTRIBUTES))
        ratings = {a: round(float(np.clip(v, *RANGES[a])), 4) for a, v in zip(ATTRIBUTES, noisy, strict=True)}
        out.append(Rated(prompt, response, ratings, user=user.id, group=user.group))
    return out


def _judged(prompt: str, resp: list[str], x: np.ndarray, user: User, t: float, rng: np.random.Generator,
            *, named: bool, **_: Any) -> Judged:
    positive = _thumbs_up(x[0], user, t, rng)
    polarity = "positive" if positive else "negative"
    # The attribute that pushed this annotator's utility furthest in the verdict's direction, relative to
    # a typical response: what a person would name first.
    deviation = x[0] - _reference()[1]
    push = user.vector() * deviation
    a = int(np.argmax(push) if positive else np.argmin(push))
    level = "high" if deviation[a] >= 0 else "low"
    return Judged(prompt, resp[0], JUDGMENTS[(ATTRIBUTES[a], level, polarity)], polarity,
                  user=user.id, group=user.group, objective=ATTRIBUTES[a])


def _thumbs_up(x: np.ndarray, user: User, t: float, rng: np.random.Generator) -> bool:
    threshold = float(np.median(utility(user.vector(), _reference()[0])))
    return bool(rng.random() < preference_probability(float(utility(user.vector(), x)), threshold, t))


@functools.lru_cache(maxsize=1)
def _reference() -> tuple[np.ndarray, np.ndarray]:
    """Gold attributes of 512 fixed grammar responses (and their mean): what "typical" means for the
    binary threshold and for judgments. Fixed (seed 0), so it never depends on the feedback's seed."""
    w = World(0)
    rng = _stream(0, "reference", "grammar")
    prompts = w.prompts(512, rng)
    x = score_batch(prompts, [w.respond(p, rng) for p in prompts])
    return x, x.mean(0)


def _distinct(candidates: list[str], m: int) -> list[str]:
    """The first `m` distinct candidates, topped up with repeats when there are not enough."""
    seen = list(dict.fromkeys(candidates))
    return (seen + candidates)[:m] if len(seen) < m else seen[:m]


def _check_seeds(**seeds: int) -> None:
    """Seeds key numpy's streams, which take non-negative integers only: -1 was a ValueError traceback."""
    for name, value in seeds.items():
        if not (isinstance(value, (int, np.integer)) and value >= 0):
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}", field=name)


def _stream(seed: int, kind: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{kind}/{purpose}".encode())])


def rated_lists(n: int, objectives: Sequence[str], *, k: int = 4, model_dir: str | Path | None = None,
                seed: int = 0, max_new_tokens: int = 32, model: Any = None, tokenizer: Any = None) -> list[Rated]:
    """`k` distinct responses to each of `n` prompts (from the model, else the grammar), each rated by its
    exact gold attributes on `objectives`: the data of multi-objective training (per-objective or signed
    pairs, RiC's rewards), where every prompt needs several rated responses."""
    unknown = [o for o in objectives if o not in ATTRIBUTES]
    if unknown:
        raise ConfigError(f"unknown objective(s) {unknown}; the sandbox's attributes: {', '.join(ATTRIBUTES)}")
    _check_seeds(seed=seed)
    prompts = World(seed).prompts(n, _stream(seed, "rated_lists", "prompts"))
    responses = draw_responses(prompts, k, seed=seed, model_dir=model_dir, model=model, tokenizer=tokenizer,
                               max_new_tokens=max_new_tokens, stream="rated_lists")
    cols = [ATTRIBUTES.index(o) for o in objectives]
    out = []
    for p, rs in zip(prompts, responses, strict=True):
        rs = [y for y in dict.fromkeys(rs) if y.strip()]
        for y, x in zip(rs, score_batch([p] * len(rs), rs), strict=True):
            out.append(Rated(p, y, {o: float(x[c]) for o, c in zip(objectives, cols, strict=True)}))
    return out
