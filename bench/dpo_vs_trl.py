"""pluralign's DPO recipe against TRL's `DPOTrainer`, side by side on one machine.

Both sides train the same locally built Llama-style model (`pluralign.models.tiny.tiny_llama`, ~14M
parameters, the sandbox word tokenizer) on the same sandbox preference pairs, with the same batch size,
learning rate, steps, seed and a constant schedule, in fp32 on CPU:

* TRL 1.16 `DPOTrainer` with `precompute_ref_log_probs=True` and its other defaults (fp32 forced:
  `bf16=False`; its default `gradient_checkpointing=True` kept; `--trl-no-gc` adds a run without it);
* pluralign's preference recipe (`pluralign.train.recipes.preference.run`) in its default configuration:
  loss "dpo", reference log-probs precomputed and cached, padding-free packed batches with attention run
  per sequence (`pluralign.models.packed_attention`), completion log-probs from chunked heads (no
  full-vocabulary logits), gradient checkpointing on (as TRL's).

Data: prompts of the sandbox world with two grammar responses each whose number of sentences is drawn
log-uniformly in [1, 24] (about 10-200 tokens, the spread of real preference data), labelled by a
Bradley-Terry draw on the sandbox "majority" group's gold utility (Bradley & Terry, 1952).

Each side runs in its own subprocess (peak RSS from `os.wait4`, i.e. `ru_maxrss` of that process alone).
TRL's sampler is made sequential over the examples laid out in pluralign's data order, so both sides see
the same batches, padded the same way (right padding to the longest row of the batch, no packing): the
per-step losses are comparable ("padding-identical mode") and the reported difference is the largest
|loss_pluralign - loss_trl| over all steps.

Throughput = real (non-pad) prompt+completion tokens of the trained pairs / end-to-end seconds from
loading the model to the trained model saved, so the reference precompute, tokenization and checkpointing
are included for both. MFU counts 6·N FLOPs per trained token and 2·N per reference-precompute token
(forward only), N = parameters without the input embedding table (attention score FLOPs not counted),
against the best fp32 `torch.mm` rate measured on this machine in the same run.

GPU mode (`--preset 0.3b|1.3b`, `--device cuda`): a randomly initialised Llama with a 32000-token
vocabulary (the sandbox tokenizer's ids are a subset), sandbox pairs with up to 96 sentences per response
(completions up to ~800 tokens, max_length 1024), 12 steps of 8 pairs, bf16 autocast over fp32 weights on
both sides (pluralign `loop.mixed_precision=bf16`, TRL `bf16=True`). Peak memory is
`torch.cuda.max_memory_allocated` of each side's process; MFU is against the chip's dense bf16 peak (a
table of known chips, else the best bf16 `torch.mm` rate measured here). `--preset tiny --device cpu`
drives the same code path on a CPU (tests/test_bench.py), with bf16 autocast on the CPU.

Every run prints, for both sides, the seconds of each phase: load (model and tokenizer; for TRL also the
trainer's dataset preparation), reference pass, training steps, save.

    .venv/bin/python bench/dpo_vs_trl.py            # full (~14M params, 10 steps of 8 pairs)
    .venv/bin/python bench/dpo_vs_trl.py --quick    # 4 steps, one run per side: under 5 minutes
    .venv/bin/python bench/dpo_vs_trl.py --device cuda --preset 0.3b   # GPU mode (also 1.3b)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pluralign.cli import learning_rate, positive_int, seed_int

MODEL = dict(hidden_size=384, num_layers=6, num_heads=6)  # CPU mode

# GPU mode: Llama shapes, vocabulary, data lengths, and the run's size.
PRESETS = {
    "tiny": dict(model=dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=172), vocab_size=32000,
                 max_sentences=24, max_length=512, steps=2, batch_size=2),
    "0.3b": dict(model=dict(hidden_size=1024, num_layers=20, num_heads=16, intermediate_size=2816),
                 vocab_size=32000, max_sentences=96, max_length=1024, steps=12, batch_size=8),
    "1.3b": dict(model=dict(hidden_size=2048, num_layers=24, num_heads=16, intermediate_size=5504),
                 vocab_size=32000, max_sentences=96, max_length=1024, steps=12, batch_size=8),
}
# Dense bf16 peak FLOP/s by device name (vendor data sheets, SXM parts, no sparsity).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


# ---------------------------------------------------------------- data and model (parent process)


def make_pairs(n: int, seed: int, max_sentences: int = 24) -> list:
    """`n` sandbox preference pairs with a wide spread of response lengths (see the module doc)."""
    from pluralign.data.records import Pairwise
    from pluralign.sandbox.attributes import score_batch
    from pluralign.sandbox.users import population, preference_probability, utility
    from pluralign.sandbox.world import World

    world = World(seed)
    rng = world.rng("bench")
    group = population("default").group("majority")
    out = []
    for prompt in world.prompts(n, rng):
        responses = []
        for _ in range(2):
            n_sentences = int(round(math.exp(rng.uniform(0.0, math.log(max_sentences)))))
            style = dataclasses.replace(world.style(prompt, rng), n_sentences=n_sentences)
            responses.append(" " + world.respond(prompt, rng, style))
        u = utility(group.weights, score_batch([prompt, prompt], responses))
        first = rng.random() < preference_probability(u[0], u[1], group.temperature)
        chosen, rejected = responses if first else responses[::-1]
        out.append(Pairwise(prompt=prompt, chosen=chosen, rejected=rejected, group=group.name))
    return out


def build_model(out_dir: Path, seed: int, shape: dict = MODEL, vocab_size: int | None = None,
                max_length: int = 512) -> int:
    """Save a fresh Llama of `shape` + the sandbox tokenizer to `out_dir`; return the FLOP-counted parameters."""
    from pluralign.models.tiny import tiny_llama
    from pluralign.sandbox.world import World

    tok = World(seed).tokenizer()
    model = tiny_llama(max(vocab_size or 0, len(tok)), **shape, max_position_embeddings=max_length, seed=seed,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def token_counts(records: list, order: list[int], batch_size: int, model_dir: Path, max_length: int = 512) -> dict:
    """Real tokens of the trained rows, of the reference pass (every example once), and padded slots."""
    from pluralign.data.tokenize import encode_pair
    from pluralign.models.load import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    encoded = [(encode_pair(tok, r.prompt, r.chosen, max_length), encode_pair(tok, r.prompt, r.rejected, max_length))
               for r in records]
    lens = [(len(c), len(r)) for c, r in encoded]
    completion = [sum(e.completion_mask) for pair in encoded for e in pair]
    trained = sum(sum(lens[i]) for i in order)
    padded = 0
    for s in range(0, len(order), batch_size):
        rows = [x for i in order[s:s + batch_size] for x in lens[i]]
        padded += len(rows) * max(rows)
    return {"train_tokens": trained, "ref_tokens": sum(map(sum, lens)), "padded_slots": padded,
            "completion_min": min(completion), "completion_median": int(np.median(completion)),
            "completion_max": max(completion)}


def matmul_peak(n: int = 1024, reps: int = 8, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best `torch.mm` rate in FLOP/s over `reps` timed calls (after a warm-up)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def chip_peak(device: str) -> tuple[float, str]:
    """(dense bf16 FLOP/s of this chip, where the figure comes from)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, flops in BF16_PEAK.items():
            if key in name:
                return flops, f"{name} data sheet"
        return matmul_peak(8192, 4, device, torch.bfloat16), f"{name} best bf16 torch.mm 8192^3"
    # A CPU without native bf16 emulates bf16 matmuls far below its fp32 rate (1 vs ~40 GFLOP/s on a core
    # measured here) while autocast may run the model's own matmuls on faster paths: take the faster dtype,
    # so that the MFU stays a fraction of what the chip can do.
    return max(matmul_peak(1024, 8, device, torch.bfloat16), matmul_peak()), "CPU best bf16 or fp32 torch.mm 1024^3"


# ---------------------------------------------------------------- the two sides (child processes)


def warm_imports() -> None:
    """Import what both sides use lazily (transformers' auto classes scan the package on first use: tens of
    seconds on a loaded machine), so that library import time is not counted as training time."""
    import accelerate  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401


def timed(phases: dict, name: str, fn, device: str):
    """`fn` that adds its wall seconds (device work included) to `phases[name]`."""
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sync(device)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
    return wrapper


def start_clocks() -> tuple[float, float]:
    """(wall, CPU) seconds now: a side's wall and CPU seconds are taken over the same span, after its imports."""
    return time.perf_counter(), time.process_time()


def since(clocks: tuple[float, float]) -> dict:
    """Wall and CPU seconds (every thread of this process) since `start_clocks()`."""
    return {"wall_s": time.perf_counter() - clocks[0], "cpu_s": time.process_time() - clocks[1]}


def side_pluralign(spec: dict) -> dict:
    from pluralign.runs import RunDir
    from pluralign.train.recipes import preference
    from pluralign.train.recipes.preference import from_kwargs, run

    phases: dict[str, float] = {}
    for phase, name in (("load", "load_policy"), ("reference", "_reference"), ("train", "train"),
                        ("save", "save_policy")):
        setattr(preference, name, timed(phases, phase, getattr(preference, name), spec["device"]))
    from pluralign.config import parse_overrides

    clocks = start_clocks()

    config = from_kwargs(model=spec["model"], data=[spec["data"]], loss="dpo", output_dir=spec["out"],
                         max_length=spec["max_length"],
                         **parse_overrides([f"{k}={v}" for k, v in spec["options"].items()]),
                         loop=dict(learning_rate=spec["lr"], batch_size=spec["batch_size"],
                                   max_steps=spec["steps"], seed=spec["seed"], scheduler="constant",
                                   warmup_ratio=0.0, log_every=1, progress=False,
                                   mixed_precision="bf16" if spec["bf16"] else "no"))
    run(config)
    sync(spec["device"])
    spent = since(clocks)
    rows = [r for r in RunDir(spec["out"]).read_metrics() if "loss" in r]
    return spent | {"train_s": rows[-1]["elapsed_s"], "losses": [r["loss"] for r in rows], "phases": phases}


def side_trl(spec: dict) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    class Recording(DPOTrainer):
        """Keeps each training step's exact loss (the logged one is a window mean)."""

        step_losses: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                self.step_losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    phases: dict[str, float] = {}
    device = spec["device"]
    Recording._precompute_ref_logps = timed(phases, "reference", DPOTrainer._precompute_ref_logps, device)
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    clocks = start_clocks()
    t0 = clocks[0]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    if device == "cuda":
        model.to(device)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    data = Dataset.from_list([{k: rows[i][k] for k in ("prompt", "chosen", "rejected")} for i in spec["order"]])
    args = DPOConfig(
        output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"], learning_rate=spec["lr"],
        max_steps=spec["steps"], seed=spec["seed"], lr_scheduler_type="constant", warmup_steps=0,
        precompute_ref_log_probs=True, bf16=spec["bf16"], use_cpu=device == "cpu", max_length=spec["max_length"],
        logging_steps=1, report_to="none", disable_tqdm=True, train_sampling_strategy="sequential",
        save_strategy="no", **({"gradient_checkpointing": False} if spec["no_gc"] else {}),
    )
    trainer = Recording(model=model, args=args, train_dataset=data, processing_class=tok)  # precomputes the reference
    sync(device)
    t1 = time.perf_counter()
    out = trainer.train()
    sync(device)
    t2 = time.perf_counter()
    trainer.save_model(str(Path(spec["out"]) / "model"))
    spent = since(clocks)
    phases |= {"load": t1 - t0 - phases.get("reference", 0.0), "train": t2 - t1, "save": time.perf_counter() - t2}
    return spent | {"train_s": float(out.metrics["train_runtime"]), "init_s": t1 - t0,
            "losses": Recording.step_losses, "gradient_checkpointing": bool(args.gradient_checkpointing),
            "phases": phases}


def packs(options: dict) -> bool:
    """Whether pluralign's run packs sequences (its default, unless `options` override it)."""
    from pluralign.train.recipes.preference import PreferenceConfig

    value = options.get("packing", PreferenceConfig().packing)
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")


def child_main(spec_path: str) -> None:
    import resource

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    warm_imports()
    if spec["device"] == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = (side_trl if spec["side"] == "trl" else side_pluralign)(spec)
    if spec["device"] == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    result["rss_after_imports_mb"] = before.ru_maxrss / 1024
    Path(spec["result"]).write_text(json.dumps(result))


def run_child(side: str, spec: dict, work: Path, tag: str) -> dict:
    """Run one side in a fresh interpreter; add its peak RSS (its own ru_maxrss) to its result."""
    spec = dict(spec, side=side, out=str(work / tag), result=str(work / f"{tag}.json"))
    spec_path = work / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(spec["threads"]))
    if spec["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # both sides on the CPU even on a machine with a GPU
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{tag}.log", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{tag} failed (exit {proc.returncode}); its log:\n{(work / f'{tag}.log').read_text()[-4000:]}")
    result = json.loads(Path(spec["result"]).read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 steps, one run per side (under 5 minutes)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="GPU mode: model size, 32000 vocabulary, long pairs, bf16 autocast (tiny: the smoke test's)")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=learning_rate, default=1e-5)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per side (1: no OpenMP barrier stalls when the machine is shared)")
    p.add_argument("--repeats", type=positive_int, default=2, help="runs per side (alternating); the fastest counts")
    p.add_argument("--trl-no-gc", action="store_true", help="also run TRL with gradient_checkpointing=False")
    p.add_argument("--no-gc", action="store_true", help="both sides without gradient checkpointing")
    p.add_argument("--pluralign-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="non-default recipe options to try, e.g. packing=true (the result is then not 'default')")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child_main(a.child)
    malformed = [kv for kv in a.pluralign_set if "=" not in kv]
    if malformed:
        p.error(f"--pluralign-set: KEY=VALUE expected, got {', '.join(map(repr, malformed))}")
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    if a.device == "cuda" and a.preset is None:
        sys.exit("--device cuda needs --preset (0.3b or 1.3b)")
    torch.set_num_threads(a.threads)

    from pluralign.data.io import write_records

    # The loop's data order (private), so that TRL can be fed the same batches.
    from pluralign.train.loop_config import global_batch_indices as _global_batch

    preset = PRESETS.get(a.preset, {})
    gpu_mode = bool(preset)
    steps = a.steps or preset.get("steps") or (4 if a.quick else 10)
    bs = a.batch_size or preset.get("batch_size") or 8
    max_length = preset.get("max_length", 512)
    repeats = 1 if a.quick else a.repeats
    work = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    records = make_pairs(steps * bs, a.seed, preset.get("max_sentences", 24))  # one epoch: same examples precomputed
    write_records(work / "pairs.jsonl", records)
    shape = preset.get("model", MODEL)
    n_params = build_model(work / "model", a.seed, shape, preset.get("vocab_size"), max_length)
    order = [i for s in range(steps) for i in _global_batch(len(records), a.seed, 0, s, bs)]
    counts = token_counts(records, order, bs, work / "model", max_length)
    options = dict(kv.split("=", 1) for kv in a.pluralign_set)
    if a.no_gc:
        options["gradient_checkpointing"] = "false"
    spec = {"model": str(work / "model"), "data": str(work / "pairs.jsonl"), "order": order, "steps": steps,
            "batch_size": bs, "lr": a.lr, "seed": a.seed, "no_gc": a.no_gc, "threads": a.threads,
            "device": a.device, "bf16": gpu_mode, "max_length": max_length, "options": options}

    if gpu_mode:
        peak, peak_source = chip_peak(a.device)
    else:
        peak, peak_source = matmul_peak(), "fp32 torch.mm 1024^3, best of 8 per measurement"
    sides = {"trl": ("trl", spec), "pluralign": ("pluralign", spec)}
    if a.trl_no_gc:
        sides["trl_no_gc"] = ("trl", dict(spec, no_gc=True))
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(repeats):  # alternating, so that a burst of outside load hits every side alike
        for name, (side, s) in sides.items():
            runs[name].append(run_child(side, s, work, f"{name}{r}"))
        if not gpu_mode:
            peak = max(peak, matmul_peak())
    # The least disturbed run (shortest wall time) of each side; memory is the same run's.
    res = {name: min(rs, key=lambda x: x["wall_s"]) for name, rs in runs.items()}
    parity = res["pluralign"]["losses"]
    # The loss comparison is made on padded batches, like TRL's (CPU mode; in GPU mode bf16 rounding differs
    # between the two implementations anyway, so the packed run's losses are compared, saving a run).
    if packs(spec["options"]) and not gpu_mode:
        parity = run_child("pluralign", dict(spec, options=dict(spec["options"], packing="false")), work,
                           "pluralign_padded")["losses"]

    flops = 6 * n_params * counts["train_tokens"] + 2 * n_params * counts["ref_tokens"]
    precision = "bf16 autocast on fp32 weights" if gpu_mode else "fp32"
    print(f"model: Llama {shape}, vocab {preset.get('vocab_size', 'sandbox')}, {n_params / 1e6:.2f}M FLOP-counted "
          f"params; {steps} steps x {bs} pairs, lr {a.lr}, constant schedule, {precision}, device {a.device}, "
          f"torch threads {a.threads}; pluralign options: {spec['options'] or 'defaults'}")
    print(f"data: {len(records)} sandbox pairs, completion tokens min/median/max = {counts['completion_min']}/"
          f"{counts['completion_median']}/{counts['completion_max']}; real tokens trained {counts['train_tokens']} "
          f"in {counts['padded_slots']} padded slots ({counts['train_tokens'] / counts['padded_slots']:.0%} real)")
    print(f"peak for MFU: {peak / 1e9:.1f} GFLOP/s ({peak_source}); best of {repeats} alternating run(s) per side")
    memory = "peak_gpu_mb" if a.device == "cuda" else "peak_rss_mb"
    print(f"{'side':<12}{'tok/s e2e':>11}{'tok/s loop':>12}{'tok/cpu-s':>11}{'wall s':>9}"
          f"{'peak GPU MB' if a.device == 'cuda' else 'peak RSS MB':>13}{'RSS@import':>12}{'MFU':>8}{'final loss':>13}")
    for name, r in res.items():
        r["tps"] = counts["train_tokens"] / r["wall_s"]
        r["mfu"] = flops / r["wall_s"] / peak
        print(f"{name:<12}{r['tps']:>11.1f}{counts['train_tokens'] / r['train_s']:>12.1f}"
              f"{counts['train_tokens'] / r['cpu_s']:>11.1f}{r['wall_s']:>9.1f}"
              f"{r[memory]:>13.0f}{r['rss_after_imports_mb']:>12.0f}{r['mfu']:>8.2%}{r['losses'][-1]:>13.7f}")
    print("seconds per phase: " + "; ".join(
        f"{name} " + ", ".join(f"{k} {r['phases'].get(k, 0.0):.2f}" for k in ("load", "reference", "train", "save"))
        for name, r in res.items()))
    ours, trl = res["pluralign"], res["trl"]
    if len(parity) != len(trl["losses"]):
        sys.exit(f"step counts differ: pluralign {len(parity)}, TRL {len(trl['losses'])}")
    diffs = [abs(x - y) for x, y in zip(parity, trl["losses"], strict=True)]
    print(f"per-step |loss diff| (same batches{'' if gpu_mode else ', same padding'}): max {max(diffs):.2e}, final {diffs[-1]:.2e}; "
          f"first losses {parity[0]:.6f} / {trl['losses'][0]:.6f}")
    print(f"throughput ratio by CPU seconds (robust to other load): x{trl['cpu_s'] / ours['cpu_s']:.3f}")
    if "trl_no_gc" in res:
        o = res["trl_no_gc"]
        print(f"vs TRL without gradient checkpointing: throughput x{ours['tps'] / o['tps']:.2f} "
              f"(by CPU seconds x{o['cpu_s'] / ours['cpu_s']:.2f}), memory x{ours[memory] / o[memory]:.2f}")
    if not a.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory: {work}")
    tag = f"preset={a.preset} device={a.device} " if gpu_mode else ""
    print(f"RESULT {tag}throughput_ratio={ours['tps'] / trl['tps']:.3f} memory_ratio={ours[memory] / trl[memory]:.3f} "
          f"loss_abs_diff={max(diffs):.2e} mfu={ours['mfu']:.4f} trl_mfu={trl['mfu']:.4f}")


if __name__ == "__main__":
    main()
