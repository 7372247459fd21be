"""pluralign's GRPO recipe against TRL 1.16's `GRPOTrainer`, side by side on one machine.

Both sides train the same locally built Llama-style model (`pluralign.models.tiny.tiny_llama`, the sandbox
word tokenizer) on the same sandbox prompts with the same Python reward (`reward` below: sandbox gold
conciseness + relevance of the completion), group size, steps, learning rate, completion length,
temperature 1, β = 0 (TRL's default: no reference model on either side), token-mean ("dapo") loss, one
update per generation (so neither side runs a separate pass for the sampling policy's log-probs: the
ratio is 1 and the old log-probs are the detached current ones), fp32, the same gradient checkpointing
setting (`--gradient-checkpointing`, default on as TRL's default), `--threads` torch threads each. What
each side computes:

* TRL `GRPOTrainer`: transformers `generate` on the P·G padded rows (each prompt prefilled G times), then
  one training forward/backward over P·G padded prompt+completion rows;
* pluralign `train grpo` (`pluralign.train.recipes.online.run`): its KV-cached batched sampler (each prompt
  prefilled once for its G samples, keys/values written in place: `decode/cache.py`), then one training
  forward/backward over P rows, each holding its prompt once and its G completions
  (`online/grouped.py`: the same log-probs and gradients as G separate rows), leaving out completions whose
  advantage is 0 (a flat group: they add nothing to the update, which is the same; `online/methods.py`).

`--reward passfail` trains on 1 when that reward exceeds 0.5, else 0: a verifiable pass/fail reward, as for
checked answers, under which some groups are flat. Both sides are credited with the same tokens (the update
is the same), so the ratio is one of wall times for the same work.

Each side runs in its own subprocess (peak RSS from `os.wait4`), `--repeats` times, alternating; the
fastest run of each side counts (the least disturbed by other jobs on a shared machine). Model and
tokenizer classes are imported, and transformers' one-off loading tables built, before the clock starts
on both sides. Throughput = (generated completion
tokens + prompt+completion tokens trained, counted per completion) / seconds from loading the model to the
trained model saved; the same over the process's CPU seconds (`cpu_throughput_ratio`) is steadier under
load. `--profile` prints each side's CPU seconds per phase (generation, rewards, the rollout's other
work, forward + loss, backward, optimizer, the rest).

`--model DIR` runs both sides on a real chat model instead of the tiny one (SmolLM2-135M-Instruct, a
30-layer Llama, as `make real-model` converts it into ~/.cache/pluralign/smollm2-135m-instruct): the
same sandbox questions as user messages, rendered by the model's chat template on both sides.

    .venv/bin/python bench/grpo_vs_trl.py --quick          # CPU, a couple of minutes
    .venv/bin/python bench/grpo_vs_trl.py --quick --repeats 2 --model ~/.cache/pluralign/smollm2-135m-instruct
    .venv/bin/python bench/grpo_vs_trl.py --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pluralign.cli import learning_rate, positive_int, seed_int

MODEL = dict(hidden_size=256, num_layers=4, num_heads=4)


def reward(prompts, completions, **_):
    """Sandbox gold relevance + conciseness of each completion (a verifiable, deterministic reward)."""
    from pluralign.sandbox.attributes import ATTRIBUTES, score_batch

    x = score_batch([p if isinstance(p, str) else p[-1]["content"] for p in prompts],
                    [c if isinstance(c, str) else c[-1]["content"] for c in completions])
    return [float(r[ATTRIBUTES.index("relevance")] + r[ATTRIBUTES.index("conciseness")]) for r in x]


def passfail(prompts, completions, **_):
    """1 when `reward` exceeds 0.5, else 0: a verifiable pass/fail reward (like a checked answer), under which
    some groups are flat (every sample passes, or none does)."""
    return [float(r > 0.5) for r in reward(prompts, completions)]


REWARDS = {"dense": reward, "passfail": passfail}


def build(out: Path, seed: int, n_prompts: int) -> list[str]:
    from pluralign.models.tiny import tiny_llama
    from pluralign.sandbox.world import World

    world = World(seed)
    tok = world.tokenizer()
    tok.chat_template = None  # both sides see the plain prompt text
    tiny_llama(len(tok), **MODEL, max_position_embeddings=512, seed=seed, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return world.prompts(n_prompts)


def side_pluralign(spec: dict) -> dict:
    from pluralign.config import from_dict
    from pluralign.runs import RunDir
    from pluralign.train.recipes.online import OnlineConfig, run

    t0, cpu0 = time.perf_counter(), time.process_time()
    config = from_dict(OnlineConfig, {
        "algorithm": "grpo", "model": spec["model"], "output_dir": spec["out"], "group_size": spec["group"],
        "max_new_tokens": spec["length"], "rewards": [{"source": f"python:{spec['reward']}"}],
        "gradient_checkpointing": spec["gradient_checkpointing"],
        "loop": {"learning_rate": spec["lr"], "batch_size": spec["prompts_per_step"], "max_steps": spec["steps"],
                 "seed": spec["seed"], "scheduler": "constant", "warmup_ratio": 0.0, "log_every": 1, "progress": False}})
    run(config, prompts=spec["prompts"], reward_objects=[REWARDS[spec["reward"]]])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = [r for r in RunDir(spec["out"]).read_metrics() if "loss" in r]
    return {"wall_s": wall, "cpu_s": cpu, "completion_lengths": [r["response_length"] for r in rows],
            "rewards": [r["reward"] for r in rows], "trained_fraction": [r["trained_fraction"] for r in rows]}


def side_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    t0, cpu0 = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    data = Dataset.from_list([{"prompt": p} for p in spec["prompts"]])
    cuda = spec["device"] == "cuda"
    args = GRPOConfig(
        output_dir=spec["out"], per_device_train_batch_size=spec["prompts_per_step"] * spec["group"],
        num_generations=spec["group"], max_completion_length=spec["length"], learning_rate=spec["lr"],
        max_steps=spec["steps"], seed=spec["seed"], lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
        loss_type="dapo", temperature=1.0, bf16=False, use_cpu=not cuda, logging_steps=1, report_to="none",
        disable_tqdm=True, save_strategy="no", gradient_checkpointing=spec["gradient_checkpointing"])
    trainer = GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                          reward_funcs=[REWARDS[spec["reward"]]])
    trainer.train()
    trainer.save_model(str(Path(spec["out"]) / "model"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    logs = [r for r in trainer.state.log_history if "completions/mean_length" in r]
    return {"wall_s": wall, "cpu_s": cpu, "completion_lengths": [r["completions/mean_length"] for r in logs],
            "rewards": [r["reward"] for r in logs]}


# Phases of a run, found in a cProfile of it by (file suffix, function): cumulative CPU seconds. A phase
# named "a - b - c" is phase a less the phases b and c it contains; "other" is the rest of the run (loading
# the model, building the trainer, logging, saving). AdamW's step is `Adam.step` (torch/optim/adam.py).
PHASES = {
    "pluralign": {"generate": ("online/rollout.py", "generate"), "score": ("online/engine.py", "shaped_rewards"),
                  "build (old/ref log-probs, advantages)": ("online/methods.py", "build"),
                  "forward + loss": ("online/methods.py", "step"), "backward": ("torch/_tensor.py", "backward"),
                  "optimizer": ("torch/optim/adam.py", "step")},
    "trl": {"generate": ("trl/trainer/grpo_trainer.py", "_generate"),
            "score": ("trl/trainer/grpo_trainer.py", "_calculate_rewards"),
            "rollout - generate - score": ("trl/trainer/grpo_trainer.py", "_generate_and_score_completions"),
            "forward + loss": ("trl/trainer/grpo_trainer.py", "compute_loss"),
            "backward": ("torch/_tensor.py", "backward"), "optimizer": ("torch/optim/adam.py", "step")},
}


def phases(profile, side: str, cpu_s: float) -> dict[str, float]:
    import pstats

    stats = pstats.Stats(profile).stats  # {(file, line, function): (cc, nc, tottime, cumtime, callers)}
    out = {}
    for name, (suffix, function) in PHASES[side].items():
        # Outermost calls only: a recursive or nested entry is counted inside its caller's cumulative time.
        out[name] = max((v[3] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == function), default=0.0)
    for name in out:
        parts = name.split(" - ")
        if len(parts) > 1:
            out[name] -= sum(out[p] for p in parts[1:])
    out["other (load, setup, save)"] = cpu_s - sum(out.values())
    return out


def child_main(spec_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    if spec["device"] == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # Import time is not training time, on both sides: the modules of the model's and tokenizer's classes
    # (transformers imports them at first use) are imported here, before either side's clock starts, and
    # the model is loaded once and dropped: a process's first `from_pretrained` builds transformers'
    # weight-conversion tables (about 1.5 CPU-s on this machine, a one-off cost like an import), which
    # either side would otherwise pay inside its clock. Each side still loads the model in its clock.
    import accelerate  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(spec["model"]))]
    AutoTokenizer.from_pretrained(spec["model"])
    AutoModelForCausalLM.from_pretrained(spec["model"])  # dropped at once

    side = side_trl if spec["side"] == "trl" else side_pluralign
    if spec.get("profile"):
        import cProfile

        profile = cProfile.Profile(time.process_time)  # CPU seconds: what other jobs on the machine do not inflate
        result = profile.runcall(side, spec)
        result["phases"] = phases(profile, spec["side"], result["cpu_s"])
    else:
        result = side(spec)
    if spec["device"] == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(spec["result"]).write_text(json.dumps(result))


def run_child(side: str, spec: dict, work: Path, run: int) -> dict:
    spec = dict(spec, side=side, out=str(work / f"{side}{run}"), result=str(work / f"{side}{run}.json"))
    (work / f"{side}.spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(spec["threads"]),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    if spec["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    log = open(work / f"{side}.log", "w")
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(work / f"{side}.spec.json")], env=env,
                            stdout=log, stderr=log)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{side} failed; its log:\n{(work / f'{side}.log').read_text()[-4000:]}")
    result = json.loads(Path(spec["result"]).read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def tokens(result: dict, spec: dict, prompt_tokens: int) -> float:
    """Generated completion tokens + trained prompt+completion tokens over all steps."""
    rows = spec["prompts_per_step"] * spec["group"]
    completion = sum(result["completion_lengths"]) * rows
    return 2 * completion + prompt_tokens * spec["group"]  # every prompt is trained once, with its G samples


def best(runs: list[dict]) -> dict:
    """The least disturbed of a side's runs (shortest wall time); CPU seconds and peak RSS: their minimum
    and maximum over the runs."""
    out = dict(min(runs, key=lambda r: r["wall_s"]))
    out["cpu_s"] = min(r["cpu_s"] for r in runs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 steps (a couple of minutes on 2 CPU cores)")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--group", type=positive_int, default=8)
    p.add_argument("--prompts-per-step", type=positive_int, default=4)
    p.add_argument("--length", type=positive_int, default=32)
    p.add_argument("--lr", type=learning_rate, default=1e-5)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads of each side (1: least disturbed by other jobs)")
    p.add_argument("--repeats", type=positive_int, default=3, help="runs of each side, alternating; the fastest counts")
    p.add_argument("--profile", action="store_true", help="CPU seconds of each phase of a step (cProfile; slows both sides a little)")
    p.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                   help="both sides (TRL's default: on)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--reward", choices=list(REWARDS), default="dense",
                   help="dense: sandbox relevance + conciseness; passfail: 1 when that exceeds 0.5 (a verifiable reward: "
                   "flat groups, which pluralign does not forward)")
    p.add_argument("--model", default=None, help="a local model directory with a chat template (e.g. SmolLM2-135M-Instruct "
                   "as `make real-model` converts it) instead of the tiny Llama; prompts become chat messages")
    args = p.parse_args(argv)
    if args.model and not Path(args.model).is_dir():
        p.error(f"--model: no model directory at {args.model}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():  # else both sides ran on the CPU under a RESULT line saying device=cuda
            p.error("--device cuda: no CUDA device is visible")
    steps = args.steps or (4 if args.quick else 12)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from transformers import AutoTokenizer

        if args.model:  # a real chat model: the same sandbox questions as user messages, templated on both sides
            from pluralign.sandbox.world import World

            model_dir = Path(args.model)
            prompts = [[{"role": "user", "content": p}] for p in World(args.seed).prompts(args.prompts_per_step * steps)]
            tok = AutoTokenizer.from_pretrained(model_dir)
            text = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
            prompt_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in text)
        else:
            model_dir = work / "model"
            prompts = build(model_dir, args.seed, args.prompts_per_step * steps)
            tok = AutoTokenizer.from_pretrained(model_dir)
            prompt_tokens = sum(len(tok(p)["input_ids"]) for p in prompts)
        spec = {"model": str(model_dir), "prompts": prompts, "group": args.group, "steps": steps,
                "prompts_per_step": args.prompts_per_step, "length": args.length, "lr": args.lr, "seed": args.seed,
                "threads": args.threads, "device": args.device, "profile": args.profile, "reward": args.reward,
                "gradient_checkpointing": args.gradient_checkpointing == "on"}
        runs: dict[str, list[dict]] = {"pluralign": [], "trl": []}
        for k in range(args.repeats):
            for side in runs:
                runs[side].append(run_child(side, spec, work, k))
    results = {side: best(r) for side, r in runs.items()}
    tps = {s: tokens(r, spec, prompt_tokens) / r["wall_s"] for s, r in results.items()}
    cpu_tps = {s: tokens(r, spec, prompt_tokens) / r["cpu_s"] for s, r in results.items()}
    for side, r in results.items():
        walls = ", ".join(f"{x['wall_s']:.1f}" for x in runs[side])
        print(f"{side:9s} wall {r['wall_s']:7.1f}s (of {walls})  "
              f"cpu {r['cpu_s']:6.1f}s  tokens/s {tps[side]:8.1f} (per cpu-s {cpu_tps[side]:8.1f})  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MiB  "
              f"mean completion length {sum(r['completion_lengths']) / len(r['completion_lengths']):.1f}  "
              f"mean reward {sum(r['rewards']) / len(r['rewards']):.3f}"
              + (f"  completions forwarded {sum(r['trained_fraction']) / len(r['trained_fraction']):.2f}"
                 if "trained_fraction" in r else "")
              + (f"  peak GPU {r['peak_gpu_mb']:.0f} MiB" if "peak_gpu_mb" in r else ""))
        if "phases" in r:
            print("          phases (cpu s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
    ours, trl = results["pluralign"], results["trl"]
    print(f"RESULT device={args.device} model={Path(args.model).name if args.model else 'tiny_llama'} reward={args.reward} steps={steps} group={args.group} prompts_per_step={args.prompts_per_step} "
          f"length={args.length} threads={args.threads} gradient_checkpointing={args.gradient_checkpointing} throughput_ratio={tps['pluralign'] / tps['trl']:.3f} "
          f"cpu_throughput_ratio={cpu_tps['pluralign'] / cpu_tps['trl']:.3f} "
          f"memory_ratio={ours['peak_rss_mb'] / trl['peak_rss_mb']:.3f} pluralign_tokens_per_s={tps['pluralign']:.1f} "
          f"trl_tokens_per_s={tps['trl']:.1f} pluralign_peak_rss_mb={ours['peak_rss_mb']:.0f} trl_peak_rss_mb={trl['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
    else:
        main()
