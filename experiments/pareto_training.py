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

Settings picked on seed 2 only (soup experts at 0.5 of the sweep's steps, of {0.4, 0.5, 0.6, 0.75}; the sweep's
learning rate 5e-4, of {5e-4, 1e-3}, better for the sweep and no help to the experts; RACO's c = 0.2, of
{0.2, 0.4}); seeds 0, 1 and 3 are the reported ones. Equal cost: RACO with the Gram at the log-probs
(racoub) at the sweep's steps costs 0.93-1.10x its CPU-seconds (the derivatives and the solver); racoeq is
RACO with full gradients at the steps the sweep's CPU-seconds buy. On a machine whose load moves between
methods CPU-seconds drift by up to a quarter between processes: compare ratios within one run. Tried on
seed 2 and dropped (3 objectives, soups of 40-step experts): --drop-ties (the one-hot experts skip the
pairs tied on their objective, 40% of the rows for formality): sweep 0.427 and soups 0.397 against 0.451
and 0.410 without; extrapolating the soup from the base (θ_0 + α Σ λ_i (θ_i − θ_0), α 1.5 / 2): 0.386 /
0.296. Single-run methods are also steered at every weight in multiples of 1/4 (`<method>_dense`, on 3
objectives 15 weights against the sweep's 7: the same models and training cost, more points).

Where the soups lose on 3 objectives (seed 2, 2026-12-05, 47 CPU-s for linear + soups): putting the sweep's
model in place of the soup's point at one weight adds +0.028 of hypervolume at (1/2, 0, 1/2) (informativeness
+ formality), +0.011 at the formality vertex, +0.004 at the centroid, <= 0.002 elsewhere. The informativeness
and conciseness experts reach their extremes by 40 steps (0.53 / 0.88 against the sweep's best 0.52 / 0.87;
conciseness then collapses: 0.84 / 0.54 / 0.22 at 60 / 80 / 120 steps), the formality expert does not (0.10 /
0.27 / 0.36 / 0.49 / 0.43 at 20 / 40 / 60 / 80 / 120 steps; the sweep's vertex 0.49). The budget is not the
whole gap: soups of 80-step experts (the sweep's own vertex models) reach 0.416 (0.92 of the sweep, at 0.46
of its cost), 40-step experts with an 80-step formality expert 0.416, the hand-picked 40 / 20 / 80 steps
(chosen with the gold evaluation, so not adopted) 0.432 (0.96, about 0.33 of the cost). At (1/2, 0, 1/2) the
soup of the sweep's vertex models gives (0.41, 0.46, 0.26), near its members' chord (0.38, 0.48, 0.24), while
the model trained at that weight reaches (0.46, 0.48, 0.36): on that edge joint training finds a point well
above the chord, which interpolating single-objective experts does not. Dropped on seed 2: the same expert
steps split by 1 / (share of pairs not tied on the objective, 0.79 / 0.94 / 0.60): 38 / 32 / 50 steps, 0.402
(0.89), and at 0.6 of the sweep's steps 0.416 (0.92, cost 0.33); norm-preserving task-vector merging (the
merged delta rescaled to the λ-mean of the members' delta norms, globally or per tensor; α 1.24 on the
informativeness-formality edge, 1.6-1.9 elsewhere): 0.397 / 0.396; three 40-step experts at the edges'
midpoints, λ solved so the soup's weight is w (the vertices extrapolated, λ = (1, 1, -1)): 0.408 (0.91); each
expert stopped early on its own objective (10% of prompts held out, <= 80 steps, best evaluation kept), which misses
conciseness' collapse (held-out DPO loss and accuracy keep improving): loss, every 10 steps, patience 2: 80 / 80 / 80
steps, 0.83 at 0.62 of the cost; accuracy, every 5, patience 1 (stops on noise): 0.57 at 0.29 (seeds 0 / 1 / 3: 0.98 /
0.86 / 0.91 at 0.44-0.63; 0.70 / 0.59 / 0.73 at 0.19-0.23); experts fine-tuned 40 steps from a shared warm start (40 steps
at the centroid weight), with it or the base as reference: 0.81 / 0.79 at 0.35 / 0.44 of the cost. RACO, same seed: at the vertices it is
the sweep; racoeq (38 steps: full-gradient RACO costs 1.9x a sweep step) under-trains formality as the
40-step experts do (vertex 0.25; 0.395 against 0.451); racoub (-0.004, ratio CI [0.966, 1.008]) loses only
at the centroid (formality 0.17 against 0.22, 0.007 of hypervolume). Also dropped there (racoub minus the
sweep, 3 / 2 objectives): c 0.02 / 0.05 / 0.1 / 0.3 gives +0.002 / -0.000 / -0.006 / -0.005 and -0.007 /
-0.001 / -0.003 / +0.011 (c 0.2: -0.004 / +0.009); on 3 objectives the clip off -0.008, unit-norm gradients
in the solve (IMTL-G) -0.005, zero-weight objectives left out of it -0.010. The correction goes to the
conflicting pair (centroid a = 0.35 / 0.43 / 0.34, a step 1.06x the linear one's length, not shorter), so
under Adam formality, whose DPO loss falls fastest (0.59 against 0.65 / 0.70) but whose gold attribute lags,
loses share. c = 0.05 (the best worse case of the two on seed 2) on seeds 0 / 1 / 3: +0.001 / +0.007 /
-0.004 on 2 objectives, +0.001 / +0.008 / -0.005 on 3 (cost 1.06-1.11x; seed 3's ratio CI [0.962, 1.011]):
seed 3 still fails. Checked on seeds 0 / 1 / 3 (nothing chosen there): soups of the sweep's own vertex models 0.86 / 0.93 / 0.96 of the sweep (40-step soups 0.98 /
0.89 / 1.00, as above), the sweep's (1/2, 0, 1/2) model adding +0.055 / +0.008 / +0.000 in place of that
soup's point; the 80-step conciseness-only model collapses to (0, 1, 0) on seeds 0 and 3 (0.54 on seed 2).

wcdpo, tried on seed 2 (3 objectives, 2026-12-06; sweep 0.419 on this machine): HV 0.039 at the sweep's steps and
learning rate, 0.048 at 2x its steps, 0.053 / 0.063 at 1.5x with learning rate 5e-3 / 2e-3, 0.059 with each pair
three times under three drawn weights (1.5x steps, 1e-3), at 0.25-0.5 of the sweep's cost. The sandbox model does
not learn to read the stated weights in such a budget: its next-token logits under weights (1, 0, 0) and (0, 1, 0)
differ by about 1e-3, so every weight gives one point, about (0.04, 0.79, 0.13). (On the toy model of
tests/test_multiobjective.py the same recipe steers clearly after 100 steps at a 100x larger learning rate.)
mod, same seed and experts: 0.360 against the weight-averaged soup's 0.376 (0.86 / 0.90 of the sweep). The 40-step
formality expert is the bottleneck either way, and logit fusion keeps even less of it at the mixed weights
(formality 0.01 at (1/2, 0, 1/2) against the soup's 0.07 and the sweep's 0.31).

jsoup, measured 2026-12-06 on another machine than the figures below (seed 2's three-objective sweep: 0.419 for
these, 0.451 for those; the same code, other float rounding): settings picked on seed 2 (three objectives, HV / sweep at the cost
ratio): learning rate 1e-3 of {5e-4, 1e-3} (0.98 against 1.11 at 0.25 of the sweep's steps); vertex_prob 0.25 of
{0.25, 0.5} (0.5: 0.97 / 0.99 at 5e-4 / 1e-3); Dirichlet alpha 1 of {0.5, 1} (0.5: 0.91 at 5e-4); 0.22 of the
sweep's steps of {0.2, 0.22, 0.25} (1.04 / 1.10 / 1.11; 0.25 cost 0.34-0.35 of the sweep with jsoup's own
reference pass). Seeds 0 / 1 / 3, in processes with linear and soups: two objectives 0.98 [0.92, 1.06] / 0.87
[0.75, 0.97] / 1.16 [1.10, 1.24] at 0.28 / 0.21 / 0.26; three 1.20 [1.14, 1.31] / 0.98 [0.90, 1.09] / 1.05
[0.96, 1.12] at 0.26 / 0.29 / 0.30 (seed 2: 1.02 and 1.10). The separately trained soups in those runs: 0.91 /
1.05 / 0.98 and 0.91 / 0.90 / 0.93. The full runs there (methods linear,linshort,raco,racoub,pama,racoeq,soups,
jsoup; jsoup at 0.25 of the steps): racoub minus the sweep -0.021 / +0.026 / +0.009 and -0.009 / -0.000 /
-0.006 (seed 2: -0.013 / -0.005), racoeq -0.033 / -0.006 / +0.004 and -0.057 / -0.031 / -0.041.

Measured 2026-12-05 (full mode, methods linear,linshort,raco,racoub,pama,racoeq,soups; 370 CPU-s a seed,
load 2): soups / sweep hypervolume (paired-bootstrap 95% CI) at the cost ratio, seeds 0 / 1 / 3:
2 objectives 1.21 [1.08, 1.32] / 1.01 [0.93, 1.07] / 1.00 [0.93, 1.08] at 0.29 / 0.28 / 0.28;
3 objectives at the sweep's 7 weights 0.98 [0.92, 1.05] / 0.89 [0.83, 0.96] / 1.00 [0.93, 1.09] at
0.25 / 0.27 / 0.28 (seed 2: 0.91); at the 15 weights of the 1/4 grid 1.08 [1.02, 1.17] / 1.00 [0.93, 1.07] /
1.06 [0.99, 1.15] (seed 2: 0.98). So >= 95% at <= 1/3 holds on 2 objectives on all three seeds, and on
3 objectives on seeds 0 and 3 at the sweep's weights, on all three (and seed 2) only with the soup
steered at the finer grid, which is more points than the sweep has models: a sweep trained at those 15
weights (--grid quarter; 0.455 / 0.532 / 0.430, +3 / +10 / +8%) puts the 15-weight soups at 1.04
[0.98, 1.11] / 0.91 [0.86, 0.97] / 0.98 [0.89, 1.04] at 0.14 / 0.12 / 0.13 of its cost, so seed 1
still fails at equal points. Against the sweep at the
experts' 40 steps (linshort, itself 0.94-1.14x the 80-step sweep; on seed 0's 2 objectives above it,
CI [1.02, 1.24]: that sweep overtrains) the soups reach 0.95-1.07x at 0.44-0.52 of its cost: much of the
saving is the shorter budget, and against the 40-step sweep the 1/3 cost target is not met.
RACO against the sweep at equal cost (HV difference, cost ratio): 2 objectives racoeq +0.030 / +0.022 /
+0.012 at 0.95-1.04x, racoub -0.005 / +0.022 / +0.019; 3 objectives racoeq +0.004 / -0.043 / -0.031,
racoub -0.006 / +0.001 / -0.011 at 0.93-1.10x: a RACO variant >= the sweep on 2 objectives on every seed
(CIs of the ratio include 1 except racoub on seed 3, [1.006, 1.079]), not on 3 objectives (seed 3: none).
PAMA 0.66-0.98x of the sweep (see above). --quick (24 evaluation prompts, 30 steps) is too noisy to decide
either (CIs about ±0.04 on a hypervolume near 0.32). Run time 2026-12-05, seed 0, defaults (every method):
full 501 CPU-s, 760 s wall at load 0.4-3.6; --quick 172 CPU-s, 176 s wall at load 2 (seed 0: soups 99%
at 0.28 on 2 objectives, 87% at 0.29 on 3).

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
    combiners = {"linear": ("weighted", {}), "linshort": ("weighted", {}), "raco": ("raco", {}),
                 "racoeq": ("raco", {}), "racoub": ("raco", {"gram": "logps"}), "pama": ("pama", {})}
    combiners |= {m: ("raco", p | {"c": a.raco_c} | json.loads(a.raco_params)) for m, (c, p) in combiners.items()
                  if c == "raco"}
    for method in ("linear", "linshort", "raco", "racoub", "pama", "racoeq"):
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
        for suffix, group in (("", SINGLE_RUN), ("_dense", [*SINGLE_RUN, *dense])):
            out[f"single_run_95pct_at_third_cost{suffix}"] = any(
                out.get(f"{n}_hv_ratio", 0) >= 0.95 and out.get(f"{n}_cost_ratio", 9) <= 1 / 3 for n in group)
        for name in ("raco", "racoub", "pama", "racoeq", "linshort"):
            if name in m:
                out[f"{name}_minus_linear_hv"] = m[name]["hv"] - lin["hv"]
                out[f"{name}_cost_ratio"] = m[name]["cpu_s"] / lin["cpu_s"] if lin["cpu_s"] > 0 else float("nan")
        # Equal cost = equal CPU-seconds within 10%: PAMA at the sweep's steps costs about the same as the
        # sweep; RACO costs more per step, so `racoeq` is RACO with the steps the sweep's CPU-seconds buy.
        out["raco_or_pama_ge_linear_at_equal_cpu"] = any(
            out.get(f"{n}_minus_linear_hv", -1) >= 0 and out.get(f"{n}_cost_ratio", 9) <= 1.1 for n in ("racoeq", "racoub", "pama"))
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
    p.add_argument("--methods", default="linear,raco,racoub,pama,racoeq,linshort,modpo,map,mahdpo,soups,jsoup,ric,dpa")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate of the preference runs (the sweep's)")
    p.add_argument("--expert-lr", type=float, default=None, help="soup experts' learning rate (default: --lr)")
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
    p.add_argument("--wc-lr", type=float, default=None, help="wcdpo's learning rate (default: --lr)")
    p.add_argument("--wc-copies", type=int, default=1, help="wcdpo: each signed pair this many times, each with "
                   "its own drawn weights")
    p.add_argument("--jsoup-frac", type=float, default=0.22, help="jsoup's steps as a fraction of the sweep's steps, "
                   "all its models together (0.22 of {0.2, 0.22, 0.25} on seed 2: 0.25 cost 0.34-0.35 of the sweep there, "
                   "with its own reference pass)")
    p.add_argument("--jsoup-lr", type=float, default=1e-3, help="jsoup's learning rate (1e-3 of {5e-4, 1e-3} on seed 2)")
    p.add_argument("--jsoup-params", default="{}", help="joint_soup conditioning parameters as JSON (alpha, vertex_prob)")
    p.add_argument("--out", default="runs/pareto_training")
    a = p.parse_args(argv)
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
