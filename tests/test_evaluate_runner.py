"""`pluralign eval --config` end to end on sandbox prompts with tiny models, then the report built from
the real outputs renders in Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pluralign.cli import main
from pluralign.errors import ConfigError
from pluralign.evaluate.runner import build_judge, evaluate_config, load_prompts

sandbox_world = pytest.importorskip("pluralign.sandbox.world", reason="sandbox not available yet")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from pluralign.models.tiny import tiny_llama

    tok = sandbox_world.World().tokenizer()
    dirs = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"tiny{seed}")
        tiny_llama(len(tok), hidden_size=32, num_layers=1, seed=seed).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(str(d))
    return dirs


def config(dirs, **extra):
    return {"title": "tiny eval", "prompts": {"sandbox": 12, "seed": 3},
            "models": [{"name": "base", "path": dirs[0]}, {"name": "other", "path": dirs[1], "method": "policy"},
                       {"name": "bon2", "path": dirs[0], "decoder": "bon", "reward": "gold", "controls": {"n": 2}}],
            "generation": {"max_new_tokens": 8, "seed": 0}, "population": "default",
            "judge": {"kind": "gold", "population": "default"}, "bootstrap": 200, **extra}


def test_eval_config_and_report_in_browser(tiny_models, tmp_path):
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump(config(tiny_models, out="res.json")))
    report = tmp_path / "report.html"
    assert main(["eval", "--config", str(cfg_path), "--report", str(report)]) == 0
    results = json.loads((tmp_path / "res.json").read_text())
    runs = {r["name"]: r for r in results["runs"]}
    assert runs["base"]["kl"] == pytest.approx(0.0, abs=1e-4) and runs["base"]["kl_se"] == pytest.approx(0.0, abs=1e-4)  # π = π_ref
    assert runs["other"]["kl_se"] > 0 and "kl_se" not in runs["bon2"] and runs["bon2"]["kl_is_bound"]
    assert runs["other"]["kl"] > 0 and runs["bon2"]["kl"] == pytest.approx(np.log(2) - 0.5)
    assert "win_rate" not in runs["base"] and 0 <= runs["other"]["win_rate"]["win_rate"] <= 100
    assert runs["other"]["win_rate"]["baseline"] == "base"  # merged reports show each run's baseline
    assert set(runs["other"]["per_group"]) and len(runs["other"]["objectives"]) >= 2
    assert all(np.isfinite(r["reward"]) for r in runs.values())
    html = report.read_text()
    assert html.count("<img ") >= 3 and "win rate against" in html

    from test_report_html import browser_dom, check_all_images_loaded, chromium_binary

    if chromium_binary() is None:
        pytest.skip("Chromium not installed (scripts/ensure_chromium.sh installs it)")
    check_all_images_loaded(browser_dom(report, tmp_path), html.count("<img "))


def test_config_errors(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        evaluate_config({**config(tiny_models), "modles": []})
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate_config(config(tiny_models, metrics=["reward", "bleu"]))
    with pytest.raises(ConfigError, match=r"generation: unknown key\(s\) \['top_q'\]"):  # was silently ignored
        evaluate_config({**config(tiny_models), "generation": {"top_q": 0.9}})
    with pytest.raises(ConfigError, match=r"models\[1\]: unknown key\(s\) \['decodr'\]"):
        evaluate_config({**config(tiny_models), "models": [{"name": "a", "path": tiny_models[0]},
                                                           {"name": "b", "path": tiny_models[0], "decodr": "bon"}]})
    with pytest.raises(ConfigError, match=r"baseline: 'nobody' names no model; models: \["):
        evaluate_config(config(tiny_models, baseline="nobody"))
    with pytest.raises(ConfigError, match="unknown judge kind"):
        build_judge({"kind": "oracle"}, "cfg")
    with pytest.raises(ConfigError, match="base_url"):
        build_judge({"kind": "llm", "model": "m"}, "cfg")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['grup'\] for a gold judge"):
        build_judge({"kind": "gold", "grup": "minority"}, "cfg")  # was: the population's mean user
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ConfigError, match=r"p.jsonl:2"):
        load_prompts("p.jsonl", "cfg", tmp_path)
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert load_prompts("p.txt", "cfg", tmp_path) == ["one", "two"]
    for bad, message in [({"sandbox": "abc"}, r"cfg\.sandbox: must be an integer >= 1, got 'abc'"),  # was a traceback
                         ({"sandbox": 3, "seed": -1}, r"cfg\.seed: must be an integer >= 0"),
                         ({"sandbox": 3, "sede": 1}, r"unknown key\(s\) \['sede'\]")]:
        with pytest.raises(ConfigError, match=message):
            load_prompts(bad, "cfg", tmp_path)
    assert len(load_prompts({"sandbox": 3}, "cfg", tmp_path)) == 3
    assert main(["eval"]) == 2


def test_a_conditioned_model_is_evaluated_steered_by_its_controls(tiny_models, tmp_path):
    # A soup steered to weights (0, 1) is its second member exactly: the same KL to the base as that member
    # evaluated plainly. Loaded without its scheme, or with its controls dropped, it would not be.
    from pluralign.models.soup import save_soup

    soup = str(save_soup(tiny_models, ["informativeness", "conciseness"], tmp_path / "soup"))
    cfg = config(tiny_models, metrics=["reward", "kl"])
    cfg["models"] = [cfg["models"][0], cfg["models"][1],
                     {"name": "soup_b", "path": soup, "controls": {"weights": {"informativeness": 0, "conciseness": 1}}},
                     {"name": "soup_mid", "path": soup, "controls": {"weights": [0.5, 0.5]}}]
    results = evaluate_config(cfg)
    runs = {r["name"]: r for r in results["runs"]}
    assert runs["soup_b"]["samples"] == runs["other"]["samples"]
    assert runs["soup_b"]["kl"] == pytest.approx(runs["other"]["kl"], abs=1e-4) and runs["other"]["kl"] > 0.01
    # (tiny random models are near-uniform, so one seed draws the same words from all; the KL tells them apart)
    assert abs(runs["soup_mid"]["kl"] - runs["soup_b"]["kl"]) > 0.01


def test_steering_controls_on_a_model_that_reads_none_are_a_config_error(tiny_models):
    cfg = config(tiny_models, metrics=["reward"])
    cfg["models"][1]["controls"] = {"weights": [1.0, 0.0]}
    with pytest.raises(ConfigError, match=r"models\[1\].controls: weights given but nothing reads them"):
        evaluate_config(cfg)


def test_a_multi_objective_reward_judge_gives_each_run_its_objectives(tiny_models, tmp_path, monkeypatch):
    # Pareto fronts need per-objective means; without a sandbox, a reward model with several heads (or a
    # reward function naming its columns) is what supplies them. Its weights may name the columns.
    (tmp_path / "two_scores.py").write_text(
        "def score(prompts, responses):\n"
        "    return [[float(len(r.split())), -float(len(r))] for r in responses]\n"
        "score.objectives = ['words', 'shortness']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config(tiny_models, metrics=["reward", "objectives"],
                 judge={"kind": "reward", "source": "two_scores:score", "weights": {"shortness": 1.0}})
    cfg["models"] = cfg["models"][:2]
    for run in evaluate_config(cfg)["runs"]:
        assert set(run["objectives"]) == {"words", "shortness"} and run["objectives"]["words"] > 0
        assert run["reward"] == pytest.approx(run["objectives"]["shortness"])
        assert run["objectives_se"]["shortness"] == pytest.approx(run["reward_se"])  # the same column's se


def test_eval_prints_a_summary_and_warns_of_unread_verdicts():
    from pluralign.evaluate.cli import summary_lines, verdict_warnings

    results = {"judge": "LLM-judge score (smol)", "runs": [
        {"name": "base", "reward": 0.5, "reward_se": 0.1, "kl": -3e-7, "kl_se": 0.02},  # noise: not "-0.0000"
        {"name": "ric", "reward": float("nan"), "kl": None, "win_rate": {"win_rate": 50.0, "n_total": 1, "n_invalid": 3}}]}
    lines = summary_lines(results)
    assert lines[1].split() == ["base", "0.5000", "0.1000", "0.0000", "0.0200", "-"]
    assert lines[2].split() == ["ric", "-", "-", "-", "-", "50.0"]
    (note,) = verdict_warnings(results)
    assert note.startswith("ric: the judge's verdict could not be read for 3 of 4 pairs")


def test_a_judge_without_objectives_runs_with_the_default_metrics(tiny_models, monkeypatch):
    # An LLM judge scores and compares but has no objectives: the default metrics (objectives among them)
    # must still run, without per-objective means.
    import pluralign.evaluate.runner as runner

    class TextJudge:  # what LLMJudge offers the runner
        def single(self, prompts, responses):
            return np.array([float(len(r)) for r in responses])

        def pairwise(self, prompts, a, b):
            return np.full(len(a), 1.5)

    monkeypatch.setattr(runner, "build_judge", lambda spec, where: TextJudge())
    cfg = config(tiny_models)
    cfg.pop("metrics", None)
    cfg["models"] = cfg["models"][:2]
    runs = evaluate_config(cfg)["runs"]
    assert all("objectives" not in r and np.isfinite(r["reward"]) for r in runs)
    assert runs[1]["win_rate"]["win_rate"] == pytest.approx(50.0)


def test_kl_is_read_by_the_references_own_tokenizer_or_not_estimated(tiny_models, tmp_path):
    """The reference renders the prompts with its own tokenizer: a policy whose tokenizer holds extra tokens
    (as learned control tokens add) still gets the estimate; one whose vocabulary numbers the words otherwise
    gets none, with a warning, never a KL computed from ids the reference reads as other words."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pluralign.models.tiny import tiny_llama, word_tokenizer
    from pluralign.sandbox.world import CHAT_TEMPLATE, VOCABULARY

    extra = tmp_path / "extra"
    model = AutoModelForCausalLM.from_pretrained(tiny_models[0])
    tok = AutoTokenizer.from_pretrained(tiny_models[0])
    tok.add_tokens(["<c0>", "<c1>"])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(extra)
    tok.save_pretrained(extra)
    shuffled = tmp_path / "shuffled"
    other = word_tokenizer(list(reversed(VOCABULARY)), chat_template=CHAT_TEMPLATE)
    tiny_llama(len(other), hidden_size=32, num_layers=1, seed=0).save_pretrained(shuffled)
    other.save_pretrained(shuffled)
    cfg = config(tiny_models, metrics=["kl"])
    # the two added tokens' output rows are random, so some seeds sample one (an answer holding one is rightly
    # given no estimate, the ids reading otherwise in the reference): this seed's answers hold none
    cfg["generation"]["seed"] = 1
    cfg["models"] = [cfg["models"][0], {"name": "extra", "path": str(extra)}, {"name": "shuffled", "path": str(shuffled)}]
    with pytest.warns(UserWarning, match="shuffled: no KL estimate: its tokenizer and the reference's read"):
        runs = {r["name"]: r for r in evaluate_config(cfg)["runs"]}
    assert abs(runs["extra"]["kl"]) < 0.2  # the same weights on the words they share (two more in its softmax)
    assert runs["shuffled"]["kl"] is None


def test_prompts_from_a_feedback_data_file_of_any_form(tmp_path):
    """A held-out preference set is a prompts source as it is: each distinct prompt once, in order, whatever
    form the data takes (here Chatbot Arena votes, whose prompt is inside the conversations)."""
    def vote(question, winner):
        return {"winner": winner, "judge": "u1",
                "conversation_a": [{"role": "user", "content": question}, {"role": "assistant", "content": "A"}],
                "conversation_b": [{"role": "user", "content": question}, {"role": "assistant", "content": "B"}]}

    rows = [vote("first?", "model_a"), vote("second?", "model_b"), vote("first?", "model_b")]
    (tmp_path / "arena.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompts("arena.jsonl", "cfg", tmp_path) == [[{"role": "user", "content": "first?"}],
                                                           [{"role": "user", "content": "second?"}]]
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\nq1,a,b\nq2,c,d\nq1,e,f\n")
    assert load_prompts("pairs.csv", "cfg", tmp_path) == ["q1", "q2"]


def test_kl_is_that_of_the_distribution_decoded_from(tiny_models):
    """KL of a model to itself at temperature 0.1 is KL(q_0.1 ‖ p), not 0: the estimate scores each answer
    under the tempered distribution it was drawn from (it took the model's own log-probs before). One new
    token per prompt makes the exact value a sum over the vocabulary to check it against."""
    import torch

    from pluralign.data.prompts import prompt_ids
    from pluralign.decode.steer import load_policy
    from pluralign.evaluate.cli import summary_lines

    prompt = "question: tell me about cats. answer:"
    model, tok = load_policy(tiny_models[0], None)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids(tok, prompt, "auto")])).logits[0, -1].double()
    p, q = torch.log_softmax(logits, -1), torch.log_softmax(logits / 0.1, -1)
    exact = float((q.exp() * (q - p)).sum())
    cfg = {"prompts": [prompt] * 600, "models": [{"name": "base", "path": tiny_models[0]},
                                                  {"name": "cold", "path": tiny_models[0]},
                                                  {"name": "bon2", "path": tiny_models[0], "decoder": "bon",
                                                   "reward": "gold", "controls": {"n": 2}}],
           "generation": {"max_new_tokens": 1, "seed": 0}, "judge": {"kind": "gold", "population": "default"},
           "metrics": ["reward", "kl"]}
    cfg["models"][1]["controls"] = {"temperature": 0.1}
    runs = {r["name"]: r for r in evaluate_config(cfg)["runs"]}
    assert exact > 0.5 and abs(runs["cold"]["kl"] - exact) < 3 * runs["cold"]["kl_se"] < exact / 2
    assert runs["base"]["kl"] == pytest.approx(0.0, abs=1e-4)
    greedy = evaluate_config(cfg | {"models": cfg["models"][:1] + [{"name": "greedy", "path": tiny_models[0]}],
                                    "generation": {"max_new_tokens": 1, "seed": 0, "temperature": 0.0}})["runs"][1]
    assert greedy["kl"] == pytest.approx(-float(p.max()), abs=1e-4)  # a point mass on the argmax: −log p(y)
    lines = summary_lines({"runs": list(runs.values())})
    assert "≤0.1931" in lines[-1] and lines[-1].startswith("bon2")


def test_a_reward_resting_on_fewer_grades_than_responses_says_so(tiny_models, monkeypatch):
    # An LLM judge's unreadable grades are NaN; the reward is the mean of the rest, which must be told
    # (as unread pairwise verdicts are), or a judge that graded 1 answer of 12 looks like a full evaluation.
    import pluralign.evaluate.runner as runner
    from pluralign.evaluate.cli import verdict_warnings

    class PatchyJudge:
        def single(self, prompts, responses):
            return np.array([1.0 if i % 3 == 0 else float("nan") for i in range(len(responses))])

        def pairwise(self, prompts, a, b):
            return np.full(len(a), 1.5)

    monkeypatch.setattr(runner, "build_judge", lambda spec, where: PatchyJudge())
    cfg = config(tiny_models, metrics=["reward"])
    cfg["models"] = cfg["models"][:1]
    results = evaluate_config(cfg)
    (run,) = results["runs"]
    assert run["reward"] == 1.0 and run["reward_n"] == 4 and run["n"] == 12
    (note,) = verdict_warnings(results)
    assert note.startswith("base: the judge graded 4 of 12 responses")
