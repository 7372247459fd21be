"""The online engine's bookkeeping: which samples RAFT trains however a step is split, the throughput and
elapsed time logged in metrics.jsonl, and prompt rows asking for sampling settings of their own."""

from __future__ import annotations

import pytest
import torch
from online_toys import cat_reward, make_model_dir, one_second_generation
from test_online_epochs import PerPrompt, engine_for


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("bookkeeping") / "base")


def trained_samples(engine, micro, moved=False):
    """The completion ids of every sample the step trains (sorted), the step's summed loss and its metrics as
    the loop averages them; `moved`: the policy is moved (seeded) after the rollout, so that ratios to the
    sampling policy and log-ratios to the reference leave 1 and 0."""
    engine.prepare(0, micro)
    if moved:
        with torch.no_grad():
            head = engine.policy.lm_head.weight
            head.add_(0.5 * torch.randn(head.shape, generator=torch.Generator().manual_seed(0)))
    batches = [engine.collate([engine.prompts[i] for i in idx]) for idx in micro]
    picked, loss, metrics = [], 0.0, {}
    for idx, b in zip(micro, batches, strict=True):
        weight = b.get("row_weight", torch.ones(len(b["input_ids"])))
        picked += [tuple(ids[mask.bool()].tolist())
                   for ids, mask, w in zip(b["input_ids"], b["completion_mask"], weight, strict=True) if w > 0]
        values, step_metrics = engine.method.step(engine.trainee, b)
        loss += float(values.detach().sum())
        for k, v in step_metrics.items():  # as the loop averages them: a (mean, count) pair, or weighted by prompts
            mean, count = v if isinstance(v, tuple) else (v, len(idx))
            metrics.setdefault(k, []).append((float(torch.as_tensor(mean).float().mean()), float(count)))
    means = {k: sum(m * c for m, c in v) / sum(c for _, c in v) for k, v in metrics.items()}
    return sorted(picked), loss, means


@pytest.mark.parametrize("select", ["top", "local"])
def test_rsft_selects_the_same_samples_however_the_step_is_split(base, select):
    """RAFT's "top" keeps the top fraction of the step's samples (all its prompts, specs/online.md §6.2): it
    ranked each micro-batch's alone, so 2 micro-batches of 2 prompts trained other samples, and another
    loss, than 1 micro-batch of 4 (here the 4 best of 16 samples, most of them from prompt 0, "the cat")."""
    def step(micro):
        engine = engine_for(base, cat_reward, 0, algorithm="rsft", rsft_select=select, rsft_top_fraction=0.25)
        engine.backend = PerPrompt(engine.backend)
        return trained_samples(engine, micro)

    (whole, whole_loss, logged), (split, split_loss, split_logged) = step([[0, 1, 2, 3]]), step([[0, 1], [2, 3]])
    assert len(whole) == 4
    assert split == whole
    assert split_loss == pytest.approx(whole_loss, abs=1e-5)
    for key in ("nll", "kept_reward"):  # the means over the kept samples, not of the micro-batches' means
        assert split_logged[key] == pytest.approx(logged[key], abs=1e-5), key


def test_rsft_micro_batch_with_no_kept_sample_trains_nothing_but_still_runs(base):
    """When the step's top samples all lie in one micro-batch, the other forwards one sample at weight 0 (a
    backward on every micro-batch and process keeps DDP in step) and counts 0 in the denominator."""
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.online.rollout import Rollout
    from pluralign.online.selected import BestOfN

    tok, model = load_tokenizer(base), load_model(base)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def rollout(prompt, texts):
        return Rollout(prompts=[prompt] * 2, prompt_ids=[ids(prompt)] * 2, completion_ids=[ids(t) for t in texts],
                       sampler_logps=[], finish=["eos"] * 2, texts=texts, group_size=2)

    method = BestOfN(tokenizer=tok, select="top", fraction=0.5)
    a, _ = method.score(model, rollout("the cat", ["the cat sat", "no"]), torch.tensor([0.9, 0.8]))
    b, _ = method.score(model, rollout("a dog", ["a dog ran", "bad dog"]), torch.tensor([0.1, 0.2]))
    assert method.finish([a, b]) == [2.0, 0.0]
    assert a["row_weight"].tolist() == [1.0, 1.0] and b["row_weight"].tolist() == [0.0]
    assert a["metrics"]["kept_reward"][1] == 2 and b["metrics"]["kept_reward"][1] == 0
    loss, metrics = method.step(model, b | {"scale": torch.tensor(1.0)})
    assert loss.tolist() == [0.0] and loss.requires_grad
    assert float(metrics["nll"][1]) == 0  # the weight-0 sample's NLL is not logged


def test_elapsed_time_continues_from_the_checkpoint_after_a_resume(tmp_path, monkeypatch):
    """elapsed_s of a resumed run's rows went back to 0: it counted from the resumed process's start, so the
    rows after a resume said the run had taken less time than the rows before it."""
    import itertools
    import time

    from loop_toys import collate, make_data, make_model, noisy_step
    from test_loop import Kill, cfg, killed_at

    from pluralign.runs import RunDir
    from pluralign.train.loop import train

    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))  # a clock that always moves on
    data, config = make_data(24), cfg(batch_size=2, save_every=3, max_steps=6)
    with pytest.raises(Kill):  # dies in step 5: rows 1-4 logged, step-3 the last checkpoint
        train(make_model(), data, collate, killed_at(noisy_step, 5), config, tmp_path / "run")
    at_checkpoint = {r["step"]: r["elapsed_s"] for r in RunDir(tmp_path / "run").read_metrics()}[3]
    train(make_model(), data, collate, noisy_step, config, tmp_path / "run")
    rows = RunDir(tmp_path / "run").read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[3] > at_checkpoint


def test_throughput_is_the_total_over_processes(base, monkeypatch):
    """Under DDP each process logged its own tokens/s and the loop averaged them: 2 processes read as fast as
    one. The step's tokens are summed over the processes (here a second one, faked by the sum, that made the
    same tokens in the same time), over the processes' mean time."""
    from types import SimpleNamespace

    import pluralign.online.engine as engine_module

    now = [0.0]
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def speeds(processes):
        monkeypatch.setattr(engine_module, "all_processes_sum", lambda x: x * processes)
        engine = engine_for(base, cat_reward, 0)
        one_second_generation(engine, now)
        engine.prepare(0, [[0, 1]])
        batch = engine.ready[(0, 1)]
        now[0] += 2.0  # training takes 2 s
        return float(batch["metrics"]["gen_tokens_per_s"]), engine.finish()["train_tokens_per_s"], batch

    gen, train, batch = speeds(1)
    trained = batch["attention_mask"][batch["live"]] if "live" in batch else batch["attention_mask"]
    assert gen == float(batch["completion_mask"].sum()) and train == float(trained.sum()) / 2
    assert speeds(2)[:2] == (2 * gen, 2 * train)


def test_prompt_rows_with_sampling_settings_of_their_own_are_refused(base, tmp_path, capsys):
    """A prompt file written for `pluralign decode` (a row's temperature, n, max_new_tokens, ...) trained with
    the recipe's settings after a warning a user could miss: each such field is now an error naming the file,
    line and field (exit 2, nothing trained), since the samples would not be what the row asks for."""
    import json

    from pluralign.cli import main

    rows = [{"prompt": "the cat"}, {"prompt": "a dog", "temperature": 0.3},
            {"prompt": "hello world", "n": 8, "max_new_tokens": 2}, {"prompt": "why", "user": "u1"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["train", "grpo", f"model={base}", f"data={data}", "rewards=[{source: online_toys:cat_reward}]",
            "max_new_tokens=6", f"output_dir={tmp_path / 'out'}", "loop.max_steps=1", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for line, field in ((2, "temperature"), (3, "n"), (3, "max_new_tokens")):
        assert f"p.jsonl:{line}: field '{field}': " in err, (field, err)
    assert "p.jsonl:4" not in err and "p.jsonl:1" not in err
    assert "the recipe's" in err and "Traceback" not in err and not (tmp_path / "out" / "model").exists()


@pytest.mark.parametrize("kw", [{"algorithm": "grpo"}, {"algorithm": "gspo", "ppo_epochs": 2}, {"algorithm": "ppo"},
                                {"algorithm": "online_dpo", "ref_policy": "initial"},
                                {"algorithm": "grpo", "ppo_epochs": 2}])
def test_logged_metrics_do_not_depend_on_how_the_step_is_split(base, kw):
    """Token means (entropy, clip fraction, value loss, approx KL) and online DPO's means over its kept pairs
    were each micro-batch's, averaged by the loop with the micro-batch's prompts as weights: 2 micro-batches of 2
    prompts logged other numbers than 1 micro-batch of 4 (and a micro-batch whose pairs all tied logged the
    margins of its weight-0 pair). "a dog"'s group is flat here, so the micro-batches keep different numbers."""
    from test_online_epochs import dog_is_flat

    def step(micro):
        engine = engine_for(base, dog_is_flat, 0, **kw)
        engine.backend = PerPrompt(engine.backend)
        return trained_samples(engine, micro, moved=True)[2]

    whole, split = step([[0, 1, 2, 3]]), step([[0, 1], [2, 3]])
    assert whole.keys() == split.keys()
    for key in whole.keys() - {"gen_tokens_per_s"}:
        assert split[key] == pytest.approx(whole[key], abs=1e-5), key
    moved = {"clip_fraction": kw.get("ppo_epochs"), "rewards/margins": kw["algorithm"] == "online_dpo"}
    assert all(whole[key] != 0 for key, on in moved.items() if on)  # the policy's move shows in them


@pytest.mark.parametrize("setting", ["rsft mask_truncated=true", "online_dpo mask_truncated=true",
                                     "rsft dynamic_sampling=true", "mnpo_rounds kl_bias_correction=true",
                                     "rsft vf_coef=0.5", "online_dpo shared_prompt=false",
                                     # another method's settings: RAFT's selection, online DPO's rounds, MNPO's history
                                     "grpo rsft_select=top", "online_dpo rsft_top_fraction=0.5", "grpo round_steps=4",
                                     "rsft mnpo_history=3", "online_dpo mnpo_history=3"])
def test_settings_the_algorithm_does_not_read_exit_2(tmp_path, capsys, setting):
    """Online DPO and RSFT trained truncated completions under mask_truncated=true (and RSFT flat groups under
    dynamic_sampling=true) without a word: they do not read these policy-gradient settings; nor did GRPO read
    RAFT's selection or online DPO's rounds. Now refused."""
    from online_toys import write_prompts

    from pluralign.cli import main

    algorithm, given = setting.split(" ")
    argv = ["train", algorithm, f"model={tmp_path / 'no_model_here'}", f"data={write_prompts(tmp_path / 'p.jsonl')}",
            f"output_dir={tmp_path / 'x'}", given, "loop.max_steps=1", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{algorithm} does not use {given.split('=')[0]}" in err and "Traceback" not in err
    main([*argv[:5], "loop.max_steps=1", "loop.progress=false"])  # without it: stops only at the missing model
    assert "does not use" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1.5", ".nan"])
def test_rsft_top_fraction_out_of_range_exits_2_before_the_model_loads(tmp_path, capsys, value):
    """It was refused only once the model had loaded and the prompts had been read."""
    from online_toys import write_prompts

    from pluralign.cli import main

    argv = ["train", "rsft", f"model={tmp_path / 'no_model_here'}", f"data={write_prompts(tmp_path / 'p.jsonl')}",
            f"output_dir={tmp_path / 'x'}", "rsft_select=top", f"rsft_top_fraction={value}", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'rsft_top_fraction' must be in (0, 1]" in err and "Traceback" not in err


@pytest.mark.parametrize("setting,rule", [
    ("ppo vf_coef=.nan", "'vf_coef' must be a finite number >= 0"), ("ppo vf_coef=-1", "'vf_coef' must be a finite"),
    ("ppo value_clip=0", "'value_clip' must be a finite number > 0 (or null: off)"),
    ("grpo overlong_buffer=2 overlong_penalty=.inf", "'overlong_penalty' must be a finite number >= 0"),
    ("grpo calibrate_samples=2 calibrate_t=.nan", "'calibrate_t' must be a finite number"),
    ("grpo beta=.inf", "'beta' (the KL coefficient) must be a finite number >= 0"),
    ("grpo temperature=.inf", "'temperature' must be a finite number > 0")])
def test_non_finite_or_negative_coefficients_exit_2_before_the_model_loads(tmp_path, capsys, setting, rule):
    """NaN or inf in these reached the loss ("non-finite loss at step 1", blamed on the learning rate) after the
    model had loaded and the first rollout had run; a negative value coefficient maximised the value error."""
    from online_toys import write_prompts

    from pluralign.cli import main

    algorithm, *given = setting.split(" ")
    argv = ["train", algorithm, f"model={tmp_path / 'no_model_here'}", f"data={write_prompts(tmp_path / 'p.jsonl')}",
            f"output_dir={tmp_path / 'x'}", *given, "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert rule in err and "Traceback" not in err
