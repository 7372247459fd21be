"""Grouped training rows (online/grouped.py): each prompt once for its G completions gives every
completion token the log-prob and gradient it has in a row of its own, and a GRPO run trains to the same
weights either way; a model whose attention ignores 4D masks falls back to one row per completion."""

from __future__ import annotations

import pytest
import torch
from online_toys import PROMPTS, cat_reward, make_model_dir

from pluralign.config import from_dict
from pluralign.data.collate import pad_rows
from pluralign.data.tokenize import Encoded
from pluralign.models.load import load_model
from pluralign.models.logprobs import token_logps
from pluralign.models.tiny import tiny_gpt2, tiny_llama
from pluralign.online import grouped
from pluralign.train.recipes.online import OnlineConfig, run

PROMPT_IDS = [[5, 9, 3], [7], [4, 4, 8, 2, 6]]
COMPLETIONS = [[11, 12], [13], [14, 15, 16], [17, 18, 19, 20], [21], [22, 23]]  # G = 2 per prompt


def rows():
    return pad_rows([Encoded(PROMPT_IDS[i // 2] + c, [0] * len(PROMPT_IDS[i // 2]) + [1] * len(c))
                     for i, c in enumerate(COMPLETIONS)], 0, "right")


def test_layout_by_hand():
    b = grouped.grouped_rows(PROMPT_IDS, COMPLETIONS, 2, 0)
    # each completion is fed without its last token (only ever a target): [11, 12] → 11, [13] → nothing
    assert b["group_input_ids"].tolist() == [[5, 9, 3, 11, 0, 0], [7, 14, 15, 17, 18, 19], [4, 4, 8, 2, 6, 22]]
    assert b["group_position_ids"].tolist() == [[0, 1, 2, 3, 0, 0], [0, 1, 2, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    assert b["group_segments"].tolist() == [[0, 0, 0, 1, -1, -1], [0, 1, 1, 2, 2, 2], [0, 0, 0, 0, 0, 2]]
    assert b["group_labels"].tolist() == [t for c in COMPLETIONS for t in c]
    assert b["group_row"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2]
    # 12 is predicted by 11 (position 3); 13 and 14 by their prompt's last token (positions 2 and 0); 17 by
    # the prompt too, not by 16 (which is not fed) nor by 15
    assert b["group_source"].tolist() == [2, 3, 2, 0, 1, 2, 0, 3, 4, 5, 4, 4, 5]
    mask = grouped.attention_mask(b["group_segments"], None)[1, 0]
    assert mask[3].tolist() == [True, False, False, True, False, False]  # 17 sees the prompt and itself
    assert mask[5].tolist() == [True, False, False, True, True, True]


def test_split_layout_by_hand():
    # 2 rows per prompt with G = 2: each completion gets a row of its own, the prompt repeated
    b = grouped.grouped_rows(PROMPT_IDS, COMPLETIONS, 2, 0, rows_per_prompt=2)
    assert b["group_input_ids"].tolist() == [[5, 9, 3, 11, 0, 0], [5, 9, 3, 0, 0, 0], [7, 14, 15, 0, 0, 0],
                                             [7, 17, 18, 19, 0, 0], [4, 4, 8, 2, 6, 0], [4, 4, 8, 2, 6, 22]]
    assert b["group_segments"][3].tolist() == [0, 2, 2, 2, -1, -1]
    assert b["group_row"].tolist() == [0, 0, 1, 2, 2, 2, 3, 3, 3, 3, 4, 5, 5]
    assert b["group_source"].tolist() == [2, 3, 2, 0, 1, 2, 0, 1, 2, 3, 4, 4, 5]
    assert b["group_labels"].tolist() == [t for c in COMPLETIONS for t in c]


def test_rows_per_prompt_by_flop_count():
    # pair_cost of a tiny Llama (hidden 32, intermediate 128, 2 layers): per layer 4·32² + 3·32·128 + 2·32
    # (its norms) + 32 / 2 (the final norm's share) = 16464 weights; a pair costs 2·32 / 16464 of a position
    model = tiny_llama(50, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    assert grouped.pair_cost(model) == pytest.approx(64 / 16464)
    prompt, completions = [[1, 2]], [[3] * 9, [4] * 9, [5] * 9, [6] * 9]  # each fed 8 tokens
    # R rows of width S cost R·S·(1 + c·S): widths 34, 18, (18, 10 → 18), 10 for R = 1..4
    for c, want in ((0.0, 1), (0.01, 2), (0.1, 4)):
        costs = {k: k * w * (1 + c * w) for k, w in ((1, 34), (2, 18), (3, 18), (4, 10))}
        assert min(costs, key=costs.get) == want
        assert grouped.rows_per_prompt(prompt, completions, 4, c) == want


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "llama-eager"])
def test_grouped_logps_and_gradients_equal_separate_rows(arch, split):
    if arch == "gpt2":
        model = tiny_gpt2(32, hidden_size=32, seed=0)
    else:
        model = tiny_llama(32, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        if arch == "llama-eager":
            model.set_attn_implementation("eager")
    model.eval()  # no dropout (tiny GPT-2 has some): both layouts see the same function
    assert grouped.works(model)
    batch = rows() | grouped.grouped_rows(PROMPT_IDS, COMPLETIONS, 2, 0, rows_per_prompt=split)
    weights = torch.linspace(-1, 1, batch["input_ids"].numel()).view_as(batch["input_ids"])
    results = []
    for fn in (lambda: token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]),
               lambda: grouped.token_logps_grouped(model, batch)):
        model.zero_grad()
        logps = fn()
        (logps * weights).sum().backward()
        results.append((logps.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ga), (b, gb) = results
    assert (a != 0).sum() == sum(map(len, COMPLETIONS))
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for x, y in zip(gb, ga, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_attention_that_ignores_4d_masks_falls_back():
    model = tiny_llama(32, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    model.config._attn_implementation = "flash_attention_2"  # not applied: only read by the check
    assert not grouped.works(model)


def test_windowed_attention_is_not_grouped_even_where_the_short_check_passes():
    # The caller's 4D mask replaces the model's sliding window: with a window of 16, the check's rows (≤ 11
    # tokens) agreed, and a 12-token prompt with a 14-token completion got other log-probs than its own row.
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=16)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    prompt, completions = [list(range(4, 16))], [list(range(16, 30)), [30, 31, 5]]
    batch = pad_rows([Encoded(prompt[0] + c, [0] * 12 + [1] * len(c)) for c in completions], 0, "right") \
        | grouped.grouped_rows(prompt, completions, 2, 0)
    with torch.no_grad():
        apart = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        assert (grouped.token_logps_grouped(model, batch) - apart).abs().max() > 1e-3  # what grouping would give
    assert not grouped.works(model)


def test_alibi_models_that_cannot_take_a_4d_mask_fall_back():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=32, hidden_size=32, n_layer=1, n_head=2))
    assert not grouped.works(model)  # it raised ValueError from BLOOM's ALiBi


def test_grpo_trains_to_the_same_weights_grouped_or_not(tmp_path):
    base = make_model_dir(tmp_path / "base")
    out = {}
    for shared in (True, False):
        cfg = from_dict(OnlineConfig, {"model": str(base), "output_dir": str(tmp_path / str(shared)), "group_size": 4,
                                       "max_new_tokens": 6, "shared_prompt": shared, "algorithm": "grpo",
                                       "loop": {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 3,
                                                "progress": False, "scheduler": "constant"}})
        out[shared] = load_model(run(cfg, prompts=PROMPTS, reward_objects=[cat_reward]).model_dir).state_dict()
    assert any(not torch.equal(v, load_model(str(base)).state_dict()[k]) for k, v in out[True].items())
    for k, v in out[True].items():  # Adam moves each weight by ~lr = 1e-2 a step: float rounding stays far below
        torch.testing.assert_close(v, out[False][k], atol=1e-4, rtol=0)


@pytest.mark.parametrize("shared", [True, False])
def test_completions_without_gradient_are_not_forwarded_and_the_update_is_the_same(tmp_path, monkeypatch, shared):
    """Under a pass/fail reward many GRPO groups are flat: their advantages are 0 and so is their gradient.
    Those rows are left out of the training forward (grouped or not); the weights equal those of a run that
    trains every row, since the token-mean denominator still counts them."""
    from online_toys import any_cat_reward, metric_rows

    from pluralign.online.methods import PolicyGradient

    base = make_model_dir(tmp_path / "base")

    def train(name):
        cfg = from_dict(OnlineConfig, {"model": str(base), "output_dir": str(tmp_path / name / "out"), "group_size": 4,
                                       "max_new_tokens": 6, "shared_prompt": shared, "algorithm": "grpo",
                                       "loop": {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 3,
                                                "progress": False, "scheduler": "constant", "log_every": 1}})
        return load_model(run(cfg, prompts=PROMPTS, reward_objects=[any_cat_reward]).model_dir).state_dict()

    skipped = train("skipped")
    trained = [r["trained_fraction"] for r in metric_rows(tmp_path / "skipped") if "trained_fraction" in r]
    assert min(trained) < 1 and max(trained) > 0  # some rows skipped, some trained
    monkeypatch.setattr(PolicyGradient, "_live_rows", lambda self, adv, mask: None)
    full = train("full")
    assert any(not torch.equal(v, load_model(str(base)).state_dict()[k]) for k, v in skipped.items())
    for k, v in skipped.items():
        torch.testing.assert_close(v, full[k], atol=1e-5, rtol=0)


def test_rows_are_skipped_only_where_their_gradient_is_zero():
    from pluralign.online.methods import PolicyGradient

    def method(**kw):
        args = dict(tokenizer=None, estimator="grpo", estimator_params={}, loss="clip", loss_params={},
                    aggregation="token_mean", max_len=4, beta=0.0, kl_estimator="k3", kl_in="loss",
                    kl_bias_correction=False, reference=None)
        return PolicyGradient(**(args | kw))

    adv = torch.tensor([0.0, 1.0, 0.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert method()._live_rows(adv, mask).tolist() == [False, True, False, False]
    assert method()._live_rows(torch.zeros(4), mask).tolist() == [True, False, False, False]  # one row keeps the graph
    assert method()._live_rows(torch.ones(4), torch.ones(4, 2)) is None  # all live: nothing to skip
    assert method(beta=0.1)._live_rows(adv, mask) is None  # the KL term has gradient where the advantage is 0
    assert method(beta=0.1, kl_in="reward")._live_rows(adv, mask) is not None
    assert method(reuse=True)._live_rows(adv, mask) is None  # later epochs' ratios are not 1
