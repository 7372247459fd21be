"""A rewarded soup trained in one run (`objectives.conditioning: joint_soup`, pluralign.models.joint_soup):
the weight draws, the members' gradients by hand, the exactness of the saved soup (LoRA's shared A), and the
preference recipe end to end: a soup directory that steers, exact resume, bad settings exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from pluralign import conditioning
from pluralign.cli import main
from pluralign.errors import ConfigError
from pluralign.models.joint_soup import JointSoup, draw_weights

OBJ = ["informativeness", "conciseness"]


def test_draws_depend_on_seed_and_step_only():
    kw = dict(seed=3, alpha=1.0, vertex_prob=0.25)
    assert torch.equal(draw_weights(3, 7, **kw), draw_weights(3, 7, **kw))
    draws = torch.stack([draw_weights(3, s, **kw) for s in range(400)])
    assert torch.allclose(draws.sum(1), torch.ones(400)) and bool((draws >= 0).all())
    vertices = (draws == 1).any(1).float().mean().item()
    assert 0.18 < vertices < 0.32  # a quarter of the steps at a single objective
    assert not torch.equal(draws[0], draws[1])
    assert all((draw_weights(3, s, seed=0, alpha=1.0, vertex_prob=1.0) == 1).sum() == 1 for s in range(20))
    assert all((draw_weights(3, s, seed=0, alpha=1.0, vertex_prob=0.0) > 0).all() for s in range(20))


def test_member_gradients_are_their_weight_times_the_mixed_gradient():
    # W_0 = [1, 2], W_1 = [3, 4], λ = (1/4, 3/4): W = [2.5, 3.5]; x = [1, -1]: y = -1, L = y² = 1,
    # dL/dW = 2y·x = [-2, 2], so dL/dW_0 = [-0.5, 0.5] and dL/dW_1 = [-1.5, 1.5].
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
    scheme = JointSoup(["a", "b"])
    scheme.install(layer)
    members = layer.parametrizations.weight
    with torch.no_grad():
        members[0].extra.copy_(torch.tensor([[[3.0, 4.0]]]))
    with scheme.mixing(torch.tensor([0.25, 0.75])):
        y = layer(torch.tensor([1.0, -1.0]))
        (y ** 2).sum().backward()
    assert y.item() == pytest.approx(-1.0)
    assert torch.allclose(members.original.grad, torch.tensor([[-0.5, 0.5]]))
    assert torch.allclose(members[0].extra.grad, torch.tensor([[[-1.5, 1.5]]]))


def test_lora_members_share_a_so_the_saved_soup_is_the_trained_mix(tmp_path, chat_model):
    """Interpolating the members' merged weights at λ gives exactly the model trained at λ: B is held per
    objective, A is shared, so the mixed update Σ λ_k B_k A is what the soup of merged members computes."""
    from peft import LoraConfig, get_peft_model

    from pluralign.decode.steer import load_policy
    from pluralign.models.load import load_model, load_tokenizer, save_model
    from pluralign.models.soup import save_soup

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(chat_model)), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    tok = load_tokenizer(str(chat_model))
    scheme = JointSoup(OBJ)
    scheme.install(model)
    assert not any("lora_A" in n and "parametrizations" in n for n, _ in model.named_parameters())
    with torch.no_grad():  # members that differ: random B per member, a random shared A
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.3 * torch.randn_like(p))
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    lam = torch.tensor([0.3, 0.7])
    with torch.no_grad(), scheme.mixing(lam):
        trained = model(input_ids=ids).logits
    scheme.detach(model)
    dirs = scheme.save_members(model, tmp_path, lambda m, d: save_model(m, tok, d, merge_lora=True))
    soup = save_soup(dirs, OBJ, tmp_path / "model")
    served, _ = load_policy(soup)
    with torch.no_grad(), served.pluralign_conditioning.steer(served, conditioning.Condition(weights=(0.3, 0.7))):
        interpolated = served(input_ids=ids).logits
    torch.testing.assert_close(interpolated, trained, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), scheme.mixing(torch.tensor([1.0, 0.0])):
        assert not torch.allclose(served(input_ids=ids).logits, trained, atol=1e-3)  # the check can fail


def test_tied_embeddings_keep_one_set_of_members(tmp_path, chat_tokenizer):
    """A model whose LM head is its input embedding (SmolLM2, GPT-2) trained in full: the tied tensor's
    members are shared by both modules, so a step keeps them tied and the saved soup is the trained mix
    (each module with its own members trained them apart; saving kept one: logits off by ~2.7)."""
    from pluralign.decode.steer import load_policy
    from pluralign.models import tiny
    from pluralign.models.load import load_model, save_model
    from pluralign.models.soup import save_soup

    tiny.tiny_llama(len(chat_tokenizer), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                    tie_word_embeddings=True).save_pretrained(tmp_path / "base")
    model = load_model(str(tmp_path / "base"))
    scheme = JointSoup(OBJ)
    scheme.install(model)
    ids, lam = torch.tensor([[3, 5, 7, 9, 11]]), torch.tensor([0.3, 0.7])
    with scheme.mixing(lam):
        model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    with torch.no_grad(), scheme.mixing(lam):
        trained = model(input_ids=ids).logits
    scheme.detach(model)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    dirs = scheme.save_members(model, tmp_path, lambda m, d: save_model(m, chat_tokenizer, d))
    served, _ = load_policy(save_soup(dirs, OBJ, tmp_path / "model"))
    with torch.no_grad(), served.pluralign_conditioning.steer(served, conditioning.Condition(weights=(0.3, 0.7))):
        torch.testing.assert_close(served(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)


def _train(tmp_path, chat_model, rated, out, steps, extra=()):
    return main(["train", "dpo", f"model={chat_model}", f"data=[{rated}]", f"output_dir={tmp_path / out}",
                 "objectives.names=[informativeness,conciseness]", "objectives.rated_pairs=signed",
                 "objectives.conditioning=joint_soup", "gradient_checkpointing=false", "loop.batch_size=4",
                 "loop.progress=false", "loop.learning_rate=1e-2", "loop.scheduler=constant", "loop.warmup_ratio=0",
                 "loop.save_every=100", f"loop.max_steps={steps}", *extra])


def test_recipe_saves_a_soup_that_steers_and_resumes_exactly(tmp_path, chat_model, rated):
    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy
    from pluralign.models.soup import member_state

    assert _train(tmp_path, chat_model, rated, "straight", 6, [f"eval_data=[{rated}]"]) == 0
    soup_dir = tmp_path / "straight" / "model"
    state = json.loads((soup_dir / "conditioning.json").read_text())
    assert state["scheme"] == "soup" and len(state["params"]["members"]) == 2
    a, b = (member_state(tmp_path / "straight" / "members" / n) for n in OBJ)
    base = member_state(chat_model)
    trained = [k for k in a if torch.is_floating_point(a[k]) and not torch.equal(a[k], base[k])]
    assert trained and any(not torch.equal(a[k], b[k]) for k in trained)  # the members moved, apart
    model, tok = load_policy(soup_dir)
    out = decode("sample", model, tok, [[{"role": "user", "content": "what is the cat"}]] * 2,
                 controls=[Controls(weights=[1, 0], temperature=0, max_new_tokens=4),
                           Controls(weights=[0, 1], temperature=0, max_new_tokens=4)])
    assert len(out.texts) == 2
    metrics = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("eval/") for row in metrics for k in row)  # evaluated, at uniform weights

    # killed after 3 steps and run again: the same members as the uninterrupted run (draws follow the step)
    assert _train(tmp_path, chat_model, rated, "resumed", 3) == 0
    assert _train(tmp_path, chat_model, rated, "resumed", 6) == 0
    for n in OBJ:
        x, y = member_state(tmp_path / "straight" / "members" / n), member_state(tmp_path / "resumed" / "members" / n)
        for k in x:
            torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, message", [
    (["objectives.names=[informativeness]"], "at least two objectives"),
    (["objectives.names=[informativeness,conciseness]", "objectives.conditioning_params={alpha: 0}"], "alpha > 0"),
    (["objectives.names=[informativeness,conciseness]", "objectives.conditioning_params={vertex_prob: 2}"], "vertex_prob"),
    (["objectives.names=[informativeness,conciseness]", "objectives.combine=raco"], "only the weighted combiner"),
])
def test_bad_joint_soup_settings_exit_2(tmp_path, chat_model, rated, capsys, args, message):
    code = main(["train", "dpo", f"model={chat_model}", f"data=[{rated}]", f"output_dir={tmp_path / 'x'}",
                 "objectives.rated_pairs=signed", "objectives.conditioning=joint_soup", "loop.max_steps=1", *args])
    assert code == 2 and message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="at least two objectives"):
        JointSoup(["a"])


def test_train_soup_joint_is_the_joint_soup_recipe(tmp_path, chat_model, rated):
    out = tmp_path / "soup"
    assert main(["train", "soup", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}", "joint=true",
                 "objectives.names=[informativeness,conciseness]", "gradient_checkpointing=false", "loop.max_steps=2",
                 "loop.batch_size=4", "loop.progress=false"]) == 0
    state = json.loads((out / "model" / "conditioning.json").read_text())
    assert state["scheme"] == "soup" and sorted(p.name for p in (out / "members").iterdir()) == sorted(OBJ)
    assert (out / "metrics.jsonl").is_file()  # one run, in the soup's run directory (separate members have their own)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_process_joint_soup_matches_one_process(tmp_path, chat_model, rated, fsdp):
    """Both processes draw the step's weights from (seed, step), so 2 processes x batch 2 train the same
    members as one process x batch 4, on data with ties (pairs that prefer neither response on an objective):
    each objective is averaged over the whole step's pairs that have it (`StepCounts`), not a micro-batch's.
    Under FSDP2 each member's weights are gathered from the shards before the main process saves it (saving
    the shards failed, 'invalid python storage', after the last step)."""
    import shutil

    from test_ddp import ACCELERATE, launch

    from pluralign.models.soup import member_state

    if not ACCELERATE.exists() and not shutil.which("accelerate"):
        pytest.skip("accelerate launcher not installed")
    config = {"model": str(chat_model), "data": [str(rated)], "gradient_checkpointing": False,
              "objectives": {"names": OBJ, "rated_pairs": "signed", "conditioning": "joint_soup"},
              "loop": {"learning_rate": 1e-2, "max_steps": 4, "progress": False, "scheduler": "constant", "warmup_ratio": 0.0}}
    two = tmp_path / "two.yaml"
    two.write_text(json.dumps(config | {"output_dir": str(tmp_path / "two"), "loop": config["loop"] | {"batch_size": 2}}))
    launch("preference", str(two), fsdp=fsdp)
    one = tmp_path / "one.yaml"
    one.write_text(json.dumps(config | {"output_dir": str(tmp_path / "one"), "loop": config["loop"] | {"batch_size": 4}}))
    assert main(["train", "dpo", "--config", str(one)]) == 0
    for n in OBJ:
        a, b = member_state(tmp_path / "one" / "members" / n), member_state(tmp_path / "two" / "members" / n)
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheme", ["none", "joint_soup"])
def test_gradient_accumulation_equals_one_batch_on_tied_pairs(tmp_path, chat_model, rated, scheme):
    """Linear scalarisation and a joint soup: 2 micro-batches of 2 train as one batch of 4, although the
    micro-batches hold different objectives' pairs (ties): the combiner divides by the step's counts."""
    from pluralign.models.soup import member_state

    def run(out, batch, accum):
        assert main(["train", "dpo", f"model={chat_model}", f"data=[{rated}]", f"output_dir={tmp_path / out}",
                     "objectives.names=[informativeness,conciseness]", "objectives.rated_pairs=signed",
                     f"objectives.conditioning={scheme}", "gradient_checkpointing=false", f"loop.batch_size={batch}",
                     f"loop.grad_accum={accum}", "loop.max_steps=4", "loop.progress=false", "loop.learning_rate=1e-2",
                     "loop.scheduler=constant", "loop.warmup_ratio=0"]) == 0
        where = tmp_path / out
        return [member_state(where / "members" / n) for n in OBJ] if scheme == "joint_soup" else [member_state(where / "model")]

    for a, b in zip(run("one", 4, 1), run("accum", 2, 2), strict=True):
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
