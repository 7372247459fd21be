"""`pluralign.reward` as a notebook calls it: a caller's mistakes (a lone text where a list belongs, weights
that are a name or NaN, texts where features belong) are `ConfigError`s naming the argument, and scoring
leaves the caller's model in the modes it was in."""

from __future__ import annotations

import re

import pytest
import torch

from pluralign.errors import ConfigError, PluralignError
from pluralign.reward import (
    BTRewardModel,
    Ensemble,
    MultiObjectiveRewardModel,
    PALRewardModel,
    TextEncoder,
    adapt_user,
)


@pytest.fixture(scope="module")
def bt(tiny_backbone):
    from pluralign.models.load import load_model, load_tokenizer

    encoder = TextEncoder(load_model(str(tiny_backbone)), load_tokenizer(str(tiny_backbone)))
    return BTRewardModel(encoder, n_heads=2)


@pytest.mark.parametrize("prompts, responses, field", [
    ("question cat", "good ok", "prompts"),       # equal lengths: used to score each character as a pair
    (["question cat"], "good", "responses"),
])
def test_score_refuses_a_lone_text(bt, prompts, responses, field):
    for score in (bt.score, Ensemble([bt]).score):
        with pytest.raises(ConfigError, match=f"{field}: expected a list") as e:
            score(prompts, responses)
        assert e.value.field == field


@pytest.mark.parametrize("response", [None, 3, ["good"]])
def test_a_response_that_is_not_text_or_messages_is_named(bt, response):
    # None failed as "the completion is a list of chat messages" (or, under a chat template, a bare TypeError)
    with pytest.raises(PluralignError, match="a response must be text or a list of chat messages"):
        bt.score(["question cat"], [response])


def test_scoring_restores_every_sub_module_mode(bt):
    bt.train()
    bt.encoder.backbone.eval()  # a backbone held frozen in eval inside a reward model in training
    modes = [m.training for m in bt.modules()]
    bt.score(["question cat"], ["good ok"])
    assert [m.training for m in bt.modules()] == modes
    Ensemble([bt]).score(["question cat"], ["good ok"])  # its head-ensemble path used to leave it in eval
    assert [m.training for m in bt.modules()] == modes


@pytest.mark.parametrize("user, message", [
    ("helpful", "user: expected numbers"),                # used to be torch's TypeError
    ([float("nan"), 1.0], "user: values must be finite"),  # used to score NaN
    ([1.0, 0.0, 0.0], "user: 3 value"),
    ({"helpfull": 1.0}, r"user: unknown objective\(s\) \['helpfull'\]"),
])
def test_multi_objective_weights_are_checked(user, message):
    model = MultiObjectiveRewardModel(None, ["helpful", "harmless"], feature_dim=4)
    feats = torch.randn(3, 4)
    with pytest.raises(ConfigError, match=message):
        model.rewards(feats, user=user)
    both = model.rewards(feats)
    torch.testing.assert_close(model.rewards(feats, user="helpful=1,harmless=-1")[:, 0], both[:, 0] - both[:, 1])


def test_pal_user_mistakes_name_the_argument():
    model = PALRewardModel(None, feature_dim=4, dim=3, user_ids=["ann", "bob"])
    feats, prompt = torch.randn(5, 4), torch.randn(5, 4)
    with pytest.raises(ConfigError, match="user: expected a user id"):  # used to be torch's ValueError
        model.rewards(feats, prompt, user=["ann", "bob"])
    with pytest.raises(ConfigError, match="prompt: a PAL-B model") as e:  # used to be a TypeError in nn.Linear
        adapt_user(model, "cat", feats, feats.flip(0), steps=1)
    assert e.value.field == "prompt"
    with pytest.raises(ConfigError, match="chosen: expected features"):
        adapt_user(model, "cat", ["good"], ["bad"], ["question"], steps=1)
    assert model.user_ids == ["ann", "bob"]  # a refused call adds no user
    mix = adapt_user(model, "cat", feats, feats.flip(0), prompt, steps=2)
    assert model.user_ids[-1] == "cat" and torch.allclose(mix.sum(), torch.tensor(1.0))


def test_implicit_reward_scores_a_policy_in_training_without_dropout(tiny_backbone):
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward import ImplicitRewardModel

    policy = load_model(str(tiny_backbone)).train()
    seen = []
    policy.register_forward_hook(lambda m, i, o: seen.append(m.training))
    ImplicitRewardModel(policy, load_tokenizer(str(tiny_backbone)), form="sum").score(["question cat"], ["good"])
    assert seen == [False] and policy.training  # scored in eval, handed back in training
    with pytest.raises(ConfigError, match="prompts: expected a list"):
        ImplicitRewardModel(policy, load_tokenizer(str(tiny_backbone)), form="sum").score("question", "good")


@pytest.mark.parametrize("records, message", [
    ([__import__("pluralign.data", fromlist=["Rated"]).Rated("q", "a", {"helpful": 1.0})] * 4,
     "objectives: no record of <records> rates 'safe'; they hold ['helpful']"),
    ([__import__("pluralign.data", fromlist=["Pairwise"]).Pairwise("q", "a", "b", objective="helpful")] * 4,
     "objectives: no record of <records> is a pair of 'safe'; they hold ['helpful']"),
])
def test_a_multi_objective_head_with_no_data_is_refused(tiny_backbone, tmp_path, records, message):
    # the head of an objective no record covers was fitted on nothing, without a word
    from pluralign.train.recipes.reward import train_records

    config = {"model": str(tiny_backbone), "model_type": "multi", "objectives": ["helpful", "safe"],
              "output_dir": str(tmp_path / "rm"), "loop": {"max_steps": 1, "progress": False}}
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        train_records(config, records)
    assert e.value.field == "objectives"


def test_a_policy_directory_given_as_a_reward_model_says_what_it_is(tiny_backbone):
    # was "config.json: unknown reward-model type None; known: [...]", for a directory that holds a model
    from pluralign.reward import load_reward_model

    with pytest.raises(ConfigError, match=r"not a pluralign reward model: its config\.json has no 'type' "
                                          r"\(a transformers model\?"):
        load_reward_model(tiny_backbone)


def test_a_user_id_goes_only_to_rewards_that_score_per_user(tiny_backbone):
    # decoding with --user (a user-conditioned policy) or online prompt rows with a `user` handed the id to a
    # multi-objective reward model, whose `user` is objective weights: "user: expected numbers ..., got 'u1'"
    from pluralign.decode.rewards import Counted, score_groups
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.online.rewards import RewardSpec, Source

    encoder = TextEncoder(load_model(str(tiny_backbone)), load_tokenizer(str(tiny_backbone)))
    multi = MultiObjectiveRewardModel(encoder, ["helpful", "harmless"])
    prompts, responses, users = ["question cat", "question dog"], ["good ok", "bad fine"], ["u1", "u2"]
    plain = multi.score(prompts, responses)
    for source in (multi, Counted(multi), Ensemble([multi])):
        torch.testing.assert_close(score_groups(source, prompts, responses, users), plain)
    weighted = Source(RewardSpec(source="x", weights={"helpful": 1.0}), multi)(prompts, responses, users)
    torch.testing.assert_close(weighted, plain[:, 0])
    pal = PALRewardModel(encoder, user_ids=["u1", "u2"], user_init_std=3.0)  # a per-user model still gets them
    torch.testing.assert_close(score_groups(pal, prompts, responses, users)[1], pal.score(prompts[1:], responses[1:], user="u2")[0])
