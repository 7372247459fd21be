"""`pluralign eval --config FILE`: generate with several models/decoders on one prompt set, judge them,
and write a results JSON in the report schema (:mod:`pluralign.evaluate.report`).

Config (YAML)::

    title: my evaluation
    description: free text shown under the report's title
    prompts: prompts.jsonl        # JSONL/JSON rows with "prompt", a .txt file (one per line), a list,
                                  # a feedback data file of any form (its distinct prompts),
                                  # or {sandbox: 32, seed: 0} for sandbox prompts; a row's own
                                  # decoding controls (decode's per-row weights, n, …) are refused:
                                  # controls are set per model entry
    models:                       # required; the first is the default baseline and KL reference
      - {name: base, path: sandbox}                       # "sandbox" = the sandbox base model
      - {name: dpo, path: runs/dpo/model, method: dpo}
      - {name: bon4, path: sandbox, decoder: bon, reward: gold, controls: {n: 4}}
      - {name: ric_brief, path: runs/ric/model, controls: {weights: {conciseness: 1.0}}}
                                  # a model saved with a conditioning scheme (RiC, DPA, MAH-DPO heads,
                                  # soups, user tokens, …) is steered by its entry's controls
    baseline: base                # win rates are against this model's outputs
    reference: base               # KL(π‖π_ref) is measured against this model
    generation: {max_new_tokens: 24, temperature: 1.0, seed: 0, chat_template: auto}  # also top_k, top_p, stop
    judge: {kind: gold, weights: {relevance: 1.0}}      # or {kind: gold, population: default, group: majority}
                                  # or {kind: reward, source: RM_DIR | module:function | gold}
                                  # or {kind: llm, base_url: ..., model: ..., api_key_env: ..., ...}
                                  # (an llm judge's cache_dir is relative to this file, like out and prompts;
                                  # base_url is tried before any model generates: no answer is an error,
                                  # a warning when cache_dir holds replies)
    population: default           # sandbox population → per-group utilities and fairness
    metrics: [reward, kl, win_rate, per_group, objectives]   # objectives: each objective's mean, from
                                  # the gold attributes or a multi-objective reward judge's columns
    bootstrap: 1000               # bootstrap resamples of each win rate's CI (an integer >= 1)
    out: results.json
    device: auto                  # where the models generate: cpu, cuda, auto (the best there is); default: CPU

A config is code: only run configs you trust. ``source: module:function`` imports and calls that Python
function, and ``kind: llm`` reads the environment variable named by ``api_key_env`` and sends its value
(as the Authorization header) to ``base_url``, so a config from someone else can run their code and send
your API key to their server. The judge client follows redirects only within ``base_url``'s origin, but it
cannot know whether ``base_url`` itself is the server you meant.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.errors import ConfigError, DataError
from pluralign.evaluate.entries import (
    at_key,
    check_decoder,
    check_device,
    check_model_path,
    check_reward_weights,
    entry_controls,
    model_path,
    require,
    reward_of,
)
from pluralign.evaluate.frontier import bon_kl
from pluralign.evaluate.winrate import compare
from pluralign.judges import GoldJudge, LLMJudge, RewardModelJudge
from pluralign.judges.base import check_temperature

METRICS = ("reward", "kl", "win_rate", "per_group", "objectives")
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "stop", "seed", "chat_template")
JUDGE_KEYS = {"gold": {"weights", "population", "group", "temperature"}, "reward": {"source", "weights", "temperature"}}
MODEL_KEYS = {"name", "path", "method", "decoder", "reward", "controls"}
TOP_KEYS = {"title", "description", "prompts", "models", "baseline", "reference", "generation", "judge",
            "population", "metrics", "out", "bootstrap", "device"}


def load_prompts(spec: Any, where: str, base_dir: Path) -> list[Any]:
    """Prompts from a list, a {sandbox: n} request, or a prompt file (`pluralign.data.prompt_files`: a .txt
    file, one per line, or rows of any data format, e.g. a held-out feedback set, or a hub data set
    ``owner/name[:split]``): each distinct prompt once, in order."""
    if isinstance(spec, list):
        return _listed_prompts(spec, where)
    if isinstance(spec, dict) and "sandbox" in spec:
        from pluralign.sandbox.world import World

        unknown = set(spec) - {"sandbox", "seed"}
        require(not unknown, where, f"unknown key(s) {sorted(unknown)} in {{sandbox: N, seed: S}}")
        for key, least in (("sandbox", 1), ("seed", 0)):
            value = spec.get(key, 0)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= least, f"{where}.{key}",
                     f"must be an integer >= {least}, got {value!r}")
        world = World(spec.get("seed", 0))
        return world.prompts(spec["sandbox"], np.random.default_rng(spec.get("seed", 0)))
    require(isinstance(spec, str), where, "prompts must be a file, a list, or {sandbox: N}")
    from pluralign.data.formats import FORMATS, HUB_ID
    from pluralign.data.prompt_files import read_prompt_rows
    from pluralign.data.records import text_key

    path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
    if not path.exists() and HUB_ID.fullmatch(spec) and Path(spec).suffix.lower() not in (*FORMATS, ".txt"):
        path = spec  # a Hugging Face hub data set, owner/name[:split]
    require(isinstance(path, str) or path.exists(), where, f"prompts file not found: {path}")
    try:
        rows = read_prompt_rows([path])
        _refuse_row_controls(rows)
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None
    return list({text_key(r.prompt): r.prompt for r in rows}.values())


def _refuse_row_controls(rows: list[Any]) -> None:
    """A `DataError` naming each row's decoding controls (weights, n, temperature, … as `pluralign decode`
    reads them per row), which eval does not read: it steers each model entry by its own `controls` and
    compares the entries on the same prompts. Ignored, a prompt file written for `decode` was evaluated as
    if unsteered. A feedback record's `user` and `group` say who gave it, not how to decode: refused only on
    a row that holds nothing but a prompt and controls."""
    from pluralign.decode.cli import PER_REQUEST

    problems = []
    for row in rows:
        request = set(row.fields) <= {"prompt", *PER_REQUEST}
        problems += [row.problem(key, "eval does not read per-row decoding controls: set them on a model entry's "
                                      "`controls` (or decode this file with `pluralign decode`)")
                     for key in PER_REQUEST if key in row.fields and (request or key not in ("user", "group"))]
    if problems:
        raise DataError(problems)


def _listed_prompts(prompts: list, where: str) -> list[Any]:
    """Prompts given in the config itself, held to the checks a prompt file's rows get (text or chat messages
    ending on the user's turn, nothing blank, no lone surrogates): else a blank or misspelt-role prompt was
    evaluated as it was, and a number failed at generation without naming the config."""
    from pluralign.data.field_checks import check_prompt, hostile_issues

    require(bool(prompts), where, "an empty list of prompts")
    issues = [issue for i, prompt in enumerate(prompts)
              for issue in hostile_issues(f"{where}[{i}]", prompt) or check_prompt(f"{where}[{i}]", prompt)[1]]
    if issues:
        raise ConfigError("; ".join(f"{field}: {message}" for field, message in issues))
    return prompts


def build_judge(spec: dict, where: str) -> Any:
    """A judge from its config: gold (weights or population/group), reward (a reward spec), or llm."""
    require(isinstance(spec, dict) and "kind" in spec, where, "judge needs a 'kind': gold, reward or llm")
    kind, rest = spec["kind"], {k: v for k, v in spec.items() if k != "kind"}
    known = JUDGE_KEYS.get(kind)
    if known is not None:  # the llm judge's keywords are checked by LLMJudge itself
        unknown = sorted(set(rest) - known)
        require(not unknown, where, f"unknown key(s) {unknown} for a {kind} judge; known: {sorted(known)}")
    if kind in ("gold", "reward") and rest.get("temperature") is not None:
        with at_key(where):  # else refused by the first win rate, after every model has generated
            check_temperature(rest["temperature"])
    if kind == "gold":
        if "weights" in rest:
            from pluralign.sandbox.users import weight_vector

            try:  # else a misspelt attribute fails once the first answers are scored
                weight_vector(rest["weights"])
            except (ConfigError, TypeError, ValueError) as e:
                raise ConfigError(f"{where}.weights: {e}") from None
            return GoldJudge(rest["weights"], temperature=rest.get("temperature"))
        pop = _population(rest.get("population", "default"), f"{where}.population")
        group = None
        if "group" in rest:
            with at_key(f"{where}.group"):
                group = pop.group(rest["group"])
        if group is None:  # the population's share-weighted mean user
            weights: dict[str, float] = {}
            for g, s in zip(pop.groups, pop.shares, strict=True):
                for a, w in g.weights.items():
                    weights[a] = weights.get(a, 0.0) + s * w
            return GoldJudge(weights, temperature=rest.get("temperature"))
        return GoldJudge(group, temperature=rest.get("temperature"))
    if kind == "reward":
        from pluralign.decode.rewards import as_reward, load_reward, weight_vector

        require("source" in rest, where, "a reward judge needs 'source' (RM dir, module:function or gold)")
        source = rest["source"]
        if isinstance(source, str):
            source = load_reward(source, f"{where}.source")
        else:
            with at_key(f"{where}.source"):  # `source: 3` named neither the config nor the key
                source = as_reward(source)
        names = getattr(source, "objectives", None)
        if rest.get("weights") is not None and names:  # else a bad weight fails once answers are scored
            with at_key(f"{where}.weights"):
                weight_vector(rest["weights"], list(names))
        return RewardModelJudge(source, weights=rest.get("weights"), temperature=rest.get("temperature"))
    if kind == "llm":
        require("base_url" in rest and "model" in rest, where, "an llm judge needs 'base_url' and 'model'")
        with at_key(where):  # a bad keyword or value, named with the config file
            return LLMJudge(rest.pop("base_url"), rest.pop("model"), **rest)
    raise ConfigError(f"{where}: unknown judge kind {kind!r}; use gold, reward or llm")


def _population(name: Any, where: str) -> Any:
    """The sandbox population `name`; an unknown one is a ConfigError naming `where` (file and key)."""
    from pluralign.sandbox.users import population

    require(isinstance(name, str), where, f"must be a population name, got {name!r}")  # [a]: "unhashable type"
    with at_key(where):
        return population(name)


def _bootstrap(cfg: dict, where: str) -> int:
    """The number of bootstrap resamples of each win rate's CI: an integer >= 1 (default 1000)."""
    n = cfg.get("bootstrap", 1000)
    require(isinstance(n, int) and not isinstance(n, bool) and n >= 1, f"{where}: bootstrap",
             f"must be an integer >= 1 (resamples of each win rate's CI), got {n!r}")
    return n


def _judge_spec(cfg: dict, base_dir: Path) -> Any:
    """The config's judge, default the gold utility of `population`, with an llm judge's relative
    ``cache_dir`` resolved against the config file's directory (as ``out`` and ``prompts`` are)."""
    spec = cfg.get("judge", {"kind": "gold", "population": cfg.get("population", "default")})
    if isinstance(spec, dict) and isinstance(spec.get("cache_dir"), str) and not Path(spec["cache_dir"]).is_absolute():
        spec = {**spec, "cache_dir": str(base_dir / spec["cache_dir"])}
    return spec


def generate(entry: dict, prompts: list, gen: dict, device: str | None, where: str = "<config>") -> dict:
    """Responses of one model entry, decoded through its conditioning scheme (RiC, heads, soups, …) with
    the entry's controls; for a decoder that names the distribution it drew from (plain sampling, the
    token-level decoders) also each answer's log-prob under it, its ids and the unconditioned prompts, for
    the KL estimate."""
    from pluralign.decode.api import decode
    from pluralign.decode.cli import unused_controls
    from pluralign.decode.steer import load_policy

    path = model_path(entry["path"])
    model, tok = load_policy(path, device)
    decoder = entry.get("decoder") or "sample"
    controls = entry_controls(entry, gen, where)
    reward = reward_of(entry, where)
    check_reward_weights(reward, controls, where)  # a reward model's objectives are known once it loads
    unused = unused_controls(model, reward if decoder != "sample" else None, [controls], name=str(path))
    require(not unused, f"{where}.controls", unused)
    result = decode(decoder, model, tok, prompts, reward=reward, controls=controls)
    out = {"texts": list(result.texts), "model": model, "tokenizer": tok, "n": controls.n}
    if "decoder_logps" in result.info:
        out |= {"sum_logps": result.info["decoder_logps"], "token_ids": result.info["token_ids"],
                "prompts": list(prompts), "chat_template": controls.chat_template}
    return out


def kl_estimate(entry: dict, out: dict, ref: dict) -> dict[str, Any]:
    """The sequence KL of what the entry decoded to the reference: {"kl", "kl_se"} estimated by Monte-Carlo
    for a decoder that names the distribution q it drew from; for a best-of-N decoder over the reference,
    the usual log N − (N − 1)/N, an upper bound (Beirami et al. 2024; below it when rewards tie), so
    {"kl", "kl_is_bound": True}; else nothing ({"kl": None}).

    The Monte-Carlo estimate is mean log q(y | x, c) − log π_ref(y | x) over the decoded answers y: q is
    the policy after temperature, top-k and top-p (plain sampling), or a token-level decoder's own choice
    distribution, a point mass (log q = 0) for greedy decoding; c is what a conditioned policy was shown
    (RiC scores, a statement), and the reference reads the prompt x as its own tokenizer renders it. The
    ids are scored as they are, so a reference whose tokenizer reads them otherwise (another vocabulary)
    gets no estimate, with a warning."""
    if "sum_logps" in out:
        from pluralign.data.prompts import prompt_ids
        from pluralign.models.logprobs import completion_sums

        ref_tok, tok = ref["tokenizer"], out["tokenizer"]
        ids = out["token_ids"]
        if ref_tok is not tok and any(ref_tok.decode(y) != tok.decode(y) for y in ids):
            warnings.warn(f"{entry['name']}: no KL estimate: its tokenizer and the reference's read the sampled "
                          "tokens differently (another vocabulary)", stacklevel=2)
            return {"kl": None}
        rendered = [prompt_ids(ref_tok, x, out["chat_template"]) for x in out["prompts"]]
        ref_lp = completion_sums(ref["model"], rendered, ids).numpy()
        kl, se = _mean_se(np.asarray(out["sum_logps"], float) - ref_lp)
        return {"kl": kl, "kl_se": se}
    if entry.get("decoder") == "bon" and entry.get("path") == ref.get("path"):
        return {"kl": bon_kl(int(out.get("n", 1))), "kl_is_bound": True}
    return {"kl": None}


def _check_shapes(cfg: dict, where: str) -> None:
    """Keys of the wrong kind fail here, naming the key: `generation: [..]` and a name that is a list were
    tracebacks, `metrics: reward` was read letter by letter, and `out: 3` failed only after every model
    had generated, with nothing written."""
    require(cfg.get("generation") is None or isinstance(cfg["generation"], dict), f"{where}: generation",
             f"must be a mapping of generation settings, got {cfg.get('generation')!r}")
    metrics = cfg.get("metrics", [])
    require(isinstance(metrics, list) and all(isinstance(x, str) for x in metrics), f"{where}: metrics",
             f"must be a list of metric names, e.g. [reward, win_rate], got {metrics!r}")
    require("out" not in cfg or (isinstance(cfg["out"], str) and cfg["out"] != ""), f"{where}: out",
             f"must be a file path, got {cfg.get('out')!r}")


def evaluate_config(cfg: dict, where: str = "<config>", base_dir: Path | None = None) -> dict:
    """Run an evaluation config (dict form of the YAML above) and return the results dict."""
    base_dir = base_dir or Path.cwd()
    unknown = sorted(set(cfg) - TOP_KEYS)
    require(not unknown, where, f"unknown key(s) {unknown}; known: {sorted(TOP_KEYS)}")
    _check_shapes(cfg, where)
    models = cfg.get("models")
    require(isinstance(models, list) and models, where, "'models' must be a non-empty list")
    for i, m in enumerate(models):
        require(isinstance(m, dict) and "name" in m and "path" in m, f"{where}: models[{i}]", "needs 'name' and 'path'")
        require(isinstance(m["name"], str) and m["name"] != "", f"{where}: models[{i}].name",
                 f"must be text (the run's name), got {m['name']!r}")
        unknown = sorted(set(m) - MODEL_KEYS)  # a misspelt 'decoder' would evaluate the plain model
        require(not unknown, f"{where}: models[{i}]", f"unknown key(s) {unknown}; known: {sorted(MODEL_KEYS)}")
        check_model_path(m["path"], f"{where}: models[{i}].path")
        check_decoder(m, f"{where}: models[{i}]")
        if isinstance(m.get("reward"), str):  # a missing reward model stopped the run at this entry's turn
            from pluralign.decode.rewards import check_source

            check_source(m["reward"], f"{where}: models[{i}].reward")
    gen = dict(cfg.get("generation") or {})
    unknown = sorted(set(gen) - set(GENERATION_KEYS))
    require(not unknown, f"{where}: generation", f"unknown key(s) {unknown}; known: {list(GENERATION_KEYS)}")
    entry_controls({}, gen, f"{where}: generation")  # a bad value (beta: -1, a misspelt field) stopped the run
    for i, m in enumerate(models):  # at its entry's turn, after the entries before it had generated
        controls = entry_controls(m, gen, f"{where}: models[{i}]")
        if not (isinstance(m.get("reward"), str) and Path(m["reward"]).is_dir()):  # a model: checked as it loads
            check_reward_weights(reward_of(m, f"{where}: models[{i}]"), controls, f"{where}: models[{i}]")
    names = [m["name"] for m in models]
    require(len(set(names)) == len(names), where, "model names must be unique")
    metrics = cfg.get("metrics", list(METRICS))
    bad = sorted(set(metrics) - set(METRICS))
    require(not bad, where, f"unknown metric(s) {bad}; known: {list(METRICS)}")
    baseline, reference = cfg.get("baseline", names[0]), cfg.get("reference", names[0])
    for key, value in (("baseline", baseline), ("reference", reference)):
        require(value in names, f"{where}: {key}", f"{value!r} names no model; models: {names}")
    n_boot, device = _bootstrap(cfg, where), check_device(cfg.get("device"), f"{where}: device")
    require("per_group" not in cfg.get("metrics", []) or cfg.get("population") is not None, f"{where}: metrics",
            "per_group is the utility of each group of a sandbox population: set `population` (e.g. default)")
    groups = []
    if cfg.get("population") is not None:  # checked whatever the metrics: the default judge reads it too
        pop = _population(cfg["population"], f"{where}: population")
        groups = list(pop.groups) if "per_group" in metrics and cfg["population"] else []
    prompts = load_prompts(cfg.get("prompts", {"sandbox": 16}), f"{where}: prompts", base_dir)
    judge = build_judge(_judge_spec(cfg, base_dir), f"{where}: judge")
    # else a judge with no server was found once every model had generated; only where a metric asks it
    if hasattr(judge, "check_reachable") and {"reward", "win_rate"} & set(metrics):
        with at_key(f"{where}: judge"):
            judge.check_reachable()
    outputs = {m["name"]: generate(m, prompts, gen, device, f"{where}: models[{i}]")
               for i, m in enumerate(models)}
    runs = []
    for m in models:
        out, texts = outputs[m["name"]], outputs[m["name"]]["texts"]
        run: dict[str, Any] = {"name": m["name"], "method": m.get("method", m.get("decoder") or "policy"),
                               "n": len(prompts)}
        scores = per_objective = None
        if "objectives" in metrics and hasattr(judge, "single_and_objectives"):  # a scoring judge: one pass
            scores, per_objective = judge.single_and_objectives(prompts, texts)
        elif "reward" in metrics:  # an LLM judge has no objectives
            scores = judge.single(prompts, texts)
        scores = np.asarray(scores, float) if "reward" in metrics else None
        if scores is not None:
            run["reward"], run["reward_se"] = _mean_se(scores)
            if not np.isfinite(scores).all():  # an LLM judge's unreadable grades: the mean is of the rest
                run["reward_n"] = int(np.isfinite(scores).sum())
        if "kl" in metrics:
            run |= kl_estimate(m, out, {**outputs[reference], "path": models[names.index(reference)]["path"]})
        if groups:
            per = {g.name: _mean_se(np.asarray(GoldJudge(g).single(prompts, texts), float)) for g in groups}
            run["per_group"] = {g: v[0] for g, v in per.items()}
            run["per_group_se"] = {g: v[1] for g, v in per.items()}
            run["per_group_n"] = {g: len(prompts) for g in per}
        if per_objective is not None:  # gold attributes, or a multi-objective reward model's columns
            objectives, matrix = per_objective
            stats = [_mean_se(column) for column in np.asarray(matrix, float).T]
            run["objectives"] = {o: m for o, (m, _) in zip(objectives, stats, strict=True)}
            run["objectives_se"] = {o: se for o, (_, se) in zip(objectives, stats, strict=True)}
        if "win_rate" in metrics and m["name"] != baseline:
            wr = compare(judge, prompts, outputs[baseline]["texts"], texts, n_boot=n_boot)
            # which baseline: runs of several evaluations may be merged into one report
            run["win_rate"] = {k: v for k, v in wr.items() if k != "preferences"} | {"baseline": baseline}
        run["samples"] = [{"prompt": p, "response": t} | ({"score": float(scores[i])} if scores is not None else {})
                          for i, (p, t) in enumerate(list(zip(prompts, texts, strict=True))[:3])]
        runs.append(run)
    # per_group is gold whatever the judge; judge_replies: an LLM judge's replies read, unreadable and failed
    return {"title": cfg.get("title", "pluralign evaluation"), "description": cfg.get("description", ""),
            "judge": judge_label(cfg.get("judge", {"kind": "gold"})), "runs": runs, "config": cfg} \
        | ({"per_group_judge": "gold utility"} if groups else {}) \
        | ({"judge_replies": judge.reply_counts()} if hasattr(judge, "reply_counts") else {})


def judge_label(spec: dict) -> str:
    """What the "reward" numbers are, for axis and column labels: never "gold" for a learned judge."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "reward":
        source = Path(str(spec.get("source")))
        name = "/".join(source.parts[-2:]) if source.name == "model" else source.name  # runs/rm/model: rm/model
        return "gold utility" if spec.get("source") == "gold" else f"reward-model score ({name})"
    if kind == "llm":
        return f"LLM-judge score ({spec.get('model', '')})"
    return "gold utility"


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error over the finite values (NaN se with fewer than two)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
