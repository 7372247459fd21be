"""Learned control tokens (pluralign.conditioning.control_tokens): the embedding substitution checked by
hand, then per-user tokens trained through the preference recipe on a tiny chat model with the policy
frozen, saved, re-attached and applied per request at decode time."""

from __future__ import annotations

import pytest
import torch
from loop_toys import WORDS
from test_personal import _opposed, _write

from pluralign import conditioning
from pluralign.conditioning.control_tokens import ControlTable, token_names
from pluralign.data.collate import PairwiseCollator
from pluralign.data.records import Pairwise
from pluralign.errors import ConfigError
from pluralign.models.load import load_model, load_tokenizer, save_model
from pluralign.models.logprobs import sequence_logps
from pluralign.models.tiny import tiny_llama, word_tokenizer
from pluralign.train import run_preference
from pluralign.train.recipes.preference import from_kwargs

TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    tok = word_tokenizer(WORDS + ["system", "user", "assistant"], chat_template=TEMPLATE)
    d = tmp_path_factory.mktemp("ctl") / "base"
    save_model(tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok, d)
    return d


def test_table_substitutes_only_its_ids():
    emb = torch.nn.Embedding(10, 3)
    table = ControlTable([7, 9], torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 10)
    ids = torch.tensor([[1, 7, 2, 9]])
    out = table.substitute(ids, emb(ids))
    assert out[0, 1].tolist() == [1, 2, 3] and out[0, 3].tolist() == [4, 5, 6]
    assert torch.equal(out[0, [0, 2]], emb(ids)[0, [0, 2]])
    out.sum().backward()  # gradient reaches the table: each row was used once
    assert table.embeddings.grad.tolist() == [[1.0] * 3, [1.0] * 3]


def test_bad_params():
    with pytest.raises(ConfigError, match="'by'"):
        conditioning.get("control_tokens", by="team")
    with pytest.raises(ConfigError, match="positive integer"):
        conditioning.get("control_tokens", tokens=0)
    with pytest.raises(ConfigError, match="no training record"):
        conditioning.get("control_tokens").fit([Pairwise("p", "a", "b")])


def _margin(model, tok, prompt):
    batch = PairwiseCollator(tok, max_length=48)([Pairwise(prompt, "the cat is good", "the cat is bad")])
    with torch.no_grad():
        s = sequence_logps(model, batch)[0]
    return float(s[0] - s[1])


def test_per_user_tokens_train_with_the_policy_frozen_and_steer_requests(chat_model_dir, tmp_path):
    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy

    rows = [r | {"prompt": [{"role": "user", "content": r["prompt"]}]} for r in _opposed()]
    cfg = from_kwargs(model=str(chat_model_dir), data=[_write(tmp_path / "pairs.jsonl", rows)], loss="dpo",
                      loss_params={"beta": 0.5}, output_dir=str(tmp_path / "ctl"),
                      loop={"learning_rate": 0.2, "batch_size": 4, "num_epochs": 8, "progress": False, "log_every": 1},
                      objectives={"conditioning": "control_tokens", "conditioning_params": {"by": "user", "tokens": 2}})
    out = run_preference(cfg).model_dir
    scheme = conditioning.load(out)
    assert scheme.name == "control_tokens" and scheme.params["names"] == ["alice", "bob"]
    assert scheme.params["user_groups"] == {"alice": "a", "bob": "b"}
    tok = load_tokenizer(out)
    assert tok.convert_tokens_to_ids(token_names("bob", 2)) == scheme.params["token_ids"][2:]

    # the policy is frozen: every weight of the saved model equals the base's (the new rows stay at the mean)
    base, plain = load_model(chat_model_dir), load_model(out)
    n = base.get_input_embeddings().weight.shape[0]
    for k, v in base.state_dict().items():
        w = plain.state_dict()[k]
        assert torch.equal(w[:n] if w.shape != v.shape else w, v), k

    policy, tok = load_policy(out)
    scheme = conditioning.attached(policy).bind(tok)
    chat = [{"role": "user", "content": "tell me about the cat"}]
    shown = {u: scheme.prompt(chat, scheme.condition(user=u)) for u in ("alice", "bob")}
    assert shown["alice"][0] == {"role": "system", "content": "<|ctl:alice:0|><|ctl:alice:1|>"}
    text = tok.apply_chat_template(shown["alice"], tokenize=False, add_generation_prompt=True)
    assert tok(text)["input_ids"].count(scheme.params["token_ids"][0]) == 1  # one token, not split
    # a user reaches their group's tokens when only the group is named; an unknown user gets the base
    with pytest.warns(UserWarning, match="group 'b' has no control tokens"):
        assert scheme.prompt(chat, scheme.condition(group="b")) == chat  # tokens are per user here
    assert scheme.prompt(chat, scheme.condition(user="alice", group="a")) == shown["alice"]
    with pytest.warns(UserWarning, match="user 'zed' has no control tokens"):
        assert scheme.prompt(chat, scheme.condition(user="zed")) == chat

    # both users' tokens start at the same row (the mean embedding), so their margins start equal; a one-layer
    # frozen toy gives a prefix little room, hence the small threshold
    assert _margin(policy, tok, shown["alice"]) > _margin(policy, tok, shown["bob"]) + 0.02
    # the learned table is what the model sees: without the hook the tokens have their initial rows
    assert _margin(plain, tok, shown["alice"]) != pytest.approx(_margin(policy, tok, shown["alice"]))

    controls = [Controls(n=1, max_new_tokens=5, seed=0, user=u) for u in ("alice", "bob")]
    texts = decode("sample", policy, tok, [chat, chat], controls=controls).texts
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_tokens_trained_with_lora_adapters_saved_unmerged_reload(chat_model_dir, tmp_path):
    # the adapter directory holds the grown embeddings (peft saves them whole); loading put them into the
    # base model's smaller table: a size-mismatch traceback from every decode of the saved model
    from pluralign.decode.steer import load_policy

    rows = [r | {"prompt": [{"role": "user", "content": r["prompt"]}]} for r in _opposed()]
    common = dict(model=str(chat_model_dir), data=[_write(tmp_path / "pairs.jsonl", rows)], loss="dpo",
                  use_lora=True, lora={"r": 2}, loop={"learning_rate": 0.05, "batch_size": 4, "max_steps": 2, "progress": False},
                  objectives={"conditioning": "control_tokens",
                              "conditioning_params": {"by": "user", "tokens": 2, "freeze_policy": False}})
    merged = run_preference(from_kwargs(output_dir=str(tmp_path / "merged"), **common)).model_dir
    adapter = run_preference(from_kwargs(output_dir=str(tmp_path / "adapter"), merge_lora=False, **common)).model_dir
    assert (adapter / "adapter_config.json").is_file()
    (a, tok), (b, _) = load_policy(adapter), load_policy(merged)
    scheme = conditioning.attached(a).bind(tok)
    chat = scheme.prompt([{"role": "user", "content": "tell me about the cat"}], scheme.condition(user="alice"))
    ids = torch.tensor([tok(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))["input_ids"]])
    with torch.no_grad():
        la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
    assert torch.allclose(la, lb, atol=1e-5)
    n = load_model(chat_model_dir).get_input_embeddings().weight.shape[0]
    assert bool((la[..., n:] == torch.finfo(la.dtype).min).all())  # control tokens are never answered with


def test_placements(chat_model_dir):
    tok = load_tokenizer(chat_model_dir)
    start = conditioning.get("control_tokens", by="group", tokens=1, placement="start", names=["a"]).bind(tok)
    at_a = start.condition(group="a")
    assert start.prompt("tell me", at_a) == "<|ctl:a:0|> tell me"
    turn = "user : tell me </s> assistant :"  # already in the template's user-turn format
    assert start.prompt(turn, at_a) == "user : <|ctl:a:0|> tell me </s> assistant :"
    assert start.prompt([{"role": "system", "content": "hi"}, {"role": "user", "content": "tell me"}], at_a) == [
        {"role": "system", "content": "hi"}, {"role": "user", "content": "<|ctl:a:0|> tell me"}]
    statement = conditioning.get("control_tokens", by="group", tokens=1, names=["a"]).bind(tok)
    assert statement.prompt(turn, at_a) == "user : tell me <|ctl:a:0|> </s> assistant :"
    with pytest.raises(ConfigError, match="placement"):
        conditioning.get("control_tokens", placement="end")
