"""pluralign.personal: group-fair objectives (hand-computed), person vectors (hooks), PAS steering, and
user-conditioned DPO / a new user's vector through the preference recipe on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from loop_toys import make_model_dir

from pluralign.data.collate import PairwiseCollator
from pluralign.data.records import Pairwise
from pluralign.errors import ConfigError
from pluralign.models.load import load_model, load_tokenizer
from pluralign.models.logprobs import sequence_logps
from pluralign.personal import group_fair, steering
from pluralign.personal.conditioned import load_vectors, resolve
from pluralign.personal.vectors import PersonVectors, offset, per_row, site
from pluralign.train import run_preference
from pluralign.train.recipes.preference import from_kwargs

LOSSES = torch.tensor([1.0, 2.0, 3.0, 6.0])
GROUPS = torch.tensor([0, 0, 1, 1])


# ---------------------------------------------------------------- group-fair objectives


def test_group_objectives_hand_computed():
    # group means 1.5 and 4.5
    assert group_fair.get("average")(LOSSES, GROUPS).mean().item() == pytest.approx(3.0)
    assert group_fair.get("worst_group")(LOSSES, GROUPS).mean().item() == pytest.approx(4.5)
    # τ = 1: log((e^1.5 + e^4.5) / 2) = 4.5 + log((1 + e^-3) / 2)
    soft = group_fair.worst_group(LOSSES, GROUPS, temperature=1.0).mean().item()
    assert soft == pytest.approx(3.855440, abs=1e-6)
    # s0 = (e^-1 + e^-2)/2 = 0.2516074, s1 = (e^-3 + e^-6)/2 = 0.0261329; −(log s0 + log s1)/2
    assert group_fair.nash(LOSSES, GROUPS).mean().item() == pytest.approx(2.512223, abs=1e-5)


def test_group_objectives_invariants():
    equal = torch.tensor([0.7, 0.7, 0.7])
    g = torch.tensor([0, 1, 1])
    for name in ("worst_group", "nash", "balanced"):
        assert group_fair.get(name)(equal, g).mean().item() == pytest.approx(0.7, abs=1e-6)
    assert group_fair.worst_group(equal, g, temperature=0.3).mean().item() == pytest.approx(0.7, abs=1e-6)
    # examples without a group (−1) take no part; a batch without any group is an error
    assert group_fair.worst_group(torch.tensor([9.0, 1.0, 2.0]), torch.tensor([-1, 0, 1])).mean().item() == 2.0
    with pytest.raises(ConfigError, match="no"):
        group_fair.nash(LOSSES, torch.full((4,), -1))
    with pytest.raises(ConfigError, match="unknown group objective"):
        group_fair.get("rawls")


def test_group_objective_gradients():
    x = LOSSES.clone().requires_grad_(True)
    group_fair.worst_group(x, GROUPS).mean().backward()
    assert x.grad.tolist() == pytest.approx([0, 0, 0.5, 0.5])  # only the worst group moves
    x = LOSSES.clone().requires_grad_(True)
    group_fair.nash(x, GROUPS).mean().backward()
    # d/dℓ_i = (1/G)·exp(−ℓ_i) / (n_g·s_g)
    s = [(math.exp(-1) + math.exp(-2)) / 2, (math.exp(-3) + math.exp(-6)) / 2]
    want = [0.5 * math.exp(-v) / (2 * s[g]) for v, g in zip([1, 2, 3, 6], [0, 0, 1, 1], strict=True)]
    assert x.grad.tolist() == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- person vectors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp("personal") / "base")
    return d, load_model(d).eval(), load_tokenizer(d)


def _batch(tok, records, packing=False):
    return PairwiseCollator(tok, max_length=32, packing=packing)(records)


PAIRS = [Pairwise("tell me about the cat", "the cat is very good", "the cat is bad", user="alice", group="a"),
         Pairwise("tell me about the dog", "the dog is good", "the dog is very bad", user="bob", group="b")]


def test_an_offset_meets_the_hidden_states_on_their_device():
    """A person-vector model's scheme loads its vectors where the model is when attached (the CPU), and
    `pluralign serve` / `load_policy(device=...)` move the model to the GPU after: every request with a user
    or group added a CPU vector to CUDA hidden states ('expected all tensors on the same device'). The
    meta device stands in for the GPU here."""
    layer = torch.nn.Linear(4, 4, device="meta")
    with offset(layer, torch.ones(4)):
        out = layer(torch.zeros(2, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 4)


def test_vectors_zero_is_the_model_and_offset_equals_shifted_embeddings(tiny):
    _, model, tok = tiny
    batch = _batch(tok, PAIRS)
    plain = sequence_logps(model, batch)[0]
    table = PersonVectors(["alice", "bob"], 16)
    assert torch.equal(table.vectors(table.lookup(["alice", None, "zed"])), torch.zeros(3, 16))
    with offset(site(model, "embeddings"), torch.zeros(16)):
        assert torch.equal(sequence_logps(model, batch)[0], plain)
    v = torch.randn(16)
    with offset(site(model, "embeddings"), v):
        hooked = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    embeds = model.get_input_embeddings()(batch["input_ids"]) + v
    manual = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(hooked, manual, atol=1e-5)


def test_vectors_packed_rows_match_padded(tiny):
    _, model, tok = tiny
    vecs = torch.randn(4, 16)  # one per sequence: 2 chosen, 2 rejected
    out = []
    for packing in (False, True):
        batch = _batch(tok, PAIRS, packing)
        with offset(site(model, "embeddings"), per_row(vecs, batch)):
            out.append(sequence_logps(model, batch)[0])
    assert torch.allclose(out[0], out[1], atol=1e-4)


def test_frozen_rows_get_no_gradient():
    table = PersonVectors(["old", "new"], 3, scale=10.0, frozen=["old"])
    table.vectors(torch.tensor([1, 2])).sum().backward()
    assert table.raw.grad[0].abs().sum() == 0 and table.raw.grad[1].tolist() == [10.0] * 3


@pytest.mark.parametrize("basis", [None, torch.eye(3)[:2]], ids=["free", "mixture"])
def test_frozen_rows_stay_under_weight_decay(basis):
    """AdamW's weight decay shrinks every entry of a parameter it is given, with or without gradient: the known
    users' rows of a new user's run shrank though the docs (and the policy) call them frozen."""
    old = torch.tensor([[1.0, 2.0, 3.0]])
    table = PersonVectors(["old", "new"], 3, scale=2.0, frozen=["old"], basis=basis, values={"old": old[0]})
    params = [p for p in table.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.5)
    for _ in range(3):
        table.vectors(torch.tensor([1, 2])).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(table.get("old"), old[0] * 2.0) and torch.equal(table.stored()[0], old[0])
    assert not torch.equal(table.get("new"), torch.zeros(3))  # the new row did train


def test_a_new_users_mixture_trains_under_bf16_autocast():
    """The mixture softmax(mix) @ basis ran in bf16 under the loop's autocast (mixed_precision=bf16) and was
    scattered into the fp32 table: masked_scatter's dtype error stopped every new_users_only run with
    new_user_prior=mixture at its first step. The table is computed in fp32 whatever the autocast."""
    table = PersonVectors(["old", "new"], 3, frozen=["old"], basis=torch.tensor([[1.0, 2.0, 3.0], [0.1, 0.2, 0.3]]),
                          values={"old": torch.tensor([1.0, 2.0, 3.0])})
    exact = table.vectors(torch.tensor([1, 2]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = table.vectors(torch.tensor([1, 2]))
    assert got.dtype == torch.float32 and torch.equal(got, exact)
    got.sum().backward()
    assert table.mix.grad is not None and table.mix.grad.abs().sum() > 0


# ---------------------------------------------------------------- PAS steering


def test_pas_direction_alpha_zero_and_search(tiny):
    _, model, tok = tiny
    chosen = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    rejected = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    u, sigma = steering.direction(chosen, rejected)
    # mean diff (2, −1) / √5; projections [1, 3, −1, −1]·… → std of (2/√5·[1,3,0,0] − 1/√5·[0,0,1,1])
    assert u.tolist() == pytest.approx([2 / math.sqrt(5), -1 / math.sqrt(5)])
    proj = torch.tensor([2.0, 6.0, -1.0, -1.0]) / math.sqrt(5)
    assert sigma == pytest.approx(float(proj.std()))
    records = PAIRS * 3
    fitted = steering.fit(model, tok, records, layer=0, alphas=(0.0, 1.0, 4.0), max_kl=None)
    assert fitted.direction.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert fitted.alpha == max(fitted.search, key=lambda a: fitted.search[a][0])
    assert fitted.search[0.0][1] == 0.0 and fitted.search[4.0][1] > fitted.search[1.0][1] > 0
    assert fitted.search[0.0][0] == pytest.approx(math.log(0.5))  # unsteered: no implicit reward
    # implicit agreement by hand: margins (1 − (−1)) = 2 and (0 − 1) = −1 → mean(log σ(2), log σ(−1))
    steered, plain = (torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])), (torch.full((2,), -2.0),) * 2
    want = (math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert steering.implicit_agreement(steered, plain) == pytest.approx(want)
    # a KL budget below every non-zero step's cost leaves the model unsteered
    budget = steering.fit(model, tok, records, layer=0, alphas=(0.0, 1.0, 4.0), max_kl=1e-9)
    assert budget.alpha == 0.0 and budget.search == fitted.search
    # token KL by hand on one pair: Σ p_s (log p_s − log p) over the response tokens' predictions
    one = steering.Steering(0, fitted.direction, fitted.sigma, alpha=4.0)
    batch = _batch(tok, PAIRS[:1])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
        with one.apply(model):
            ls = torch.log_softmax(model(input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"]).logits, -1)
    kl, n = 0.0, 0
    for row in range(2):
        for t in range(batch["input_ids"].shape[1] - 1):
            if batch["completion_mask"][row, t + 1]:
                kl += float((ls[row, t].exp() * (ls[row, t] - lp[row, t])).sum())
                n += 1
    assert steering.token_kl(model, tok, PAIRS[:1], one) == pytest.approx(kl / n, rel=1e-4)
    batch = _batch(tok, PAIRS)
    fitted.alpha = 0.0
    plain = sequence_logps(model, batch)[0]
    with fitted.apply(model):
        assert torch.equal(sequence_logps(model, batch)[0], plain)
    with pytest.raises(ConfigError, match="at least 2"):
        steering.fit(model, tok, PAIRS[:1])


# ---------------------------------------------------------------- the recipe


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _opposed(n=16):
    """alice (group a) prefers 'good' answers, bob (group b) the 'bad' ones: no shared model pleases both."""
    rows = []
    for i in range(n):
        noun = ["cat", "dog", "sun", "rain"][i % 4]
        good, bad = f"the {noun} is good", f"the {noun} is bad"
        user = ["alice", "bob"][i % 2]
        c, r = (good, bad) if user == "alice" else (bad, good)
        rows.append({"prompt": f"tell me about the {noun}", "chosen": c, "rejected": r, "user": user,
                     "group": {"alice": "a", "bob": "b"}[user]})
    return rows


LOOP = {"learning_rate": 1e-2, "batch_size": 4, "num_epochs": 4, "progress": False, "log_every": 1}


def _margin(model, tok, vector=None):
    """logp(good) − logp(bad) on 'tell me about the cat' under `vector`."""
    batch = _batch(tok, [Pairwise("tell me about the cat", "the cat is good", "the cat is bad")])
    with torch.no_grad(), offset(site(model, "embeddings"), vector):
        s = sequence_logps(model, batch)[0]
    return float(s[0] - s[1])


def test_user_conditioned_dpo_then_a_new_user_with_the_policy_frozen(tiny, tmp_path):
    base, _, tok = tiny
    data = _write(tmp_path / "pairs.jsonl", _opposed())
    cfg = from_kwargs(model=str(base), data=[data], loss="dpo", loss_params={"beta": 0.5},
                      output_dir=str(tmp_path / "cond"), loop=LOOP,
                      personal={"condition_on": "user", "vector_scale": 10.0, "population_dropout": 0.0})
    out = run_preference(cfg).model_dir
    vectors, index = load_vectors(out)
    assert index["on"] == "user" and vectors.names == ["alice", "bob"] and index["user_groups"]["bob"] == "b"
    model = load_model(out).eval()
    assert _margin(model, tok, vectors.get("alice")) > _margin(model, tok, vectors.get("bob")) + 0.1

    # a new user who likes 'good': only carol's vector is learned, the policy and alice/bob stay as they were
    carol = [r | {"user": "carol", "group": None} for r in _opposed(8) if r["user"] == "alice"]
    new_cfg = from_kwargs(model=str(out), data=[_write(tmp_path / "carol.jsonl", carol)], loss="dpo",
                          loss_params={"beta": 0.5}, output_dir=str(tmp_path / "carol"),
                          loop=LOOP | {"learning_rate": 5e-2, "num_epochs": 10, "weight_decay": 0.1},
                          personal={"condition_on": "user", "new_users_only": True})
    new_dir = run_preference(new_cfg).model_dir
    after, _ = load_vectors(new_dir)
    assert after.names == ["alice", "bob", "carol"]
    assert torch.equal(after.get("alice"), vectors.get("alice"))
    # PAL-style prior: carol's vector is a convex combination of alice's and bob's
    a, b, c = vectors.get("alice"), vectors.get("bob"), after.get("carol")
    lam = float(((c - b) @ (a - b)) / ((a - b) @ (a - b)))
    assert 0 <= lam <= 1 and torch.allclose(c, b + lam * (a - b), atol=1e-5)
    for k, v in load_model(new_dir).state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert _margin(model, tok, after.get("carol")) > _margin(model, tok, None)
    with pytest.warns(UserWarning, match="population"):
        assert resolve(index, user="zed") is None
    assert resolve(index, user="bob") == "bob"


def test_a_kill_while_the_vectors_are_written_leaves_no_model_without_them(tiny, tmp_path, monkeypatch):
    """The person vectors are part of the model directory: written before it is renamed into place, so a
    run stopped while they are written leaves no model/ that would load as an unconditioned policy."""
    from pluralign.personal import conditioned

    base, _, _ = tiny

    def dying(model_dir, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(conditioned, "save_vectors", dying)
    cfg = from_kwargs(model=str(base), data=[_write(tmp_path / "pairs.jsonl", _opposed(8))], loss="dpo",
                      output_dir=str(tmp_path / "cond"), loop=LOOP | {"num_epochs": 1},
                      personal={"condition_on": "user"})
    with pytest.raises(KeyboardInterrupt):
        run_preference(cfg)
    assert not (tmp_path / "cond" / "model").exists()
    assert not [p.name for p in (tmp_path / "cond").iterdir() if p.name.startswith(".model")]


def test_group_objective_and_bad_configs(tiny, tmp_path):
    base, _, _ = tiny
    data = _write(tmp_path / "pairs.jsonl", _opposed())
    one_group = _write(tmp_path / "one.jsonl", [r | {"group": "a"} for r in _opposed()])
    no_users = _write(tmp_path / "anon.jsonl", [{k: v for k, v in r.items() if k not in ("user", "group")}
                                                  for r in _opposed()])
    common = dict(model=str(base), loss="dpo", loop=LOOP | {"num_epochs": 1})
    run_preference(from_kwargs(data=[data], output_dir=str(tmp_path / "nash"), **common,
                               personal={"group_objective": "nash"}))
    for data_file, personal, message in [
        (one_group, {"group_objective": "worst_group"}, "at least 2 groups"),
        (no_users, {"condition_on": "user"}, "no training record has a 'user'"),
        (data, {"condition_on": "user", "new_users_only": True}, "no person vectors"),
        (data, {"group_objective": "maxmin"}, "unknown group objective"),
    ]:
        with pytest.raises(ConfigError, match=message):
            run_preference(from_kwargs(data=[data_file], output_dir=str(tmp_path / "bad"), **common,
                                       personal=personal))


# ---------------------------------------------------------------- per-request control at decode time


def test_decode_applies_each_requests_user_vector_and_falls_back_with_a_warning(tiny, tmp_path):
    import shutil

    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy

    base, model, tok = tiny
    d = tmp_path / "steered"
    shutil.copytree(base, d)
    v = torch.randn(16, generator=torch.Generator().manual_seed(0)) * 3
    steering.save(d, {"alice": steering.Steering(0, v / v.norm(), float(v.norm()), alpha=1.0)})
    policy, tokenizer = load_policy(d)
    prompts = ["tell me about the cat"] * 3
    controls = [Controls(n=1, max_new_tokens=6, seed=0, user=u) for u in ("alice", None, "bob")]
    with pytest.warns(UserWarning, match="user 'bob' has no vector"):
        texts = decode("sample", policy, tokenizer, prompts, controls=controls).texts
    alone = [decode("sample", model, tok, prompts[:1], controls=controls[1]).texts[0]]
    with offset(site(model, 0), v):
        alone.append(decode("sample", model, tok, prompts[:1], controls=controls[0]).texts[0])
    assert texts[1] == texts[2] == alone[0]  # no vector and an unknown user: the population model
    assert texts[0] == alone[1] != alone[0]
    # " alice " is alice, as a training file's " alice" is read
    assert decode("sample", policy, tokenizer, prompts[:1], controls=controls[0].replace(user=" alice ")).texts == [texts[0]]


def test_janus_persona_message_trains_and_conditions_requests(tiny, tmp_path):
    from pluralign import conditioning

    base, _, tok = tiny
    data = _write(tmp_path / "pairs.jsonl", _opposed())
    statements = {"a": "yes good", "bob": "no bad"}  # a group's statement and a user's
    cfg = from_kwargs(model=str(base), data=[data], loss="dpo", loss_params={"beta": 0.5},
                      output_dir=str(tmp_path / "janus"), loop=LOOP,
                      objectives={"conditioning": "persona_message", "conditioning_params": {"statements": statements}})
    out = run_preference(cfg).model_dir
    scheme = conditioning.load(out)
    assert scheme.name == "persona_message"
    c = scheme.condition(user="alice", group="a")
    assert scheme.prompt("tell me about the cat", c) == "yes good tell me about the cat"
    assert scheme.prompt([{"role": "user", "content": "hi"}], scheme.condition(user="bob")) == [
        {"role": "system", "content": "no bad"}, {"role": "user", "content": "hi"}]
    # alice trained under her group's statement: named alone she gets it again (she got the population model)
    assert scheme.prompt("tell me about the cat", scheme.condition(user="alice")) == "yes good tell me about the cat"
    with pytest.warns(UserWarning, match="user 'zed' has no statement"):
        assert scheme.prompt("x", scheme.condition(user="zed")) == "x"  # no statement: the population
    model = load_model(out).eval()

    def margin(prefix):
        batch = _batch(tok, [Pairwise(prefix + "tell me about the cat", "the cat is good", "the cat is bad")])
        with torch.no_grad():
            s = sequence_logps(model, batch)[0]
        return float(s[0] - s[1])

    assert margin("yes good ") > margin("no bad ") + 0.1
    with pytest.raises(ConfigError, match="statements"):
        conditioning.get("persona_message")


def test_janus_statements_keyed_by_numeric_user_ids(tiny, tmp_path, capsys):
    """YAML reads `{7: ...}` with an integer key, while the data's user 7 is the id "7": the run died in the
    key check with a TypeError traceback ('int' object is not iterable)."""
    from pluralign import conditioning
    from pluralign.cli import main

    base, _, _ = tiny
    data = _write(tmp_path / "pairs.jsonl", [r | {"user": 7} if r["user"] == "alice" else r for r in _opposed(8)])
    argv = ["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={tmp_path / 'o'}", "loop.progress=false",
            "loop.batch_size=4", "loop.max_steps=1", "objectives.conditioning=persona_message"]
    assert main(argv + ["objectives.conditioning_params={statements: {7: yes good, ' bob ': no bad}}"]) == 0
    scheme = conditioning.load(tmp_path / "o" / "model")
    assert [scheme.prompt("x", scheme.condition(user=u)) for u in (7, "7", "bob")] == ["yes good x"] * 2 + ["no bad x"]
    capsys.readouterr()
    assert main(argv + ["objectives.conditioning_params={statements: {1.5: yes good}}", "output_dir=" + str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "statements" in err and "Traceback" not in err


@pytest.mark.parametrize("setting, message", [
    ("personal.condition_on=user", "no training record has a 'user'"),
    ("personal.group_objective=worst_group", "anon.jsonl:1: field 'group': missing; group_objective 'worst_group'"),
    ("personal.new_users_only=true", "needs personal.condition_on"),
])
def test_cli_bad_personal_input_exits_2(tiny, tmp_path, capsys, setting, message):
    from pluralign.cli import main

    base, _, _ = tiny
    anon = _write(tmp_path / "anon.jsonl", [{k: v for k, v in r.items() if k not in ("user", "group")}
                                            for r in _opposed(8)])
    argv = ["train", "dpo", f"model={base}", f"data=[{anon}]", f"output_dir={tmp_path / 'o'}", setting,
            "loop.progress=false", "loop.batch_size=4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------- NextQuill token weights


def test_history_weights_hand_computed():
    from pluralign.personal.token_weights import histories, history_weights

    delta = torch.tensor([[0.0, math.log(3.0), 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert history_weights(delta, mask)[0].tolist() == pytest.approx([0.5, 1.5, 0.0])  # 2·softmax(0, log 3)
    assert history_weights(delta, mask, temperature=1e6)[0].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-5)
    recs = [Pairwise("p", f"c{i}", "r", user=u) for i, u in enumerate(["a", "b", "a", "a", None])]
    assert histories(recs, 1) == ["c2", None, "c3", "c0", None]
    assert histories(recs, 5)[0] == "c2 c3"
    # chat responses: the history is what the user chose, not the Python repr of its message list
    chat = [Pairwise([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": f"c{i}"}],
                     [{"role": "assistant", "content": "r"}], user="a") for i in range(3)]
    assert histories(chat, 2) == ["c1 c2", "c2 c0", "c0 c1"]


def test_weighted_logps_match_manual_sums_padded_and_packed(tiny):
    from pluralign.models.logprobs import predicted_mask, token_logps
    from pluralign.personal.token_weights import weighted_pairwise_logps
    from pluralign.train.recipes.preference_kinds import _pairwise_logps

    _, model, tok = tiny
    padded = _batch(tok, PAIRS)
    n_tok = predicted_mask(padded["input_ids"], padded["attention_mask"], padded["completion_mask"]).sum(-1)
    ones = {"token_weights_chosen": torch.ones(2, 8), "token_weights_rejected": torch.ones(2, 8)}
    plain = _pairwise_logps(model, padded, None)
    got = weighted_pairwise_logps(model, padded | ones, None)
    assert torch.allclose(got["chosen"], plain["chosen"], atol=1e-5) and torch.equal(got["chosen_lengths"], n_tok[:2])
    w = {"token_weights_chosen": torch.rand(2, 8), "token_weights_rejected": torch.rand(2, 8)}
    per = token_logps(model, padded["input_ids"], padded["attention_mask"], padded["completion_mask"])
    mask = predicted_mask(padded["input_ids"], padded["attention_mask"], padded["completion_mask"])
    rows = torch.cat([w["token_weights_chosen"], w["token_weights_rejected"]])
    manual = torch.stack([(per[i][mask[i]] * rows[i, :int(mask[i].sum())]).sum() for i in range(4)])
    a = weighted_pairwise_logps(model, padded | w, None)
    b = weighted_pairwise_logps(model, _batch(tok, PAIRS, packing=True) | w, None)
    for out in (a, b):
        assert torch.allclose(torch.cat([out["chosen"], out["rejected"]]), manual, atol=1e-4)


def test_token_weighted_dpo_runs_in_the_recipe(tiny, tmp_path):
    base, _, _ = tiny
    data = _write(tmp_path / "pairs.jsonl", _opposed())
    cfg = from_kwargs(model=str(base), data=[data], loss="dpo", output_dir=str(tmp_path / "nq"),
                      loop=LOOP | {"num_epochs": 1}, personal={"token_weighting": True, "history_size": 2})
    before = load_model(base).state_dict()
    out = run_preference(cfg).model_dir
    assert any(not torch.equal(v, before[k]) for k, v in load_model(out).state_dict().items())
    with pytest.raises(ConfigError, match="token_weighting"):
        run_preference(from_kwargs(model=str(base), data=[data], loss="kto", output_dir=str(tmp_path / "k"),
                                   loop=LOOP, personal={"token_weighting": True}))


def test_a_new_user_joins_a_per_group_table_as_a_mixture_of_groups(tiny, tmp_path):
    base, _, tok = tiny
    data = _write(tmp_path / "pairs.jsonl", _opposed())
    out = run_preference(from_kwargs(model=str(base), data=[data], loss="dpo", loss_params={"beta": 0.5},
                                     output_dir=str(tmp_path / "g"), loop=LOOP,
                                     personal={"condition_on": "group", "vector_scale": 10.0})).model_dir
    carol = [r | {"user": "carol", "group": None} for r in _opposed(8) if r["user"] == "alice"]
    new_dir = run_preference(from_kwargs(
        model=str(out), data=[_write(tmp_path / "carol.jsonl", carol)], loss="dpo", output_dir=str(tmp_path / "c"),
        loop=LOOP | {"learning_rate": 5e-2}, personal={"condition_on": "user", "new_users_only": True})).model_dir
    before, _ = load_vectors(out)
    after, index = load_vectors(new_dir)
    assert after.names == ["a", "b", "carol"] and index["on"] == "group"
    assert torch.equal(after.get("a"), before.get("a")) and torch.equal(after.get("b"), before.get("b"))
    assert resolve(index, user="carol") == "carol" and resolve(index, user="x", group="b") == "b"
    with pytest.warns(UserWarning, match="group 'z' has no vector"):
        assert resolve(index, group="z") is None
