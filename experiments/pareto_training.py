"""Many objectives at once: each multi-objective training method's Pareto front on sandbox gold attributes,
against linear-scalarised DPO trained once per weight.

1. The sandbox base model answers training prompts (4 samples each); every sample is rated by its gold
   attributes (`pluralign.sandbox.attributes`) on the objectives of a case: "2obj" = informativeness vs
   conciseness (they conflict: information needs words), "3obj" adds formality.
2. Methods, all from the base with pluralign's recipes (β = 0.1, the same batch and learning rate; the
   steps of one linear-scalarised DPO run, about one epoch of its pairs, unless stated):
   - linear (the sweep): per-objective DPO losses on signed pairs (one pair per two responses, a sign per
     objective) combined with fixed weights w, one model per w of the grid (≥ 5 models);
   - raco / pama: the same data and steps, per-objective gradients combined by RACO's CAGrad-Clip or
     PAMA's min-norm weights, one model per w; racoeq: RACO with the steps the sweep's CPU-seconds buy
     (RACO takes K backward passes per step), so that it is compared with the sweep at equal cost;
     racoub: RACO with its Gram matrix taken at the per-pair log-probs (MGDA-UB's bound, one backward a
     step), so that equal steps are equal CPU-seconds. PAMA's closed form moves a pair nothing where
     the objectives disagree on it (about half the signed pairs of the 2-objective case), so its models
     between the extreme weights stay near the base: a lower hypervolume by construction, not a bug;
   - linshort: the sweep with the soup experts' step budget (a control: how much of the soups' saving is
     the shorter budget rather than the fewer models);
   - modpo: DPO on informativeness pairs with the other objectives' gold rewards as margin, one model per w
     (w_0 > 0);
   - map: MAP palettes (targets = quantiles of the base's rewards) → λ* → pairs ordered by λ*ᵀr → DPO;
   - single-run methods, steered per request at every w of the grid: mahdpo (K heads, one run on
     objective-tagged pairs), soups (one DPO expert per objective: the signed pairs with that objective's
     one-hot weight, so the experts share one reference pass; a fraction of the sweep's steps, picked by
     an expert-step sweep on seed 2 (--expert-fracs): an expert only has to reach its extreme; weights
     interpolated), ric (SFT with
     reward z-scores in the prompt), dpa (rejection-sampling rounds with the direction in the prompt,
     best-of-4 by the gold vᵀr standing in for the multi-objective reward model), and, on request
     (--methods …,wcdpo), wcdpo: weight-conditioned DPO, the sweep's signed pairs each stating weights drawn
     from the 1/4 grid in its prompt and scalarised by them (`meta.weights`), one run across the simplex;
     mod (with soups): the soup's experts combined per request by MOD's logit fusion (reverse KL, Shi et al.
     2024: exact for DPO-optimal experts of one reference) instead of averaging their weights;
     jsoup: the soup's members trained together in one run (`objectives.conditioning: joint_soup`, CLP's
     parameter-space conditioning): at each step the model runs with the members mixed by a weight vector
     drawn on the simplex (a vertex a quarter of the time, else uniform) and trains on the signed pairs
     scalarised by it; 0.22 of the sweep's steps, all its models together (--jsoup-frac), learning rate
     1e-3 (--jsoup-lr).
3. Each model (and each weight of a steerable one) is sampled on fixed evaluation prompts; a point is the
   mean gold attributes of its samples, with 95% bootstrap CIs over prompts. A method's hypervolume is
   that of its points against the reference point (the low end of each attribute's range: 0 for
   informativeness and conciseness, −1 for formality), with a bootstrap CI (prompts resampled jointly).
   Training cost is CPU-seconds of this process (time.process_time) spent training, including DPA's
   sampling rounds and each method's own reference passes (a cache per method, shared by its models);
   evaluation is not counted, nor the untimed warm-up runs that take the process's one-time costs.

    .venv/bin/python experiments/pareto_training.py --quick   # ~3 min of CPU
    .venv/bin/python experiments/pareto_training.py           # the full grid

Settings, how they were chosen, every variant tried and dropped and its figures: experiments/pareto_training.md.

Outputs under runs/pareto_training/ (git-ignored): data, models, results.json and report_<case>.html (fronts).
Timings on a machine shared with other jobs inflate wall time; CPU-seconds are what we compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np

from pluralign.cli import learning_rate, seed_int

# Every method this script knows (--methods); the default list leaves out linb, mod and wcdpo.
METHODS = ["linear", "linshort", "linb", "raco", "racoub", "pama", "racoeq", "modpo", "map", "mahdpo", "soups", "mod",
           "jsoup", "wcdpo", "ric", "dpa"]
CASES = {"2obj": ["informativeness", "conciseness"], "3obj": ["informativeness", "conciseness", "formality"]}
SINGLE_RUN = ("mahdpo", "soups", "jsoup", "mod", "ric", "dpa", "wcdpo")


def grid(k: int, quick: bool) -> list[tuple[float, ...]]:
    if k == 2:
        return [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    pts = [tuple(float(i == j) for j in range(k)) for i in range(k)]  # vertices
    pts += [tuple(0.5 * ((i == j) + (i2 == j)) for j in range(k)) for i, i2 in itertools.combinations(range(k), 2)]
    return pts if quick else pts + [tuple([1.0 / k] * k)]


class Clock:
    """CPU-seconds of this process spent inside `with clock:` blocks."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self.t = time.process_time()

    def __exit__(self, *exc):
        self.seconds += time.process_time() - self.t


def make_data(out: Path, base: Path, names: list[str], n_prompts: int, seed: int):
    """Rated base samples → rated.jsonl (all objectives) and pairs_<objective>.jsonl."""
    from pluralign.data.convert import rated_to_pairwise
    from pluralign.data.io import write_records
    from pluralign.sandbox.feedback import rated_lists

    rated = rated_lists(n_prompts, names, k=4, model_dir=base, seed=seed)
    write_records(out / "rated.jsonl", rated)
    for n in names:
        write_records(out / f"pairs_{n}.jsonl", rated_to_pairwise(rated, objective=n))
    return rated, list(dict.fromkeys(r.prompt for r in rated))


def evaluate(model, tok, prompts, names, controls_list, n_samples, seed, decoder="sample", **decode_kw):
    """Per control: per-prompt mean gold attributes [P, k] of the model's samples under that control
    (`decoder` and `decode_kw`: another decoder, e.g. "mod" with models=[...])."""
    from pluralign.decode.api import Controls, decode
    from pluralign.sandbox.attributes import ATTRIBUTES, score_batch

    cols = [ATTRIBUTES.index(n) for n in names]
    out = []
    for extra in controls_list:
        reqs = [p for p in prompts for _ in range(n_samples)]
        res = decode(decoder, model, tok, reqs, controls=Controls(max_new_tokens=32, seed=seed, **extra), **decode_kw)
        x = score_batch(reqs, res.texts)[:, cols].reshape(len(prompts), n_samples, len(cols)).mean(1)
        out.append(x)
    return out


def summarise(per_prompt: list[np.ndarray], ref: np.ndarray, rng: np.random.Generator, n_boot: int = 200) -> dict:
    from pluralign.evaluate.pareto import hypervolume

    points = np.stack([x.mean(0) for x in per_prompt])
    P = per_prompt[0].shape[0]
    boots_pts, boots_hv = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, P, P)
        pts = np.stack([x[idx].mean(0) for x in per_prompt])
        boots_pts.append(pts)
        boots_hv.append(hypervolume(pts, ref))
    bp = np.stack(boots_pts)
    return {"points": points.tolist(), "ci_low": np.percentile(bp, 2.5, 0).tolist(),
            "ci_high": np.percentile(bp, 97.5, 0).tolist(), "hv": hypervolume(points, ref),
            "hv_ci": [float(np.percentile(boots_hv, 2.5)), float(np.percentile(boots_hv, 97.5))]}


def run_case(case: str, a, base: Path, out: Path, rng) -> dict:
    from pluralign.decode.steer import load_policy
    from pluralign.models.soup import save_soup
    from pluralign.sandbox.attributes import RANGES
    from pluralign.sandbox.gold import eval_prompts
    from pluralign.train import run_sft
    from pluralign.train.recipes.preference import from_kwargs, run
    from pluralign.train.steerable import dpa, palette_pairs, write_pairs

    names = CASES[case]
    k = len(names)
    out.mkdir(parents=True, exist_ok=True)
    rated, train_prompts = make_data(out, base, names, a.prompts, a.seed)
    weights = simplex(k, 4) if a.grid == "quarter" else grid(k, a.quick)
    ref = np.array([RANGES[n][0] for n in names])
    prompts = eval_prompts(a.eval_prompts)
    loop = dict(learning_rate=a.lr, batch_size=a.batch_size, max_steps=a.steps, seed=a.seed, progress=False,
                log_every=max(a.steps, 1))
    common = dict(model=str(base), ref_cache_dir=str(out / "ref_cache"), loss_params={"beta": 0.1},
                  gradient_checkpointing=False, loop=loop)
    signed = {"names": names, "rated_pairs": "signed", "drop_ties": a.drop_ties}
    results: dict = {"objectives": names, "weights": weights, "reference": ref.tolist(), "methods": {}}
    per_prompt: dict[str, list[np.ndarray]] = {}  # for the paired bootstrap of hypervolume ratios
    methods = a.methods.split(",")

    def train_pref(tag, steps=None, lr=None, **kw):
        shutil.rmtree(out / tag, ignore_errors=True)  # a fresh run: the loop would resume an old one
        # Each method has its own reference cache: it pays for the reference passes over its data once
        # (shared by its own models, as a sweep would share them), never for another method's.
        cfg = common | {"ref_cache_dir": str(out / "ref_cache" / tag.split("_")[0])} | kw
        if steps is not None or lr is not None:
            steps = steps or a.steps
            cfg["loop"] = loop | {"max_steps": steps, "log_every": steps, "learning_rate": lr or a.lr}
        return run(from_kwargs(output_dir=str(out / tag), **cfg)).model_dir

    def record(method, model_dirs, controls, clock, n_models, extra=None, fused=()):
        """`fused`: further model directories, combined with the first of `model_dirs` by MOD's decoder."""
        per = []
        others = {"decoder": "mod", "models": [load_policy(d)[0] for d in fused]} if fused else {}
        for d, ctl in zip(model_dirs, controls, strict=True):
            model, tok = load_policy(d)
            per += evaluate(model, tok, prompts, names, ctl, a.samples, a.seed + 1, **others)
        entry = summarise(per, ref, rng) | {"cpu_s": clock.seconds, "models": n_models} | (extra or {})
        results["methods"][method], per_prompt[method] = entry, per
        print(f"[{case}] {method:<7} HV {entry['hv']:.4f} [{entry['hv_ci'][0]:.4f}, {entry['hv_ci'][1]:.4f}]  "
              f"cost {clock.seconds:6.1f} CPU-s  ({n_models} model(s), {len(entry['points'])} points)", flush=True)

    wdict = [dict(zip(names, w, strict=True)) for w in weights]
    # Untimed 2-step runs of both recipes first: the process's one-time costs (imports, first calls) are
    # charged to no method (else the first method trained would pay them).
    train_pref("warmup_pref", steps=2, data=[str(out / "rated.jsonl")], objectives={"names": names, "rated_pairs": "signed"})
    shutil.rmtree(out / "warmup_sft", ignore_errors=True)
    run_sft(model=str(base), data=[str(out / "rated.jsonl")], output_dir=str(out / "warmup_sft"), objectives=names,
            conditioning="reward_tokens", gradient_checkpointing=False, max_length=128, loop=loop | {"max_steps": 2})
    combiners = {"linear": ("weighted", {}), "linshort": ("weighted", {}), "linb": ("weighted", {"normalize": "batch"}),
                 "raco": ("raco", {}),
                 "racoeq": ("raco", {}), "racoub": ("raco", {"gram": "logps"}), "pama": ("pama", {})}
    # RACO's losses averaged per objective as the sweep's are, so that the comparison isolates the combination
    # (--raco-params '{"normalize": "batch"}' for its paper's batch means, against `linb`, its paper's baseline)
    combiners |= {m: ("raco", p | {"c": a.raco_c, "normalize": "objective"} | json.loads(a.raco_params))
                  for m, (c, p) in combiners.items() if c == "raco"}
    for method in ("linear", "linshort", "linb", "raco", "racoub", "pama", "racoeq"):
        if method not in methods:
            continue
        steps = a.steps
        if method == "linshort":  # control: the sweep with the soup experts' (shorter) step budget
            steps = a.expert_steps
        elif method == "racoeq":  # RACO at the sweep's CPU-seconds: the steps that time buys
            steps = equal_cost_steps(results["methods"], a.steps)
            if steps is None:
                continue
        combiner, params = combiners[method]
        clock, dirs = Clock(), []
        for i, w in enumerate(wdict):
            with clock:
                dirs.append(train_pref(f"{method}_{i}", steps=steps, data=[str(out / "rated.jsonl")],
                                       objectives=signed | {"weights": w, "combine": combiner,
                                                            "combine_params": params}))
        record(method, dirs, [[{}]] * len(dirs), clock, len(dirs), {"steps": steps})
    if "modpo" in methods:
        clock, dirs = Clock(), []
        for i, w in enumerate(wdict):
            if w[names[0]] <= 0:
                continue
            with clock:
                dirs.append(train_pref(f"modpo_{i}", data=[str(out / f"pairs_{names[0]}.jsonl")], loss="modpo",
                                       loss_params={"beta": 0.1, "w0": w[names[0]]},
                                       objectives={"names": names, "weights": w, "margin_reward": "gold"}))
        record("modpo", dirs, [[{}]] * len(dirs), clock, len(dirs))
    if "map" in methods:
        clock, dirs, lams = Clock(), [], []
        x = np.array([[r.ratings[n] for n in names] for r in rated])
        for i, q in enumerate([(0.7, 0.5, 0.5), (0.5, 0.7, 0.5), (0.6, 0.6, 0.6)]):
            targets = [float(np.quantile(x[:, j], q[j % 3])) for j in range(k)]
            with clock:
                pairs, lam = palette_pairs(rated, names, targets)
                if not pairs:
                    continue
                write_pairs(out / f"map_{i}.jsonl", pairs)
                dirs.append(train_pref(f"map_{i}", data=[str(out / f"map_{i}.jsonl")]))
            lams.append(lam.tolist())
        record("map", dirs, [[{}]] * len(dirs), clock, len(dirs), {"lambda": lams})
    def record_steered(method, model_dir, clock, n_models, extra=None, control="weights"):
        """A single-run model at the sweep's weights and, with --dense-grid, at every weight in multiples
        of 1/4 (<method>_dense: the same model and training cost, more points; on 2 objectives the two
        grids are one)."""
        record(method, [model_dir], [[{control: list(w)} for w in weights]], clock, n_models, extra)
        dense = simplex(k, 4)
        if a.dense_grid and len(dense) > len(weights):
            record(f"{method}_dense", [model_dir], [[{control: list(w)} for w in dense]], clock, n_models, extra)

    if "mahdpo" in methods:
        clock = Clock()
        with clock:
            d = train_pref("mahdpo", data=[str(out / f"pairs_{n}.jsonl") for n in names],
                           objectives={"names": names, "conditioning": "heads"})
        record_steered("mahdpo", d, clock, 1)
    for i, steps in enumerate(a.soup_steps if "soups" in methods else []):
        # One expert per objective, each trained on the signed pairs with that objective's one-hot weight:
        # the experts share the data, hence one reference pass (rated records → pairs, as the sweep's).
        tag = "soups" if i == 0 else f"soups{steps}"
        clock, members = Clock(), []
        with clock:
            for n in names:
                members.append(train_pref(f"{tag}_{n}", steps=steps, lr=a.expert_lr, data=[str(out / "rated.jsonl")],
                                          objectives=signed | {"weights": {m: float(m == n) for m in names}}))
            soup = save_soup(members, names, out / tag)
        record_steered(tag, soup, clock, k, {"steps": steps})
        if i == 0 and "mod" in methods:  # the same experts, combined per request by MOD instead of averaging weights
            record("mod", [members[0]], [[{"weights": list(w)} for w in weights]], clock, k, {"steps": steps},
                   fused=members[1:])
    if "jsoup" in methods:
        # The soup's members trained together: each step mixes them by a drawn weight and trains the mix on
        # the signed pairs scalarised by that weight (`objectives.conditioning: joint_soup`), one run.
        clock = Clock()
        with clock:
            steps = max(1, round(a.jsoup_frac * len(weights) * a.steps))
            d = train_pref("jsoup", steps=steps, lr=a.jsoup_lr, data=[str(out / "rated.jsonl")],
                           objectives=signed | {"conditioning": "joint_soup",
                                                "conditioning_params": {"seed": a.seed} | json.loads(a.jsoup_params)})
        record_steered("jsoup", d, clock, 1, {"steps": steps})
    if "wcdpo" in methods:
        # One model across the simplex: every signed pair states weights drawn from the 1/4 grid in a system
        # message, and its per-objective losses are scalarised by them (the sweep's loss, one w per pair).
        clock = Clock()
        with clock:
            from pluralign.train.recipes.multiobjective import signed_pairs
            draw = np.random.default_rng(a.seed + 7)
            quarter = simplex(k, 4)
            pairs = [dataclasses.replace(pr, meta=pr.meta | {"weights": dict(zip(names, quarter[draw.integers(len(quarter))], strict=True))})
                     for pr in signed_pairs(rated, names) for _ in range(a.wc_copies)]
            write_pairs(out / "wcdpo_pairs.jsonl", pairs)
            d = train_pref("wcdpo", steps=a.wc_steps, lr=a.wc_lr, data=[str(out / "wcdpo_pairs.jsonl")],
                           objectives={"names": names, "conditioning": "system_message"})
        record_steered("wcdpo", d, clock, 1)
    if "ric" in methods:
        clock = Clock()
        with clock:
            shutil.rmtree(out / "ric", ignore_errors=True)
            d = run_sft(model=str(base), data=[str(out / "rated.jsonl")], output_dir=str(out / "ric"), objectives=names,
                        conditioning="reward_tokens", gradient_checkpointing=False, max_length=128,
                        loop=loop | {"learning_rate": a.sft_lr, "max_steps": a.sft_steps}).model_dir
        record_steered("ric", d, clock, 1)
    if "dpa" in methods:
        clock = Clock()
        with clock:
            shutil.rmtree(out / "dpa", ignore_errors=True)
            from pluralign.decode.rewards import FunctionReward
            from pluralign.sandbox.attributes import ATTRIBUTES, GoldScorer
            cols = [ATTRIBUTES.index(n) for n in names]
            gold = GoldScorer()
            reward = FunctionReward(lambda p, y: gold.score(p, y)[:, cols], names)
            d = dpa(base, train_prompts[: a.dpa_prompts], names, reward, out / "dpa", rounds=a.dpa_rounds, n=4,
                    loop=loop | {"learning_rate": a.sft_lr, "max_steps": a.sft_steps}, seed=a.seed)
        record_steered("dpa", d, clock, 1, control="direction")
    if "linear" in per_prompt:
        results["hv_ratio_ci"] = {m: ratio_ci(per_prompt[m], per_prompt["linear"], ref, rng)
                                  for m in per_prompt if m != "linear"}
    return results


def simplex(k: int, n: int) -> list[tuple[float, ...]]:
    """Every weight vector over k objectives whose entries are multiples of 1/n."""
    return [tuple(c / n for c in cs) for cs in itertools.product(range(n + 1), repeat=k) if sum(cs) == n]


def ratio_ci(per: list[np.ndarray], per_lin: list[np.ndarray], ref: np.ndarray, rng: np.random.Generator,
             n_boot: int = 200) -> list[float]:
    """95% CI of HV(method) / HV(sweep), prompts resampled jointly for both (the same evaluation prompts):
    a paired bootstrap, tighter than the two HV CIs side by side."""
    from pluralign.evaluate.pareto import hypervolume

    P, ratios = per[0].shape[0], []
    for _ in range(n_boot):
        idx = rng.integers(0, P, P)
        lin = hypervolume(np.stack([x[idx].mean(0) for x in per_lin]), ref)
        ratios.append(hypervolume(np.stack([x[idx].mean(0) for x in per]), ref) / lin if lin > 0 else float("nan"))
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def equal_cost_steps(done: dict, steps: int) -> int | None:
    """RACO's steps per model at the linear sweep's CPU-seconds. A model's cost is a fixed part (load,
    data, reference pass, save) plus steps × the cost of a step; with the `linshort` control (the sweep at
    fewer steps) the two are told apart, else the fixed part is taken as 0 (fewer steps than fair)."""
    lin, rac, short = done.get("linear"), done.get("raco"), done.get("linshort")
    if not (lin and rac):
        return None
    per_lin, per_rac = lin["cpu_s"] / lin["models"], rac["cpu_s"] / rac["models"]
    fixed = 0.0
    if short and short["steps"] < steps:
        step_cost = (per_lin - short["cpu_s"] / short["models"]) / (steps - short["steps"])
        fixed = min(max(per_lin - steps * step_cost, 0.0), 0.9 * per_lin)
    return max(1, round(steps * (per_lin - fixed) / max(per_rac - fixed, 1e-9)))


def verdicts(res: dict) -> dict:
    m = res["methods"]
    lin = m.get("linear")
    out = {}
    if lin:
        dense = [f"{n}_dense" for n in SINGLE_RUN]
        for name in (*SINGLE_RUN, *dense):
            if name in m:
                out[f"{name}_hv_ratio"] = m[name]["hv"] / lin["hv"] if lin["hv"] > 0 else float("nan")
                out[f"{name}_cost_ratio"] = m[name]["cpu_s"] / lin["cpu_s"] if lin["cpu_s"] > 0 else float("nan")
        # At the sweep's own weights, and (on 3 objectives) with the single-run models steered at the finer
        # grid as well: the same models and training cost, more points than the sweep has models.
        # Each verdict only where a method it is about ran: without one it read False, a finding about nothing.
        for suffix, group, about in (("", SINGLE_RUN, SINGLE_RUN), ("_dense", [*SINGLE_RUN, *dense], dense)):
            if any(n in m for n in about):
                out[f"single_run_95pct_at_third_cost{suffix}"] = any(
                    out.get(f"{n}_hv_ratio", 0) >= 0.95 and out.get(f"{n}_cost_ratio", 9) <= 1 / 3 for n in group)
        for name in ("raco", "racoub", "pama", "racoeq", "linshort", "linb"):
            if name in m:
                out[f"{name}_minus_linear_hv"] = m[name]["hv"] - lin["hv"]
                out[f"{name}_cost_ratio"] = m[name]["cpu_s"] / lin["cpu_s"] if lin["cpu_s"] > 0 else float("nan")
                if "linb" in m and name.startswith("raco"):  # RACO's paper baseline: both normalised by the batch
                    out[f"{name}_minus_linb_hv"] = m[name]["hv"] - m["linb"]["hv"]
        # Equal cost = equal CPU-seconds within 10%: PAMA at the sweep's steps costs about the same as the
        # sweep; RACO costs more per step, so `racoeq` is RACO with the steps the sweep's CPU-seconds buy.
        if any(n in m for n in ("racoeq", "racoub", "pama")):
            out["raco_or_pama_ge_linear_at_equal_cpu"] = any(
                out.get(f"{n}_minus_linear_hv", -1) >= 0 and out.get(f"{n}_cost_ratio", 9) <= 1.1
                for n in ("racoeq", "racoub", "pama"))
        if "soups" in m and "linshort" in m and m["linshort"]["hv"] > 0:  # soups against the sweep at the experts' steps
            out["soups_vs_linshort_hv_ratio"] = m["soups"]["hv"] / m["linshort"]["hv"]
            out["soups_vs_linshort_cost_ratio"] = m["soups"]["cpu_s"] / m["linshort"]["cpu_s"]
    return out


def report_runs(case: str, res: dict) -> list[dict]:
    runs = []
    for method, entry in res["methods"].items():
        for i, p in enumerate(entry["points"]):
            runs.append({"name": f"{case}:{method}#{i}", "method": f"{case}:{method}",
                         "objectives": dict(zip(res["objectives"], p, strict=True))})
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer prompts, steps and samples (~3 min of CPU)")
    p.add_argument("--cases", default="2obj,3obj")
    p.add_argument("--methods", default="linear,raco,racoub,pama,racoeq,linshort,modpo,map,mahdpo,soups,jsoup,ric,dpa",
                   help=f"comma-separated, of: {', '.join(METHODS)}")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--lr", type=learning_rate, default=5e-4, help="learning rate of the preference runs (the sweep's)")
    p.add_argument("--expert-lr", type=learning_rate, default=None, help="soup experts' learning rate (default: --lr)")
    p.add_argument("--raco-c", type=float, default=0.2, help="RACO's c (the radius of its conflict-averse ball; "
                   "0.2 of {0.2, 0.4} on seed 2)")
    p.add_argument("--raco-params", default="{}", help="further hyper-parameters of the raco combiner for every RACO "
                   "row, as JSON (e.g. '{\"clip\": false}')")
    p.add_argument("--expert-fracs", default="0.5", help="soup experts' steps as fractions of a sweep model's; "
                   "the first is `soups`, each further one another soup (the expert-step sweep)")
    p.add_argument("--drop-ties", action=argparse.BooleanOptionalAction, default=False,
                   help="signed-pair methods train only on pairs with a preference on a weighted objective")
    p.add_argument("--dense-grid", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate each single-run method at every weight in multiples of 1/4 (<method>_dense; "
                   "full mode only)")
    p.add_argument("--grid", choices=["sweep", "quarter"], default="sweep", help="weights of every method: the "
                   "sweep's grid (5 / 7 weights), or every weight in multiples of 1/4 (5 / 15): a sweep with as many "
                   "models as the single-run methods' dense points")
    p.add_argument("--wc-steps", type=float, default=2.0, help="wcdpo's steps as a multiple of a sweep model's")
    p.add_argument("--wc-lr", type=learning_rate, default=None, help="wcdpo's learning rate (default: --lr)")
    p.add_argument("--wc-copies", type=int, default=1, help="wcdpo: each signed pair this many times, each with "
                   "its own drawn weights")
    p.add_argument("--jsoup-frac", type=float, default=0.22, help="jsoup's steps as a fraction of the sweep's steps, "
                   "all its models together (0.22 of {0.2, 0.22, 0.25} on seed 2: 0.25 cost 0.34-0.35 of the sweep there, "
                   "with its own reference pass)")
    p.add_argument("--jsoup-lr", type=float, default=1e-3, help="jsoup's learning rate (1e-3 of {5e-4, 1e-3} on seed 2)")
    p.add_argument("--jsoup-params", default="{}", help="joint_soup conditioning parameters as JSON (alpha, vertex_prob)")
    p.add_argument("--out", default="runs/pareto_training")
    a = p.parse_args(argv)
    # Checked before anything is trained: an unknown name would otherwise be skipped without a word (or, for a
    # case, fail after the base model is built).
    for flag, given, valid in (("--methods", a.methods, METHODS), ("--cases", a.cases, list(CASES))):
        unknown = [m for m in given.split(",") if m not in valid]
        if unknown:
            p.error(f"{flag}: unknown name(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    if "mod" in a.methods.split(",") and "soups" not in a.methods.split(","):
        p.error("--methods: mod combines the soup's experts, so it needs soups too")
    if a.wc_copies < 1:
        p.error(f"--wc-copies must be at least 1, got {a.wc_copies}")
    try:
        fracs = [float(f) for f in a.expert_fracs.split(",")]
    except ValueError:
        p.error(f"--expert-fracs: comma-separated numbers expected, got {a.expert_fracs!r}")
    if any(not f > 0 for f in fracs):
        p.error(f"--expert-fracs: fractions must be above 0, got {a.expert_fracs!r}")
    for flag, value in (("--raco-params", a.raco_params), ("--jsoup-params", a.jsoup_params)):
        try:
            if not isinstance(json.loads(value), dict):
                raise ValueError
        except ValueError:
            p.error(f"{flag}: a JSON object expected, got {value!r}")
    a.prompts, a.steps, a.sft_steps, a.batch_size = (64, 30, 60, 16) if a.quick else (160, 80, 150, 16)
    a.eval_prompts, a.samples = (24, 2) if a.quick else (64, 2)
    a.dpa_prompts, a.dpa_rounds = (48, 1) if a.quick else (160, 2)
    a.sft_lr = 1e-3
    a.dense_grid = a.dense_grid and not a.quick  # --quick cannot tell these apart anyway; keep it short
    a.expert_lr = a.expert_lr or a.lr
    # Soup experts train with a fraction of a sweep model's steps ("experts only need the extremes");
    # `linshort` is the sweep at that budget, so the saving's source is visible. More fractions train
    # more soups (soups<steps>), the expert-step sweep.
    a.soup_steps = [max(1, round(float(f) * a.steps)) for f in a.expert_fracs.split(",")]
    a.expert_steps = a.soup_steps[0]
    a.wc_steps = max(1, round(a.wc_steps * a.steps))

    import torch

    from pluralign.evaluate.report import write_report
    from pluralign.runs import atomic_write_json
    from pluralign.sandbox.base import build_base

    torch.set_num_threads(1)  # a small model: one thread is fastest, and CPU-seconds stay comparable
    torch.manual_seed(a.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(a.out)
    base = build_base(seed=a.seed)
    rng = np.random.default_rng(a.seed)
    everything = {"settings": vars(a)}
    for case in a.cases.split(","):
        res = run_case(case, a, base, out / case, rng)
        res["verdicts"] = verdicts(res)
        everything[case] = res
        print(f"[{case}] {res['verdicts']}", flush=True)
        for m, (lo, hi) in res.get("hv_ratio_ci", {}).items():
            print(f"[{case}] HV {m} / linear: 95% CI [{lo:.3f}, {hi:.3f}] (paired bootstrap)", flush=True)
    atomic_write_json(out / "results.json", everything)
    for case in a.cases.split(","):  # one report per case (3 objectives: fronts drawn pairwise, HV over all 3)
        res = everything[case]
        write_report({"title": f"Many objectives at once ({case}): Pareto fronts of multi-objective training",
                      "description": "Mean gold attributes of samples per model / per requested weight; one front per "
                                     f"method; objectives {res['objectives']}, reference point {res['reference']}.",
                      "runs": report_runs(case, res),
                      "pareto": {"objectives": res["objectives"], "reference": res["reference"]}},
                     out / f"report_{case}.html")
    fields = []
    for case in a.cases.split(","):
        res = everything[case]
        for method, e in res["methods"].items():
            fields += [f"{case}_{method}_hv={e['hv']:.4f}", f"{case}_{method}_cpu_s={e['cpu_s']:.1f}"]
        fields += [f"{case}_{k}={v:.3f}" if isinstance(v, float) else f"{case}_{k}={v}" for k, v in res["verdicts"].items()]
    print(f"total {time.perf_counter() - t0:.0f}s wall, {time.process_time() - c0:.0f} CPU-s; {out / 'results.json'}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
