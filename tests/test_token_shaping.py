"""WPO weights and LD-DPO mixing wired into the preference recipe, reachable as `wpo` / `ld_dpo`; aliases and
the `pluralign losses` listing."""

from __future__ import annotations

import math
import re

import pytest
import torch
from loop_toys import make_model_dir, write_pairs

from pluralign import losses
from pluralign.cli import main
from pluralign.data.collate import PairwiseCollator
from pluralign.data.io import read_records
from pluralign.models.load import load_model, load_tokenizer
from pluralign.models.logprobs import sequence_logps
from pluralign.train import run_preference
from pluralign.train.recipes.preference import KINDS
from pluralign.train.recipes.token_shaping import shaped

LOOP = {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 2, "log_every": 1, "progress": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("shaping")
    return {"base": make_model_dir(d / "base"), "pairs": write_pairs(d / "pairs.jsonl", 8), "dir": d}


@pytest.fixture(scope="module")
def batch_and_model(files):
    tok, model = load_tokenizer(files["base"]), load_model(files["base"])
    batch = PairwiseCollator(tok, max_length=64)(read_records(files["pairs"])[:3])
    return batch, model


def hand_rows(model, batch):
    """Per row: the completion tokens' log-probs and log Σ_v p_v² at their positions, from full logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        lp, lsq = [], []
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["completion_mask"][i, t] and batch["attention_mask"][i, t]:
                probs = torch.softmax(logits[i, t - 1], -1)
                lp.append(math.log(float(probs[batch["input_ids"][i, t]])))
                lsq.append(math.log(float((probs ** 2).sum())))
        rows.append((lp, lsq))
    return rows


def test_wpo_weights_in_training_steps_only(batch_and_model):
    batch, model = batch_and_model
    kind = shaped(KINDS["pairwise"], wpo=True, ld_alpha=None)
    info = losses.describe("dpo")
    model.train()  # a training step (the tiny model has no dropout: the same log-probs)
    out = kind.logps(model, batch, info)
    rows = hand_rows(model, batch)
    w = [math.exp(sum(a - b for a, b in zip(lp, lsq, strict=True)) / len(lp)) for lp, lsq in rows]
    b = len(w) // 2
    assert out["wpo_weights"].tolist() == pytest.approx([w[i] * w[b + i] for i in range(b)], rel=1e-4)
    inputs = kind.inputs(out, {"chosen": out["chosen"], "rejected": out["rejected"]}, batch)
    assert inputs["weights"] is out["wpo_weights"]
    with torch.no_grad():  # a group objective's first pass over a split step: weighted as the step is
        assert torch.equal(kind.logps(model, batch, info)["wpo_weights"], out["wpo_weights"])
    model.eval()  # reference passes and evaluation: no weights
    assert "wpo_weights" not in kind.logps(model, batch, info)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_ld_dpo_mixes_tokens_past_the_shorter_response(batch_and_model, alpha):
    batch, model = batch_and_model
    out = shaped(KINDS["pairwise"], wpo=False, ld_alpha=alpha).logps(model, batch, losses.describe("dpo"))
    rows = hand_rows(model, batch)
    b = len(rows) // 2
    for i in range(b):
        for side, row in (("chosen", rows[i]), ("rejected", rows[b + i])):
            shared = min(len(rows[i][0]), len(rows[b + i][0]))
            want = sum(row[0][:shared]) + alpha * sum(row[0][shared:])
            assert float(out[side][i].detach()) == pytest.approx(want, abs=1e-4)
    if alpha == 1.0:
        sums, _ = sequence_logps(model, batch)
        torch.testing.assert_close(torch.cat([out["chosen"], out["rejected"]]), sums, atol=1e-5, rtol=0)


def test_wpo_and_ld_dpo_train_by_name(files, tmp_path):
    for name, field, value in [("wpo", "wpo", True), ("ld_dpo", "ld_alpha", 0.5)]:
        result = run_preference(model=str(files["base"]), data=[str(files["pairs"])], loss=name,
                                output_dir=str(tmp_path / name), loop=LOOP)
        saved = (result.run_dir / "config.yaml").read_text()
        assert f"{field}: {str(value).lower()}" in saved and "packing: false" in saved
    # an explicit value wins over the alias's default
    assert main(["train", "ld_dpo", f"model={files['base']}", f"data={files['pairs']}", "ld_alpha=0.25",
                 f"output_dir={tmp_path / 'ld'}", "loop.max_steps=1", "loop.progress=false"]) == 0
    assert "ld_alpha: 0.25" in (tmp_path / "ld" / "config.yaml").read_text()
    assert main(["train", "kto", f"model={files['base']}", f"data={files['pairs']}", "wpo=true",
                 f"output_dir={tmp_path / 'k'}"]) == 2  # WPO shapes pairwise losses only


def test_aliases_resolve_and_every_name_is_listed(capsys):
    assert losses.get("ln_dpo") is losses.get("sigmoid_norm")
    assert losses.get("wpo") is losses.get("dpo") and losses.aliases()["wpo"].recipe == {"wpo": True}
    assert losses.get("ln_dpo:1,nll:0.5").info.kind == "pairwise"
    assert main(["losses"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed == set(losses.names()) | set(losses.aliases())
    assert main(["losses", "dpo"]) == 0 and "beta=0.1" in capsys.readouterr().out
    assert main(["losses", "dop"]) == 2 and "did you mean 'dpo'" in capsys.readouterr().err


def test_every_loss_the_readme_names_is_usable():
    """The README's list of training-time methods names losses in `code`: each must be a usable name."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    item = readme.split("**align at training time**")[1].split("\n3.")[0]
    names = [n for n in re.findall(r"`([a-z_]+)`", item)]
    assert len(names) > 20
    usable = set(losses.names()) | set(losses.aliases())
    assert [n for n in names if n not in usable] == []
