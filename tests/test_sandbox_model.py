"""Sandbox base model, feedback from a model, gold evaluation and the `pluralign sandbox` CLI.

One tiny base model is built per module into a temporary cache; determinism is checked on an even smaller
configuration that is built several times.
"""

import copy
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pluralign.cli import main
from pluralign.data.io import read_records
from pluralign.decode.sampler import sample
from pluralign.errors import ConfigError
from pluralign.sandbox import feedback as F
from pluralign.sandbox.attributes import ATTRIBUTES, score
from pluralign.sandbox.base import (
    SandboxConfig,
    build_base,
    config_hash,
    load,
    read_manifest,
    sha256_file,
    weights_hash,
)
from pluralign.sandbox.gold import eval_prompts, gold_eval, sample_logps, sequence_kl

MICRO = SandboxConfig(hidden_size=16, num_layers=1, num_heads=2, n_corpus=64, n_requests=64, pretrain_steps=3,
                      finetune_steps=3, batch_size=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    old = os.environ.get("PLURALIGN_CACHE")
    path = tmp_path_factory.mktemp("pluralign_cache")
    os.environ["PLURALIGN_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["PLURALIGN_CACHE"]
    else:
        os.environ["PLURALIGN_CACHE"] = old


@pytest.fixture(scope="module")
def tiny(cache):
    return build_base(seed=0, config=SandboxConfig.tiny())


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "one"))
    first = build_base(seed=0, config=MICRO)
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "two"))  # a separate cache: really rebuilt
    again = build_base(seed=0, config=MICRO)
    other = build_base(seed=1, config=MICRO)
    assert first != again
    assert weights_hash(first) == weights_hash(again) != weights_hash(other)
    assert read_manifest(first)["files"] == read_manifest(again)["files"]


def test_cache_key_depends_on_seed_and_config():
    assert config_hash(0, MICRO) == config_hash(0, copy.deepcopy(MICRO))
    assert config_hash(0, MICRO) != config_hash(1, MICRO)
    assert config_hash(0, MICRO) != config_hash(0, SandboxConfig.tiny())


def test_cache_key_depends_on_the_tiny_model_source(monkeypatch, tmp_path):
    # models/tiny.py (the word tokenizer and the Llama the base is built from) was not hashed: a change to it
    # reused a base built by the old code
    from pluralign.models import tiny as tiny_module

    before = config_hash(0, MICRO)
    changed = tmp_path / "tiny.py"
    changed.write_text(Path(tiny_module.__file__).read_text() + "\n# changed\n")
    monkeypatch.setattr(tiny_module, "__file__", str(changed))
    assert config_hash(0, MICRO) != before


def test_manifest_hashes_every_file_and_the_model_loads(tiny):
    manifest = read_manifest(tiny)
    files = sorted(f.name for f in Path(tiny).iterdir() if f.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    assert all(manifest["files"][name] == sha256_file(Path(tiny) / name) for name in files)
    assert manifest["weights_sha256"] == weights_hash(tiny)
    model, tok = load(tiny)
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == model.config.vocab_size


def test_second_build_reuses_the_cache_and_out_copies_it(tiny, tmp_path):
    before = (Path(tiny) / "model.safetensors").stat().st_mtime_ns
    assert build_base(seed=0, config=SandboxConfig.tiny()) == tiny
    assert (Path(tiny) / "model.safetensors").stat().st_mtime_ns == before
    out = build_base(tmp_path / "copy", seed=0, config=SandboxConfig.tiny())
    assert out == tmp_path / "copy" and weights_hash(out) == weights_hash(tiny)


def test_out_is_a_new_directory_or_a_copy_of_a_base(tiny, tmp_path, capsys):
    # a model directory there was overwritten in place; its adapter_config.json, left over, made the copy an
    # adapter without a base
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert main(["sandbox", "build", "--tiny", "--out", str(adapter)]) == 2
    assert "is not a copy of a sandbox base model" in capsys.readouterr().err
    assert [p.name for p in adapter.iterdir()] == ["adapter_config.json"]
    again = build_base(tmp_path / "copy", seed=0, config=SandboxConfig.tiny())
    assert build_base(again, seed=0, config=SandboxConfig.tiny()) == again  # an earlier copy is rebuilt in place
    (tmp_path / "empty").mkdir()
    assert weights_hash(build_base(tmp_path / "empty", seed=0, config=SandboxConfig.tiny())) == weights_hash(tiny)


def test_model_feedback_is_reproducible_and_valid(tiny, tmp_path):
    for kind in ("user_pairwise", "ranked", "judged"):
        a = F.generate_file(tmp_path / f"{kind}-a.jsonl", kind, "two_groups", 16, tiny, seed=2, k=3)
        b = F.generate_file(tmp_path / f"{kind}-b.jsonl", kind, "two_groups", 16, tiny, seed=2, k=3)
        c = F.generate_file(tmp_path / f"{kind}-c.jsonl", kind, "two_groups", 16, tiny, seed=3, k=3)
        digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
        assert digest[0] == digest[1] != digest[2]
        assert len(read_records(a)) == 16


def test_teacher_forced_logps_match_the_samplers_and_kl_to_itself_is_zero(tiny):
    model, tok = load(tiny)
    samples = sample(model, tok, eval_prompts(6), n=3, seed=0)
    np.testing.assert_allclose(sample_logps(model, samples), samples.sum_logps.double().numpy(), atol=1e-3)
    assert np.abs(sequence_kl(model, model, samples)).max() == 0.0


def test_gold_eval_reports_attributes_groups_users_kl_and_win_rates(tiny):
    model, tok = load(tiny)
    same = gold_eval(model, tokenizer=tok, base=model, n_prompts=24, user="g1-u2")
    assert set(same["attributes"]) == set(ATTRIBUTES)
    assert set(same["groups"]) == {"majority", "minority"} and len(same["users"]) == 16
    assert same["kl"] == {"mean": 0.0, "se": 0.0}
    for v in same["win_rate"].values():  # the base against itself: a fair coin up to sampling noise
        assert abs(v["mean"] - 0.5) < 4 * v["se"] + 0.02
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.lm_head.weight.add_(torch.randn(shifted.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    far = gold_eval(shifted, tokenizer=tok, base=model, n_prompts=24, per_user=False)
    assert far["kl"]["mean"] > 3 * far["kl"]["se"] > 0
    assert "users" not in far
    for bad in ({"n_prompts": 0}, {"n_samples": 0}, {"prompts": []}):  # n_prompts 0 was a reshape traceback
        with pytest.raises(ConfigError, match="at least one prompt and one sample"):
            gold_eval(model, tokenizer=tok, **bad)


def test_one_prompt_gives_no_standard_error_rather_than_zero(tiny):
    # Standard errors are over prompts; one prompt printed "± 0.0000" on every row, as if it were certain
    from pluralign.sandbox.gold import format_table

    model, tok = load(tiny)
    one = gold_eval(model, tokenizer=tok, base=model, n_prompts=1, n_samples=2, per_user=False)
    assert math.isnan(one["groups"]["majority"]["se"]) and math.isnan(one["win_rate"]["majority"]["se"])
    row = next(line for line in format_table(one).splitlines() if line.startswith("utility/majority"))
    assert row.split()[-1] == "-"


def test_gold_eval_scores_the_users_of_the_feedbacks_users_seed(tiny):
    # it always scored users(0): feedback drawn with users_seed=3 names other people under the same ids
    from pluralign.sandbox.users import population, utility

    model, tok = load(tiny)
    seeded = gold_eval(model, tokenizer=tok, n_prompts=4, n_samples=1, users_seed=3)
    assert seeded["users"] != gold_eval(model, tokenizer=tok, n_prompts=4, n_samples=1)["users"]
    samples = sample(model, tok, eval_prompts(4), n=1, seed=0)
    x = np.array([list(score(p, t[0]).values()) for p, t in zip(eval_prompts(4), samples.texts, strict=True)])
    for u in population("default").users(3):
        assert seeded["users"][u.id]["mean"] == pytest.approx(float(utility(u.vector(), x).mean()))


def test_cli_build_feedback_and_eval(tiny, tmp_path, capsys):
    out = tmp_path / "base"
    assert main(["sandbox", "build", "--tiny", "--out", str(out)]) == 0
    assert weights_hash(out) in capsys.readouterr().out
    data = tmp_path / "fb.jsonl"
    assert main(["sandbox", "feedback", "--kind", "binary", "--population", "diverse", "--n", "12",
                 "--out", str(data), "--model", str(out), "--seed", "4", "--groups", "skimmers,cautious"]) == 0
    assert {r.group for r in read_records(data)} <= {"skimmers", "cautious"}
    result = tmp_path / "eval.json"
    assert main(["sandbox", "eval", "--model", str(out), "--base", str(out), "--n-prompts", "8",
                 "--out", str(result)]) == 0
    printed = capsys.readouterr().out
    assert "utility/minority" in printed and "KL(model || base)" in printed
    assert json.loads(result.read_text())["kl"]["mean"] == 0.0
    assert main(["sandbox", "eval", "--model", str(tmp_path / "missing")]) == 2
    # --user without --base was ignored, an unknown id too: its win rate is against the base
    assert main(["sandbox", "eval", "--model", str(out), "--user", "g1-u3"]) == 2
    assert "give the base (--base)" in capsys.readouterr().err
    assert main(["sandbox", "feedback", "--kind", "binary", "--n", "0", "--out", str(data)]) == 2
    # options of one kind given with another were ignored: 12 thumbs written as if --k had not been given
    assert main(["sandbox", "feedback", "--kind", "binary", "--k", "3", "--out", str(data)]) == 2
    assert main(["sandbox", "feedback", "--kind", "pairwise", "--rated-per-prompt", "4", "--out", str(data)]) == 2
    assert "--rated-per-prompt shapes --kind rated feedback only, not pairwise" in capsys.readouterr().err


def test_eval_against_a_base_with_another_tokenizer_is_refused_before_sampling(tiny, tmp_path, capsys):
    # KL and win rates feed the model's token ids to the base: another vocabulary was an IndexError traceback
    # (a smaller one) or numbers about garbled text (a larger one).
    from pluralign.models.tiny import tiny_llama, word_tokenizer
    from pluralign.sandbox.world import VOCABULARY

    other = tmp_path / "other"
    tok = word_tokenizer(VOCABULARY[:40])
    tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2).save_pretrained(other)
    tok.save_pretrained(other)
    result = tmp_path / "eval.json"
    assert main(["sandbox", "eval", "--model", str(tiny), "--base", str(other), "--n-prompts", "2",
                 "--out", str(result)]) == 2
    assert "different tokenizers" in capsys.readouterr().err
    assert not result.exists()
    with pytest.raises(ConfigError, match="different tokenizers"):
        gold_eval(other, base=tiny, n_prompts=2)
    # a tokenizer that only adds tokens (control tokens, statement words) keeps the base's ids: still evaluated
    model, tok = load(tiny)
    tok.add_tokens(["<person-0>"], special_tokens=True)
    model.resize_token_embeddings(len(tok))
    extended = tmp_path / "extended"
    model.save_pretrained(extended)
    tok.save_pretrained(extended)
    assert gold_eval(extended, base=tiny, n_prompts=2)["kl"] is not None


def test_a_model_that_answers_one_way_gives_an_error_not_pairs_of_identical_responses(tiny, tmp_path):
    # a near-greedy model repeats itself: the pair was topped up with a copy, written, and then rejected by the
    # data layer ("rejected: identical to chosen") when training read the file
    from pluralign.errors import PluralignError

    model, tok = load(tiny)
    peaked = copy.deepcopy(model)
    with torch.no_grad():
        peaked.lm_head.weight.mul_(1000)
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(PluralignError, match="one distinct answer"):
        F.generate_file(out, "user_pairwise", "default", 6, model=peaked, tokenizer=tok)
    assert not out.exists()
    assert len(read_records(F.generate_file(out, "ranked", "default", 3, model=peaked, tokenizer=tok, k=2))) == 3


def test_a_lora_adapter_directory_is_a_model_for_the_sandbox_commands(tiny, tmp_path):
    # `train ... use_lora=true merge_lora=false` saves adapter_config.json and no config.json; load_model reads it,
    # but sandbox eval and feedback refused it as "not a model directory"
    from peft import LoraConfig, get_peft_model

    model, tok = load(tiny)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    tok.save_pretrained(adapter)
    assert not (adapter / "config.json").exists()
    assert main(["sandbox", "eval", "--model", str(adapter), "--base", str(tiny), "--n-prompts", "2"]) == 0
    out = tmp_path / "pairs.jsonl"
    assert main(["sandbox", "feedback", "--kind", "pairwise", "--n", "2", "--model", str(adapter), "--out", str(out)]) == 0
    assert len(read_records(out)) == 2
    assert main(["sandbox", "eval", "--model", str(tmp_path), "--n-prompts", "2"]) == 2  # still refused: no model here
