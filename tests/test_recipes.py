"""The preference and SFT recipes, the reference cache and the `pluralign train` command, end to end on a
tiny locally built model."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from loop_toys import make_model_dir, write_pairs, write_ranked

from pluralign import losses
from pluralign.cli import main
from pluralign.data.collate import PairwiseCollator
from pluralign.errors import ConfigError
from pluralign.models import tiny
from pluralign.models.load import load_model, load_tokenizer
from pluralign.models.logprobs import sequence_logps
from pluralign.runs import RunDir
from pluralign.train import run_preference, run_sft
from pluralign.train.recipes.preference_kinds import Collate, Item, _pairwise_logps
from pluralign.train.reference import cached_reference

LOOP = {"learning_rate": 1e-2, "batch_size": 4, "num_epochs": 1, "log_every": 1, "progress": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipes")
    return {"base": make_model_dir(d / "base"), "pairs": write_pairs(d / "pairs.jsonl", 16),
            "ranked": write_ranked(d / "ranked.jsonl", 8), "dir": d}


def params(model_dir) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_model(model_dir).state_dict().items()}


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_cli_train_dpo_writes_a_loadable_model_and_run_dir(files, tmp_path, capsys):
    config = tmp_path / "dpo.yaml"
    config.write_text(f"model: {files['base']}\ndata: [{files['pairs']}]\noutput_dir: {tmp_path / 'out'}\n"
                      "loop: {learning_rate: 0.01, batch_size: 4, log_every: 1, progress: true}\n")
    assert main(["train", "dpo", "--config", str(config), "loss_params.beta=0.2", "loop.num_epochs=2"]) == 0
    out = tmp_path / "out"
    model = load_model(out / "model")
    tokenizer = load_tokenizer(out / "model")
    assert model.generate(**tokenizer("tell me about the cat", return_tensors="pt"), max_new_tokens=3,
                          do_sample=False).shape[1] > 5
    assert changed(params(out / "model"), params(files["base"]))
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"rewards/margins", "rewards/accuracies"} <= set(rows[0])
    saved = (out / "config.yaml").read_text()
    assert "beta: 0.2" in saved and "loss: dpo" in saved
    assert "loss_params" in capsys.readouterr().err  # the full config is printed


@pytest.mark.parametrize("argv, message", [
    (["train", "dpo", "--config", "/nonexistent.yaml"], "config file not found"),
    (["train", "dpo", "model=x", "data=y", "loop.learning_rat=1"], "did you mean 'loop.learning_rate'"),
    (["train", "dpp", "model=x"], "'dpo'?"),
    (["train", "grpoo", "model=x"], "unknown method 'grpoo' (did you mean 'grpo'"),
    (["train", "dpo", "model=x", "data=y", "loss_params.beta=abc"], "'beta' must be a finite number, got 'abc'"),
    (["train", "bt", "model=x"], "reward"),
    (["train", "dpo", "model=x", "data=y", "loss_params.gamma=1"], "no hyper-parameter 'gamma'"),
])
def test_cli_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_refuses_a_config_naming_another_loss(files, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {files['base']}\ndata: [{files['pairs']}]\nloss: dpo\n")
    assert main(["train", "kto", "--config", str(config)]) == 2
    assert "pluralign train kto" in capsys.readouterr().err


@pytest.mark.parametrize("loss, message", [
    ("dpo", "choose one or give weights (no training option sets that: convert the file first, `pluralign data convert "),
    ("kto", "this conversion needs a threshold (no training option sets that: convert the file first"),
])
def test_ratings_the_recipe_cannot_convert_name_the_file_and_the_way_out(files, tmp_path, capsys, loss, message):
    # the error named neither the file nor how to give the objective or threshold, which no training option sets
    rated = tmp_path / "ratings.jsonl"
    rated.write_text("".join(json.dumps({"prompt": f"p{i}", "response": r, "ratings": {"a": i + j, "b": j - i}}) + "\n"
                             for i in range(3) for j, r in enumerate(["x", "y"])))
    argv = ["train", loss, f"model={files['base']}", f"data=[{rated}]", f"output_dir={tmp_path / 'out'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {rated}: " in err and message in err and "Traceback" not in err


def test_help_config_lists_every_field(capsys):
    assert main(["train", "simpo", "--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("loss_params", "ref_cache", "loop.grad_accum", "loop.mixed_precision", "lora.r"):
        assert key in out


@pytest.mark.parametrize("setting", ["ref_batch_size=-1", "udm_sample_size=0"])
def test_cli_refuses_a_negative_reference_batch_or_udm_sample(files, tmp_path, capsys, setting):
    # ref_batch_size=-1 wrote an empty reference cache, then stopped with "loss 'dpo' needs ref_chosen_logps".
    out = tmp_path / "out"
    argv = ["train", "dpo", f"model={files['base']}", f"data=[{files['pairs']}]", f"output_dir={out}", setting]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"'{setting.split('=')[0]}' must be >=" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("setting", "expected"), [
    ("loop.batch_size=1000", "fewer than one effective batch (1000"),
    ("loop.report_to=[no_such_tracker]", "report_to: unknown tracker(s) ['no_such_tracker']"),
    ("attention_kernel=flex", "attention_kernel=flex cannot train on CPU"),  # found at the first backward
])
def test_loop_settings_that_cannot_run_are_refused_before_the_reference_pass(files, tmp_path, capsys, setting, expected):
    # Found by the loop only, after the reference pass had run over the whole data set and written its cache.
    out = tmp_path / "out"
    argv = ["train", "dpo", f"model={files['base']}", f"data=[{files['pairs']}]", f"output_dir={out}", setting]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "reference log-probs" not in err
    assert not out.exists()


def test_an_output_dir_that_cannot_be_written_is_refused_before_the_reference_pass(files, tmp_path, capsys):
    # Found writing the reference cache, after the model had loaded and the reference pass had run.
    (tmp_path / "a_file").write_text("")
    argv = ["train", "dpo", f"model={files['base']}", f"data=[{files['pairs']}]", f"output_dir={tmp_path / 'a_file' / 'x'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"output_dir {tmp_path / 'a_file' / 'x'}: {tmp_path / 'a_file'} is a file" in err
    assert "reference log-probs" not in err and "Traceback" not in err


def test_responses_alike_once_cut_to_max_length_are_named(tiny_word_tokenizer):
    # Cut at max_length, a pair differing only at its end was one sequence twice: a loss with no gradient and a
    # reward accuracy of 0, without a word.
    from pluralign.data.records import Pairwise
    from pluralign.train.recipes.common import encoding_problems

    pairs = [Pairwise("what is the cat ?", "the cat sat on the big red mat", "the cat sat on the big blue rug"),
             Pairwise("what is the dog ?", "the dog ran", "no")]
    collator = PairwiseCollator(tiny_word_tokenizer, max_length=10, chat_template="never")
    with pytest.warns(UserWarning, match=r"pairs.jsonl: 1 record\(s\) \(line\(s\) 3\) hold responses that encode to "
                                         r"the same tokens within max_length=10"):
        assert encoding_problems(collator, pairs, "pairs.jsonl", [3, 4]) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # room for the whole of each: nothing to say
        assert encoding_problems(PairwiseCollator(tiny_word_tokenizer, max_length=32, chat_template="never"),
                                 pairs, "pairs.jsonl", [3, 4]) == []


def test_responses_cut_at_max_length_are_counted_when_the_data_is_read(tiny_word_tokenizer):
    # cut silently: a reply that loses its end (and end of turn) teaches answers that do not end
    from pluralign.data.records import Pairwise
    from pluralign.train.recipes.common import encoding_problems

    pairs = [Pairwise("what is the cat ?", "the cat sat on the big red mat", "no"),
             Pairwise("what is the dog ?", "the dog ran", "no"),
             Pairwise("why ?", "yes", "the big red dog ran under the blue rug here")]
    collator = PairwiseCollator(tiny_word_tokenizer, max_length=10, chat_template="never")
    with pytest.warns(UserWarning, match=r"pairs.jsonl: 2 of 3 record\(s\) \(line\(s\) 3, 5\) have a response cut at "
                                         r"max_length=10"):
        assert encoding_problems(collator, pairs, "pairs.jsonl", [3, 4, 5]) == []
    sft = PairwiseCollator(tiny_word_tokenizer, max_length=10, chat_template="never")
    with pytest.warns(UserWarning, match="have a response cut"):  # SFT is told too: it loses the answers' ends
        encoding_problems(sft, pairs[:1], "sft.jsonl", None, compared=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # room for the whole of each: nothing to say
        assert encoding_problems(PairwiseCollator(tiny_word_tokenizer, max_length=32, chat_template="never"),
                                 pairs, "pairs.jsonl", [3, 4, 5]) == []


def test_reference_cache_hits_and_misses(files, tmp_path):
    tokenizer, model = load_tokenizer(files["base"]), load_model(files["base"])
    from pluralign.data.io import read_records

    items = [Item(i, r) for i, r in enumerate(read_records(files["pairs"]))]
    collate = Collate(PairwiseCollator(tokenizer, max_length=64))
    info = losses.describe("dpo")

    def get(model, items, collate):
        return cached_reference(model, items, collate, lambda m, b: _pairwise_logps(m, b, info),
                                cache_dir=tmp_path, batch_size=8, what="pairwise")

    values, path, hit = get(model, items, collate)
    assert not hit and path.exists()
    assert get(model, items, collate)[1:] == (path, True)
    # The cached values are the model's log-probs.
    direct = sequence_logps(model, collate(items[:3]))[0]
    torch.testing.assert_close(values["chosen"][:3], direct[:3])
    torch.testing.assert_close(values["rejected"][:3], direct[3:])
    # Other data, other tokenization, other weights: misses.
    assert get(model, items[:-1], collate)[2] is False
    assert get(model, items, Collate(PairwiseCollator(tokenizer, max_length=6)))[2] is False
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    other, other_path, hit = get(model, items, collate)
    assert not hit and other_path != path
    assert len(list(tmp_path.glob("*.safetensors"))) == 4 and not list(tmp_path.glob(".*.tmp"))


def test_the_reference_cache_key_holds_the_adapter_of_a_saved_adapter_reference(files, tmp_path):
    from pluralign.models.lora import LoraSpec, add_lora
    from pluralign.train.reference import adapters_disabled, weights_fingerprint

    keys = []
    for seed in (0, 1):  # two SFT adapters on one base, loaded frozen as DPO's reference (adapters on)
        torch.manual_seed(seed)
        trained = add_lora(load_model(files["base"]), LoraSpec(r=2))
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.data.normal_()
        trained.save_pretrained(tmp_path / f"adapter{seed}")
        reference = load_model(tmp_path / f"adapter{seed}")
        keys.append(weights_fingerprint(reference))
        with adapters_disabled(reference):  # the base, as a LoRA policy's own reference: the adapter is not in it
            keys.append(weights_fingerprint(reference))
    assert keys[0] != keys[2]  # were equal: a shared ref_cache_dir served adapter0's log-probs to adapter1's run
    assert keys[1] == keys[3]


def test_an_unwritable_reference_cache_is_a_one_line_error(files, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")  # a directory cannot be made under a file, even by root
    argv = ["train", "dpo", f"model={files['base']}", f"data={files['pairs']}", f"output_dir={tmp_path / 'run'}",
            f"ref_cache_dir={tmp_path / 'a_file' / 'cache'}", "loop.max_steps=1", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # refused before the model loads: it was found writing the cache, after the reference pass had run
    assert f"error: ref_cache_dir {tmp_path / 'a_file' / 'cache'}: {tmp_path / 'a_file'} is a file" in err
    assert "Traceback" not in err and "reference log-probs" not in err


def test_cached_reference_trains_like_a_live_reference(files, tmp_path):
    common = dict(model=str(files["base"]), data=[str(files["pairs"])], loss="dpo", loop=LOOP | {"num_epochs": 2})
    cached = run_preference(**common, output_dir=str(tmp_path / "cached"))
    live = run_preference(**common, ref_cache=False, output_dir=str(tmp_path / "live"))
    assert (tmp_path / "cached" / "ref_cache").is_dir() and not (tmp_path / "live" / "ref_cache").exists()
    a, b = params(cached.model_dir), params(live.model_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert changed(a, params(files["base"]))


def test_lora_with_adapters_off_reference_and_saved_adapters(files, tmp_path):
    common = dict(model=str(files["base"]), data=[str(files["pairs"])], loss="dpo", use_lora=True,
                  lora={"r": 4, "alpha": 8.0}, loop=LOOP | {"learning_rate": 5e-2})
    # A resumable checkpoint is asked for (save_every past the end: after the last step only).
    merged = run_preference(**(common | {"loop": common["loop"] | {"save_every": 100}}), output_dir=str(tmp_path / "merged"))
    adapters = run_preference(**common, ref_cache=False, merge_lora=False, output_dir=str(tmp_path / "adapters"))
    assert (adapters.model_dir / "adapter_config.json").exists()
    assert not (merged.model_dir / "adapter_config.json").exists()
    # Only the adapters are checkpointed.
    from pluralign.train import state

    weights = state.load_checkpoint(state.latest_checkpoint(tmp_path / "merged" / "checkpoints")).weights
    assert weights and all("lora_" in k for k in weights)
    # adapters-off live reference == cached reference; the saved adapter dir loads with its base.
    a = load_model(merged.model_dir).state_dict()
    b = load_model(adapters.model_dir).merge_and_unload().state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert changed(params(merged.model_dir), params(files["base"]))


def test_bco_resume_is_exact_with_its_running_shift(files, tmp_path):
    loop = LOOP | {"scheduler": "constant", "warmup_ratio": 0.0, "batch_size": 2, "num_epochs": 1, "save_every": 100}
    common = dict(model=str(files["base"]), data=[str(files["pairs"])], loss="bco")  # pairs -> binary rows
    straight = run_preference(**common, loop=loop | {"max_steps": 10}, output_dir=str(tmp_path / "a"))
    run_preference(**common, loop=loop | {"max_steps": 4}, output_dir=str(tmp_path / "b"))
    resumed = run_preference(**common, loop=loop | {"max_steps": 10}, output_dir=str(tmp_path / "b"))
    assert resumed.train.resumed_from.name == "step-4"
    assert straight.train.metrics["reward_shift"] == resumed.train.metrics["reward_shift"] != 0
    a, b = params(straight.model_dir), params(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("loss, data", [("kto", "pairs"), ("lipo_lambda", "ranked"), ("simpo", "pairs"),
                                        ("dpo:1,nll:0.2", "pairs")])
def test_each_kind_of_loss_trains(files, tmp_path, loss, data):
    result = run_preference(model=str(files["base"]), data=[str(files[data])], eval_data=[str(files[data])],
                            loss=loss, loop=LOOP, output_dir=str(tmp_path / "out"))
    m = result.train.metrics
    assert result.train.global_step >= 2 and torch.isfinite(torch.tensor(m["loss"]))
    assert "loss" in result.train.eval_metrics
    assert changed(params(result.model_dir), params(files["base"]))
    if loss == "kto":  # the mismatched-pair baseline is computed and cached
        assert "kl_baseline" in m
        assert (tmp_path / "out" / "ref_cache").is_dir()
    if loss == "simpo":  # reference-free: nothing cached
        assert not (tmp_path / "out" / "ref_cache").exists()


@pytest.mark.parametrize("loss", ["softmax_list", "lipo_lambda", "list_mle", "pair_logistic"])
def test_listwise_losses_read_win_rate_labels_of_ranks_and_scores(loss):
    from pluralign.train.recipes.preference_kinds import KINDS

    def gradient(scores):  # d loss / d logπ(y_k) at the reference, for one list of three
        policy = torch.zeros(1, 3, requires_grad=True)
        batch = {"scores": torch.tensor([scores]), "list_mask": torch.ones(1, 3, dtype=torch.bool)}
        inputs = KINDS["listwise"].inputs({"logps": policy}, {"logps": torch.zeros(1, 3)}, batch)
        losses.get(loss)(**inputs)[0].sum().backward()
        return policy.grad[0]

    ranks = gradient([-1.0, -2.0, -3.0])  # ranks 1, 2, 3 as the collator gives them
    assert ranks[0] < 0 < ranks[2]  # the best response is pushed up, the worst down (softmax_list did the reverse)
    torch.testing.assert_close(gradient([7.0, 4.0, 1.0]), ranks)  # the rating scale does not matter
    torch.testing.assert_close(gradient([70.0, 40.0, 10.0]), ranks)


def test_sft_via_cli_and_api(files, tmp_path):
    assert main(["train", "sft", f"model={files['base']}", f"data={files['pairs']}", f"output_dir={tmp_path / 'cli'}",
                 "loop.batch_size=4", "loop.learning_rate=0.01", "loop.progress=false", "loop.log_every=1"]) == 0
    rows = RunDir(tmp_path / "cli").read_metrics()
    assert rows[-1]["loss"] < rows[0]["loss"] + 1.0 and "nll" in rows[0]
    result = run_sft(model=str(files["base"]), data=[str(files["pairs"])], output_dir=str(tmp_path / "api"),
                     loop={"batch_size": 4, "learning_rate": 0.01, "progress": False})
    assert changed(params(result.model_dir), params(files["base"]))
    assert json.loads((result.model_dir / "config.json").read_text())["model_type"] == "llama"


def test_sft_imitates_only_the_responses_feedback_approves(files, tmp_path, monkeypatch):
    from pluralign.train.recipes import sft

    rows = [{"prompt": "p1", "response": "up", "label": True}, {"prompt": "p2", "response": "down", "label": False}]
    (tmp_path / "binary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ranked.jsonl").write_text(json.dumps({"prompt": "p3", "responses": ["mid", "best", "worst"],
                                                      "ranks": [2, 1, 3]}) + "\n")
    seen = []

    def no_training(model, records, *args, **kwargs):  # what the loop would train on
        seen.extend((r.prompt, r.response) for r in records)
        raise RuntimeError("stop")

    monkeypatch.setattr(sft, "train", no_training)
    with pytest.raises(RuntimeError, match="stop"):
        run_sft(model=str(files["base"]), data=[str(tmp_path / "binary.jsonl"), str(tmp_path / "ranked.jsonl")],
                output_dir=str(tmp_path / "out"), loop={"progress": False})
    assert seen == [("p1", "up"), ("p3", "best")]  # not the thumbs-down answer, nor the list's others


@pytest.mark.parametrize("method", ["dpo", "simpo", "kto", "sft"])
def test_a_row_that_cannot_be_encoded_is_named_by_file_line_and_field(files, tmp_path, capsys, method):
    rows = [json.loads(line) for line in open(files["pairs"])][:8]
    rows[2]["prompt"] = "tell me about the cat " * 10  # 60 tokens: no room for a reply within max_length=40
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", method, f"model={files['base']}", f"data={data}", "max_length=40", "loop.batch_size=2",
                 f"output_dir={tmp_path / 'out'}", "loop.progress=false"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:3: field 'prompt': prompt" in err and "leaving no room" in err  # before the reference or any step
    assert not (tmp_path / "out" / "ref_cache").exists()


@pytest.mark.parametrize("loss", ["simpo", "orpo", "nll"])
def test_a_ref_model_for_a_reference_free_loss_is_refused(files, tmp_path, capsys, loss):
    assert main(["train", loss, f"model={files['base']}", f"ref_model={files['base']}", f"data={files['pairs']}",
                 f"output_dir={tmp_path / 'out'}", "loop.batch_size=4", "loop.progress=false"]) == 2
    assert f"loss '{loss}' is reference-free" in capsys.readouterr().err  # it trained, the ref_model never loaded
    assert not (tmp_path / "out").exists()


def test_a_reference_with_another_vocabulary_is_refused(files, tmp_path, capsys):
    from loop_toys import WORDS

    from pluralign.models.tiny import tiny_llama, word_tokenizer

    tok = word_tokenizer(list(reversed(WORDS)))  # as many tokens, other ids: its log-probs were of other words
    tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32).save_pretrained(tmp_path / "ref")
    tok.save_pretrained(tmp_path / "ref")
    assert main(["train", "dpo", f"model={files['base']}", f"ref_model={tmp_path / 'ref'}", f"data={files['pairs']}",
                 f"output_dir={tmp_path / 'out'}", "loop.batch_size=4", "loop.progress=false"]) == 2
    assert "another vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "out" / "ref_cache").exists()


def test_kto_with_one_held_out_example_names_eval_data(files, tmp_path, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "tell me about the cat", "response": "the cat is good", "label": True}) + "\n")
    assert main(["train", "kto", f"model={files['base']}", f"data={files['pairs']}", f"eval_data={one}",
                 f"output_dir={tmp_path / 'out'}", "loop.batch_size=4", "loop.progress=false"]) == 2
    assert "eval_data: loss 'kto' needs at least 2 examples" in capsys.readouterr().err  # not the 32 training rows


@pytest.mark.parametrize("method", ["dpo", "lipo", "sft"])
def test_a_file_that_gives_nothing_to_train_on_is_named(files, tmp_path, capsys, method):
    if method == "sft":  # thumbs-down only: nothing to imitate
        rows = [{"prompt": "tell me about the cat", "response": f"the cat is {w}", "label": False} for w in ("bad", "no")]
    else:  # one rated response per prompt: no pair, no list
        rows = [{"prompt": f"tell me about the {n}", "response": "the cat is good", "ratings": {"q": i}}
                for i, n in enumerate(["cat", "dog", "sun", "rain"])]
    data = tmp_path / "feedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", method, f"model={files['base']}", f"data={data}", f"output_dir={tmp_path / 'out'}",
                 "loop.batch_size=2", "loop.progress=false"]) == 2
    assert f"{data}: its {len(rows)} " in capsys.readouterr().err  # was 'the training set is empty', after the reference
    assert not (tmp_path / "out" / "ref_cache").exists()


@pytest.mark.parametrize("name", ["sft", "dpo", "kto", "lipo", "simpo"])
def test_example_configs_parse(name):
    from pathlib import Path

    from pluralign.train.cli import build_config

    path = Path(__file__).parents[1] / "examples" / f"{name}.yaml"
    config = build_config(name, str(path), [])
    assert config.loop.batch_size >= 1 and config.output_dir.startswith("runs/")


def test_sft_example_cuts_long_prompts_as_its_comment_says():
    from pathlib import Path

    from pluralign.train.cli import build_config

    config = build_config("sft", str(Path(__file__).parents[1] / "examples" / "sft.yaml"), [])
    assert "longer prompts are cut at their start" in (Path(__file__).parents[1] / "examples" / "sft.yaml").read_text()
    # Only max_prompt_length cuts a prompt: with max_length alone a 600-token prompt was an error, not cut.
    assert config.max_prompt_length is not None and config.max_prompt_length < config.max_length


def test_reward_names_map_to_the_reward_recipe(monkeypatch, capsys):
    import importlib

    from pluralign.train import cli

    try:
        importlib.import_module("pluralign.train.recipes.reward")
    except ModuleNotFoundError:
        pytest.skip("reward recipe not present")
    for name, model_type in cli.REWARD_MODEL_TYPES.items():
        cls, _, implied = cli.recipe(name)
        assert cls.__name__ == "RewardConfig" and implied == {"model_type": model_type}
    real = importlib.import_module

    def missing(name, *a):
        if name == "pluralign.train.recipes.reward":
            raise ModuleNotFoundError(name=name)
        return real(name, *a)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert main(["train", "pal", "--help-config"]) == 2
    assert "recipes.reward is missing" in capsys.readouterr().err


def test_packing_trains_like_padding(files, tmp_path):
    common = dict(model=str(files["base"]), data=[str(files["pairs"])], loss="dpo", loop=LOOP)
    padded = run_preference(**common, packing=False, output_dir=str(tmp_path / "padded"))
    packed = run_preference(**common, packing=True, output_dir=str(tmp_path / "packed"))
    a, b = params(padded.model_dir), params(packed.model_dir)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)


def test_mnpo_reads_the_opponents_log_probs_from_history_models(files, tmp_path):
    from pluralign.data.io import read_records

    opponent = make_model_dir(tmp_path / "opponent", seed=1)  # a different past policy
    pairs = read_records(files["pairs"])
    run = run_preference(model=str(files["base"]), data=[str(files["pairs"])], loss="mnpo",
                         history_models=[str(opponent)], output_dir=str(tmp_path / "mnpo"),
                         loop=LOOP | {"batch_size": len(pairs), "max_steps": 1})
    margins = []
    for model_dir in (files["base"], opponent):
        with torch.no_grad():
            batch = PairwiseCollator(load_tokenizer(model_dir), max_length=512)(pairs)
            sums, _ = sequence_logps(load_model(model_dir), batch)
        margins.append(sums[:len(pairs)] - sums[len(pairs):])
    ref_margin, opponent_margin = margins
    eta, ratio = 0.0075, 0.3333  # the defaults; at step 1 the policy's margin is the reference's
    expected = ((1 - ratio) * (ref_margin - opponent_margin) - 1 / (2 * eta)) ** 2
    first = RunDir(run.run_dir).read_metrics()[0]
    assert first["loss"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert float(expected.mean()) != pytest.approx(1 / (4 * eta**2), rel=1e-3)  # what the reference alone would give

    with pytest.raises(ConfigError, match="mnpo"):
        run_preference(model=str(files["base"]), data=[str(files["pairs"])], loss="dpo",
                       history_models=[str(opponent)], output_dir=str(tmp_path / "x"))


def test_lora_settings_without_use_lora_are_warned_about(tmp_path):
    """`lora.r=8` alone trained every weight without a word (LoRA is switched on by use_lora)."""
    from pluralign.models.lora import LoraSpec
    from pluralign.train.recipes.common import ModelTrainingConfig, load_trainable

    d = tmp_path / "m"
    tiny.tiny_llama(32, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(d)
    with pytest.warns(UserWarning, match="use_lora is false: training all weights"):
        load_trainable(ModelTrainingConfig(model=str(d), lora=LoraSpec(r=8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trainable(ModelTrainingConfig(model=str(d)))
        load_trainable(ModelTrainingConfig(model=str(d), use_lora=True, lora=LoraSpec(r=8)))


def test_dropout_is_off_in_training_so_the_first_dpo_step_scores_like_the_reference(files, tmp_path):
    # GPT-2 ships with dropout 0.1 (residual, attention, embeddings): a training-mode forward scored other
    # log-probs than the eval-mode reference cache, and DPO's first loss was not log 2.
    from loop_toys import WORDS

    path = tmp_path / "gpt2"
    tok = tiny.word_tokenizer(WORDS)
    model = tiny.tiny_gpt2(len(tok), hidden_size=16, num_layers=1, num_heads=2)
    assert model.config.resid_pdrop > 0 and model.config.attn_pdrop > 0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    result = run_preference(model=str(path), data=[str(files["pairs"])], loss="dpo", output_dir=str(tmp_path / "out"),
                            loop={**LOOP, "max_steps": 1})
    first = RunDir(result.run_dir).read_metrics()[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_a_data_file_given_twice_or_also_as_eval_data_is_warned_about(tmp_path):
    # both were silent: records trained on twice, or an "evaluation" on the training data
    from pluralign.train.recipes.common import warn_data_files

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with pytest.warns(UserWarning, match=r"data lists .*a\.jsonl more than once"):
        warn_data_files([str(a), str(b), str(tmp_path / "." / "a.jsonl")], [])
    with pytest.warns(UserWarning, match=r"b\.jsonl is in both data and eval_data: the evaluation is on training data"):
        warn_data_files([str(a), str(b)], str(b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_data_files([str(a)], [str(b)])
        warn_data_files(str(a), None)


def test_disable_dropout_false_keeps_the_models_dropout(tmp_path):
    # SFT of a model that ships with dropout may want to keep it: the option leaves every rate as saved.
    from loop_toys import WORDS

    from pluralign.train.recipes.common import ModelTrainingConfig, load_trainable

    path = tmp_path / "gpt2"
    tok = tiny.word_tokenizer(WORDS)
    tiny.tiny_gpt2(len(tok), hidden_size=16, num_layers=1, num_heads=2).save_pretrained(path)
    rates = lambda m: {mod.p for mod in m.modules() if isinstance(mod, torch.nn.Dropout)}  # noqa: E731
    assert rates(load_trainable(ModelTrainingConfig(model=str(path)))) == {0.0}
    assert rates(load_trainable(ModelTrainingConfig(model=str(path), disable_dropout=False))) == {0.1}
    assert rates(load_trainable(ModelTrainingConfig(model=str(path), disable_dropout=False), frozen=True)) == {0.0}


def test_a_recipe_holds_its_run_directory_until_the_model_is_saved(files, tmp_path, monkeypatch):
    # The loop's lock used to end with the loop: a second run could start on the directory while the model
    # was being saved. Another thread stands for that second run.
    import threading

    from pluralign.errors import PluralignError
    from pluralign.train.recipes import sft

    refused, real = [], sft.save_policy

    def save_policy(model, tokenizer, config, out, result, **kwargs):
        def second_run():
            try:
                with RunDir(out).lock():
                    pass
            except PluralignError as e:
                refused.append(str(e))

        thread = threading.Thread(target=second_run)
        thread.start()
        thread.join()
        return real(model, tokenizer, config, out, result, **kwargs)

    monkeypatch.setattr(sft, "save_policy", save_policy)
    run_sft(model=str(files["base"]), data=[str(files["pairs"])], output_dir=str(tmp_path / "out"),
            loop={**LOOP, "max_steps": 1})
    assert len(refused) == 1 and "in use by another run" in refused[0]


def test_dpo_continuing_a_saved_adapter_starts_from_it(files, tmp_path):
    # SFT with LoRA saved as an adapter (merge_lora=false), then DPO on it: the reference is the SFT policy
    # (base + adapter), not the base with adapters off, so the first loss is log 2.
    pytest.importorskip("peft")
    from pluralign.errors import ConfigError

    adapter = run_sft(model=str(files["base"]), data=[str(files["pairs"])], output_dir=str(tmp_path / "sft"),
                      use_lora=True, merge_lora=False, loop={**LOOP, "learning_rate": 0.05, "max_steps": 3}).model_dir
    assert (adapter / "adapter_config.json").exists()
    with pytest.raises(ConfigError, match="is a saved LoRA adapter: set use_lora=true"):  # was: nothing to train
        run_preference(model=str(adapter), data=[str(files["pairs"])], loss="dpo", output_dir=str(tmp_path / "no"),
                       loop={**LOOP, "max_steps": 1})
    for cache in (True, False):
        result = run_preference(model=str(adapter), data=[str(files["pairs"])], loss="dpo", use_lora=True,
                                ref_cache=cache, output_dir=str(tmp_path / f"dpo{cache}"), loop={**LOOP, "max_steps": 1})
        first = RunDir(result.run_dir).read_metrics()[0]
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6), cache


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_after_the_recipe_name_lists_its_fields(flag, capsys):
    # `-h` after NAME reached the inner parser, which had no help option: "unrecognized arguments: -h", exit 2.
    assert main(["train", "dpo", flag]) == 0
    assert main(["train", "dpo", "--config", "x.yaml", flag]) == 0
    assert "loop.mixed_precision" in capsys.readouterr().out


def test_chat_template_always_without_a_template_is_said_once(files, tmp_path, capsys):
    assert main(["train", "dpo", f"model={files['base']}", f"data={files['pairs']}", "chat_template=always",
                 f"output_dir={tmp_path / 'out'}", "loop.batch_size=4", "loop.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "chat_template=always but the tokenizer has no chat template" in err and "problem(s)" not in err
