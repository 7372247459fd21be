"""`pluralign decode --method cd / cd_block` from the command line: the value model comes from --value-model
(a head saved by `ValueModel.save`, read over the policy); without one, exit 2 naming the flag."""

import json

import pytest
import torch

from pluralign.cli import main
from pluralign.decode.api import Controls, decode
from pluralign.decode.controlled import ValueModel
from pluralign.decode.toy import toy_lm, toy_tokenizer


@pytest.fixture(scope="module")
def model_dir(toy_lm_dir):
    return toy_lm_dir


def _decode(model_dir, tmp_path, *flags):
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\na dog\n")
    out = tmp_path / "out.jsonl"
    rc = main(["decode", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out),
               "--max-new-tokens", "5", "--temperature", "0", "--w", "3", *flags])
    return rc, out


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "cd"], "--value-model: method 'cd' needs a value model"),
    (["--method", "cd_block"], "cd_block needs a value model .*--value-model.* or a reward .*--reward"),
    (["--method", "bon", "--value-model", "head.safetensors"], "--value-model: method 'bon' reads no value model"),
])
def test_a_missing_or_unread_value_model_exits_2_naming_the_flag(model_dir, tmp_path, capsys, flags, message):
    # `--method cd` had no way to get a value model and stopped with "cd needs value_model=", a Python keyword
    rc, out = _decode(model_dir, tmp_path, *flags)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and not out.exists()
    assert __import__("re").search(message, err), err


def test_cd_reads_a_saved_value_head_over_the_policy(model_dir, tmp_path, capsys):
    tok = toy_tokenizer()
    policy = toy_lm(tok, seed=0, scale=2.0)
    value = ValueModel.new(policy)
    torch.nn.init.normal_(value.head.proj.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    head = tmp_path / "head.safetensors"
    value.save(str(head))
    rc, out = _decode(model_dir, tmp_path, "--method", "cd", "--value-model", str(head))
    assert rc == 0, capsys.readouterr().err
    want = decode("cd", policy, tok, ["the cat", "a dog"], value_model=value,
                  controls=Controls(max_new_tokens=5, temperature=0.0, w=3.0))
    assert [json.loads(x)["response"] for x in out.read_text().splitlines()] == want.texts

    other = ValueModel.new(toy_lm(tok, seed=0, hidden_size=16))  # a head for another trunk
    other.save(str(head))
    rc, out = _decode(model_dir, tmp_path, "--method", "cd", "--value-model", str(head))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and str(head) in err and "hidden size" in err
    head.write_text("not safetensors")
    rc, out = _decode(model_dir, tmp_path, "--method", "cd", "--value-model", str(head))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "not a value head saved by ValueModel.save" in err
