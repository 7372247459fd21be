"""A real 2-process DDP job (CPU, gloo) through `accelerate launch`, compared with one process.

`accelerate launch --cpu` starts several CPU processes only through mpirun; the torchrun path
(`--multi_gpu`) with ACCELERATE_USE_CPU=1 gives a gloo MULTI_CPU job on a machine without GPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loop_toys import collate, make_data, make_model, nll_step

from pluralign.runs import RunDir
from pluralign.train import state
from pluralign.train.loop import LoopConfig, train

HERE = Path(__file__).parent
ACCELERATE = Path(sys.executable).with_name("accelerate")

pytestmark = pytest.mark.skipif(not ACCELERATE.exists() and not shutil.which("accelerate"),
                                reason="accelerate launcher not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# FSDP2 (`fully_shard`) over the toy model's decoder layers, full state dicts gathered for checkpoints: the
# example launcher config users are pointed to (its bf16 is overridden by --mixed_precision no below).
FSDP = ("--config_file", str(HERE.parent / "examples" / "accelerate" / "fsdp2.yaml"))


def launch(*args: str, timeout: int = 240, extra_path: str | None = None, fsdp: bool = False,
           check: bool = True, cpu_flag: bool = True) -> subprocess.CompletedProcess:
    exe = str(ACCELERATE) if ACCELERATE.exists() else shutil.which("accelerate")
    # An FSDP config replaces --multi_gpu (the launcher takes one of them; both start torchrun processes).
    cmd = [exe, "launch", *(FSDP if fsdp else ("--multi_gpu",)), "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(HERE / "ddp_worker.py"), *args]
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if not cpu_flag:  # as a user types the README's command: nothing says the processes are CPU ones
        env.pop("ACCELERATE_USE_CPU")
    if extra_path:  # e.g. tests/ for a `module:function` reward
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_process_loop_matches_one_process(tmp_path, fsdp):
    launch("loop", str(tmp_path / "ddp"), "2", "2", fsdp=fsdp)  # 2 processes x batch 2 x accum 2 = 8 per step

    single = make_model()
    config = LoopConfig(learning_rate=1e-2, batch_size=4, grad_accum=2, num_epochs=2, log_every=1,
                        progress=False, save_every=2, keep_checkpoints=1, warmup_ratio=0.25)
    train(single, make_data(32), collate, nll_step, config, tmp_path / "single", eval_dataset=make_data(7, seed=5))

    ckpt = state.latest_checkpoint(tmp_path / "ddp" / "checkpoints")
    assert ckpt.name == "step-8" and (ckpt / "rng-rank1.json").exists()
    ddp_weights = state.load_checkpoint(ckpt).weights
    for name, p in single.named_parameters():
        torch.testing.assert_close(ddp_weights[name], p.detach(), atol=1e-5, rtol=0)
    a, b = RunDir(tmp_path / "single").read_metrics(), RunDir(tmp_path / "ddp").read_metrics()
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        key = "loss" if "loss" in ra else "eval/loss"
        assert rb[key] == pytest.approx(ra[key], abs=1e-5)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_cpu_processes_form_one_job_without_accelerate_use_cpu(tmp_path, fsdp):
    """The README's `accelerate launch --config_file examples/accelerate/fsdp2.yaml ...` on a machine without
    GPUs (no ACCELERATE_USE_CPU set) started two processes that each trained the whole run alone, both
    writing one run directory: 16 steps of batch 4 each instead of one 8-step job of batch 8."""
    launch("loop", str(tmp_path / "run"), "2", "2", fsdp=fsdp, cpu_flag=False)
    ckpt = state.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt.name == "step-8" and (ckpt / "rng-rank1.json").exists()


def test_two_process_recipes_match_one_process(tmp_path):
    """DPO (cached reference) and KTO (whose baseline z0 is a mean over the whole batch, gathered across
    processes) trained by 2 processes x batch 2 equal one process x batch 4."""
    from loop_toys import make_model_dir, write_pairs

    from pluralign.models.load import load_model
    from pluralign.train import run_preference

    base, pairs = make_model_dir(tmp_path / "base"), write_pairs(tmp_path / "pairs.jsonl", 16)
    loop = {"learning_rate": 1e-2, "num_epochs": 2, "log_every": 1, "progress": False, "save_every": 2}
    configs = []
    for loss in ("dpo", "kto"):
        configs.append(tmp_path / f"{loss}.yaml")
        configs[-1].write_text(f"model: {base}\ndata: [{pairs}]\nloss: {loss}\noutput_dir: {tmp_path / 'ddp' / loss}\n"
                               f"loop: {dict(loop, batch_size=2)}\n")
    launch("preference", *map(str, configs))

    for loss, steps in (("dpo", 8), ("kto", 16)):  # KTO trains on 32 binary rows made from 16 pairs
        single = run_preference(model=str(base), data=[str(pairs)], loss=loss, output_dir=str(tmp_path / loss),
                                loop=loop | {"batch_size": 4})
        a = load_model(single.model_dir).state_dict()
        b = load_model(tmp_path / "ddp" / loss / "model").state_dict()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
        ra, rb = RunDir(tmp_path / loss).read_metrics(), RunDir(tmp_path / "ddp" / loss).read_metrics()
        assert len(ra) == len(rb) == steps
        for x, y in zip(ra, rb, strict=True):
            # Per-example metrics average exactly; KTO's per-label reward means are batch statistics whose
            # per-process average differs from the whole batch's, so they are not compared.
            # (KTO's margin exists only where a process's batch holds both labels.)
            for key in {"dpo": ("loss", "rewards/margins"), "kto": ("loss", "kl_baseline")}[loss]:
                assert y[key] == pytest.approx(x[key], abs=1e-5), (loss, key)


def test_two_process_online_recipes_match_one_process(tmp_path):
    """GRPO (token-mean over the whole step: denominators summed across processes), PPO (value head, advantages
    whitened and running reward moments updated over both processes) and
    GRPO with 2 epochs x 2 minibatches per rollout and DAPO re-draws, and RSFT keeping the top quarter of the
    step's samples (ranked over both processes), 2 processes x 2 prompts equal
    1 process x 2 prompts x 2 accumulation steps: each micro-batch's rollout, re-draws and minibatch split
    are seeded by its step and prompts, so both runs draw the same samples."""
    from online_toys import make_model_dir, write_prompts

    from pluralign.config import from_dict
    from pluralign.models.load import load_model
    from pluralign.train.recipes.online import OnlineConfig, run

    base, prompts = make_model_dir(tmp_path / "base"), write_prompts(tmp_path / "prompts.jsonl")
    common = {"model": str(base), "data": [str(prompts)], "group_size": 4, "max_new_tokens": 6,
              "rewards": [{"source": "online_toys:cat_reward"}]}
    loop = {"learning_rate": 1e-2, "max_steps": 3, "log_every": 1, "progress": False, "batch_size": 2}
    variants = {"grpo": {"algorithm": "grpo"}, "ppo": {"algorithm": "ppo", "reward_norm": "running"},
                "rsft_top": {"algorithm": "rsft", "rsft_select": "top", "rsft_top_fraction": 0.25},  # ranked over both
                "grpo_epochs": {"algorithm": "grpo", "ppo_epochs": 2, "num_minibatches": 2, "dynamic_sampling": True,
                                "redraw_tries": 2, "loop": loop | {"max_steps": 4}}}
    configs = []
    for name, v in variants.items():
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text(json.dumps(common | {"output_dir": str(tmp_path / "ddp" / name), "loop": loop} | v))
    launch("online", *map(str, configs), extra_path=str(HERE))
    for algorithm, v in variants.items():
        one = v | {"loop": v.get("loop", loop) | {"grad_accum": 2}}
        single = run(from_dict(OnlineConfig, common | {"output_dir": str(tmp_path / algorithm)} | one))
        a = load_model(single.model_dir).state_dict()
        b = load_model(tmp_path / "ddp" / algorithm / "model").state_dict()
        assert any(not torch.equal(a[k], v) for k, v in load_model(base).state_dict().items())
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
        ra, rb = RunDir(tmp_path / algorithm).read_metrics(), RunDir(tmp_path / "ddp" / algorithm).read_metrics()
        for x, y in zip(ra, rb, strict=True):
            assert y["loss"] == pytest.approx(x["loss"], abs=1e-5) and y["reward"] == pytest.approx(x["reward"], abs=1e-6)


def test_resume_under_fsdp2_is_exact(tmp_path):
    """2 FSDP2 processes stopped after step 4 (checkpoint: full weights and the optimizer's moments gathered
    from both shards) and relaunched to step 8 end where one process running straight to step 8 does."""
    launch("loop", str(tmp_path / "fsdp"), "2", "2", "4", fsdp=True)
    assert state.latest_checkpoint(tmp_path / "fsdp" / "checkpoints").name == "step-4"
    launch("loop", str(tmp_path / "fsdp"), "2", "2", "8", fsdp=True)

    single = make_model()
    config = LoopConfig(learning_rate=1e-2, batch_size=4, grad_accum=2, num_epochs=2, log_every=1, max_steps=8,
                        progress=False, save_every=2, keep_checkpoints=1, scheduler="constant", warmup_ratio=0.0)
    train(single, make_data(32), collate, nll_step, config, tmp_path / "single", eval_dataset=make_data(7, seed=5))
    resumed = state.load_checkpoint(state.latest_checkpoint(tmp_path / "fsdp" / "checkpoints"))
    assert resumed.position.global_step == 8
    for name, p in single.named_parameters():
        torch.testing.assert_close(resumed.weights[name], p.detach(), atol=1e-5, rtol=0)
    losses = {r["step"]: r["loss"] for r in RunDir(tmp_path / "fsdp").read_metrics() if "loss" in r}
    expected = {r["step"]: r["loss"] for r in RunDir(tmp_path / "single").read_metrics() if "loss" in r}
    assert sorted(losses) == list(range(1, 9))
    for s in range(5, 9):  # the steps after the resume
        assert losses[s] == pytest.approx(expected[s], abs=1e-5), s


def test_run_directory_in_use_stops_every_process_with_one_error(tmp_path):
    """A directory locked by another run: the main process is refused the lock and every process stops with
    that message (exit 2). The other process used to wait at the loop's first barrier and die of the broken
    connection with a traceback."""
    from loop_toys import make_model_dir, write_pairs

    base, pairs, out = make_model_dir(tmp_path / "base"), write_pairs(tmp_path / "pairs.jsonl", 16), tmp_path / "out"
    with RunDir(out).lock():
        proc = launch("cli", "train", "dpo", f"model={base}", f"data=[{pairs}]", f"output_dir={out}",
                      "loop.progress=false", "loop.batch_size=2", "loop.max_steps=2", check=False, timeout=120)
    assert proc.returncode != 0
    assert "[rank" not in proc.stderr, proc.stderr[-5000:]  # no process's traceback (the launcher's own follows)
    assert proc.stderr.count("is in use by another run") == 2, proc.stderr[-5000:]
    assert not (out / "model").exists()


def test_fsdp2_recipe_saves_the_model_one_process_trains(tmp_path):
    """`train dpo` under FSDP2: the trained parameters are DTensor shards, gathered by every process before the
    main one saves. Saving the shards on the main process alone failed ('invalid python storage') and left
    the other process to die at the barrier after it."""
    from loop_toys import make_model_dir, write_pairs

    from pluralign.models.load import load_model
    from pluralign.train import run_preference

    base, pairs = make_model_dir(tmp_path / "base"), write_pairs(tmp_path / "pairs.jsonl", 16)
    loop = {"learning_rate": 1e-2, "max_steps": 2, "log_every": 1, "progress": False}
    config = tmp_path / "dpo.yaml"
    config.write_text(json.dumps({"model": str(base), "data": [str(pairs)], "loss": "dpo",
                                  "output_dir": str(tmp_path / "fsdp"), "loop": loop | {"batch_size": 2}}))
    launch("preference", str(config), fsdp=True)

    single = run_preference(model=str(base), data=[str(pairs)], loss="dpo", output_dir=str(tmp_path / "single"),
                            loop=loop | {"batch_size": 4})
    a, b = load_model(single.model_dir).state_dict(), load_model(tmp_path / "fsdp" / "model").state_dict()
    assert any(not torch.equal(a[k], v) for k, v in load_model(base).state_dict().items())
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_fsdp2_lora_recipe_saves_what_one_process_saves(tmp_path, merge):
    """LoRA under FSDP2: merging copied the model, and FSDP's sharded modules cannot be copied ('FSDP does not
    support deepcopy' after the last step, the other process dying at the barrier). The gathered weights are
    saved as an adapter and loaded back plain to be merged; unmerged, the gathered adapter is saved."""
    from loop_toys import make_model_dir, write_pairs

    from pluralign.models.load import load_model
    from pluralign.train import run_preference

    base, pairs = make_model_dir(tmp_path / "base"), write_pairs(tmp_path / "pairs.jsonl", 16)
    loop = {"learning_rate": 1e-2, "max_steps": 2, "log_every": 1, "progress": False}
    common = {"model": str(base), "data": [str(pairs)], "loss": "dpo", "use_lora": True, "merge_lora": merge}
    config = tmp_path / "dpo.yaml"
    config.write_text(json.dumps(common | {"output_dir": str(tmp_path / "fsdp"), "loop": loop | {"batch_size": 2}}))
    launch("preference", str(config), fsdp=True)

    single = run_preference(**common, output_dir=str(tmp_path / "single"), loop=loop | {"batch_size": 4})
    a, b = load_model(single.model_dir).state_dict(), load_model(tmp_path / "fsdp" / "model").state_dict()
    assert set(a) == set(b)
    if merge:  # the adapters were merged: weights moved from the base's
        assert any(not torch.equal(a[k], v) for k, v in load_model(base).state_dict().items())
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)


def test_two_process_reward_model_matches_one_process(tmp_path):
    """`train rm` on a backbone whose LM head is its own (untied): rewards never use the head, which is frozen.
    Trainable, DDP stopped every 2-process run at its second step ('parameters that were not used in producing
    loss'). 2 processes x batch 2 equal 1 process x batch 4: the head, the backbone and the metrics."""
    from loop_toys import make_model_dir, write_pairs
    from safetensors.torch import load_file

    from pluralign.models.load import load_model
    from pluralign.train import run_reward

    base, pairs = make_model_dir(tmp_path / "base"), write_pairs(tmp_path / "pairs.jsonl", 16)
    assert not load_model(base).config.tie_word_embeddings
    loop = {"learning_rate": 1e-2, "max_steps": 3, "log_every": 1, "progress": False}
    held_out = write_pairs(tmp_path / "held_out.jsonl", 6, seed=1)
    proc = launch("cli", "train", "rm", f"model={base}", f"data=[{pairs}]", f"output_dir={tmp_path / 'ddp'}",
                  f"eval_data=[{held_out}]", *(f"loop.{k}={v}" for k, v in (loop | {"batch_size": 2}).items()))
    # The main process alone saves the model and scores the held-out pairs into report/eval.json.
    assert proc.stderr.count("held-out accuracy") == 1, proc.stderr[-3000:]
    assert proc.stdout.count("model saved to") == 1, proc.stdout[-3000:]
    assert not list((tmp_path / "ddp").glob(".model.*")), list((tmp_path / "ddp").iterdir())
    single = run_reward(model=str(base), data=[str(pairs)], eval_data=[str(held_out)],
                        output_dir=str(tmp_path / "single"), loop=loop | {"batch_size": 4})
    for name in ("head.safetensors", "backbone/model.safetensors"):
        a, b = load_file(single.model_dir / name), load_file(tmp_path / "ddp" / "model" / name)
        # The head's bias cancels in every pair's margin: its gradient is rounding noise, which Adam scales up.
        for k in (k for k in a if not k.endswith("out.bias")):
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=lambda m, k=k, name=name: f"{name} {k}: {m}")
    ra, rb = RunDir(tmp_path / "single").read_metrics(), RunDir(tmp_path / "ddp").read_metrics()
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3, 3]  # the last: the evaluation
    for x, y in zip(ra, rb, strict=True):
        for key in ("loss", "accuracy") if "loss" in x else ("eval/loss", "eval/accuracy"):
            assert y[key] == pytest.approx(x[key], abs=1e-5), key


def test_online_recipe_under_fsdp2_is_one_error(tmp_path):
    """Online recipes do not run under FSDP2 (the rollout calls the policy outside the sharded wrapper): every
    process says so and exits 2, before loading anything. Each used to fail at the first rollout with a
    traceback ('mixed torch.Tensor and DTensor')."""
    from online_toys import make_model_dir, write_prompts

    base, prompts = make_model_dir(tmp_path / "base"), write_prompts(tmp_path / "prompts.jsonl")
    config = tmp_path / "grpo.yaml"
    config.write_text(json.dumps({"model": str(base), "data": [str(prompts)], "group_size": 4, "max_new_tokens": 6,
                                  "rewards": [{"source": "online_toys:cat_reward"}], "output_dir": str(tmp_path / "out"),
                                  "loop": {"max_steps": 2, "progress": False, "batch_size": 2}}))
    proc = launch("cli", "train", "grpo", "--config", str(config), fsdp=True, check=False, extra_path=str(HERE))
    assert proc.returncode != 0 and "[rank" not in proc.stderr, proc.stderr[-5000:]
    assert proc.stderr.count("error: online recipes do not run under FSDP") == 2, proc.stderr[-5000:]


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_process_group_objectives_match_one_process(tmp_path, fsdp):
    """Group objectives over the whole step under DDP and FSDP2: each process's losses are gathered from both
    before the non-linear objective (worst group; group DRO's weights, updated once per step), so 2 processes
    x batch 2 train as 1 process x batch 4. The first pass runs inside the step's wrapper: outside it, FSDP2's
    sharded weights fail ('mixed torch.Tensor and DTensor')."""
    from loop_toys import make_model_dir
    from test_personal import _opposed, _write

    from pluralign.models.load import load_model
    from pluralign.train import run_preference

    base = make_model_dir(tmp_path / "base")
    pairs = _write(tmp_path / "pairs.jsonl", _opposed(12) + [r | {"group": "c"} for r in _opposed(6)])
    loop = {"learning_rate": 1.0, "adam_eps": 1.0, "max_steps": 3, "log_every": 1, "progress": False}
    objectives = {"worst_group": {}, "group_dro": {"step_size": 1.0}}
    configs = []
    for name, params in objectives.items():
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text(json.dumps({"model": str(base), "data": [pairs], "loss": "dpo",
                                           "output_dir": str(tmp_path / "ddp" / name), "loop": loop | {"batch_size": 2},
                                           "personal": {"group_objective": name, "group_objective_params": params}}))
    launch("preference", *map(str, configs), fsdp=fsdp)
    for name, params in objectives.items():
        single = run_preference(model=str(base), data=[pairs], loss="dpo", output_dir=str(tmp_path / name),
                                loop=loop | {"batch_size": 4},
                                personal={"group_objective": name, "group_objective_params": params})
        a = load_model(single.model_dir).state_dict()
        b = load_model(tmp_path / "ddp" / name / "model").state_dict()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)


def test_two_process_evaluation_leaves_its_padding_out_of_group_losses(tmp_path):
    """Evaluating 5 records on 2 processes pads one batch with a weight-0 repeat of record 0: the group objective
    counted that repeat as a member of record 0's group, so eval/group_loss/<g> differed from one process's."""
    from loop_toys import make_model_dir
    from test_personal import _opposed, _write

    from pluralign.train import run_preference

    base = make_model_dir(tmp_path / "base")
    rows = _opposed(12) + [r | {"group": "c"} for r in _opposed(6)]
    pairs = _write(tmp_path / "pairs.jsonl", rows)
    held = _write(tmp_path / "held.jsonl", [rows[1], rows[2], rows[13], rows[3], rows[12]])  # b a c b c: 0 is b
    common = {"model": str(base), "data": [pairs], "eval_data": [held], "loss": "dpo",
              "personal": {"group_objective": "worst_group"}}
    loop = {"learning_rate": 1e-2, "max_steps": 1, "log_every": 1, "progress": False}
    (tmp_path / "c.yaml").write_text(json.dumps(common | {"output_dir": str(tmp_path / "ddp"), "loop": loop | {"batch_size": 2}}))
    launch("preference", str(tmp_path / "c.yaml"))
    run_preference(**common, output_dir=str(tmp_path / "one"), loop=loop | {"batch_size": 4})
    one, two = (next(r for r in RunDir(tmp_path / d).read_metrics() if "eval/loss" in r) for d in ("one", "ddp"))
    for g in "abc":
        assert two[f"eval/group_loss/{g}"] == pytest.approx(one[f"eval/group_loss/{g}"], abs=1e-6), g


def test_cpu_job_detection_without_torch_accelerator(monkeypatch):
    """torch.accelerator exists from torch 2.6, and pyproject allows 2.4: the check fell over with an
    AttributeError there instead of asking CUDA."""
    from pluralign.train import parallel

    monkeypatch.delattr(torch, "accelerator", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parallel._several_processes_without_devices()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not parallel._several_processes_without_devices()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not parallel._several_processes_without_devices()
