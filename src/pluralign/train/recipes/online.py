"""Online alignment recipes: generate from the policy being trained → score → learn, through the one loop.

`pluralign train grpo|gspo|rloo|reinforce_pp|ppo|online_dpo|mnpo_rounds|rsft`: the name picks the algorithm and its
defaults (specs/online.md §8); every part can be overridden (`advantage`, `policy_loss`, `aggregation`,
`beta`, `kl_in`, …). GRPO (Shao et al. 2024) with Dr. GRPO / DAPO options, GSPO (Zheng et al. 2025), RLOO
(Ahmadian et al. 2024), REINFORCE++ (Hu 2025), PPO with a value head and GAE (Schulman et al. 2017;
PPO-max options of Zheng et al. 2023), online DPO (Xiong et al. 2023), MNPO rounds (Wu et al. 2026) and RAFT
(Dong et al. 2023).
`loop.batch_size` counts prompts; each brings `group_size` completions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from pluralign import losses
from pluralign.config import option
from pluralign.data.prompts import rendering_check
from pluralign.decode.kv import context_window, window_problem
from pluralign.errors import ConfigError
from pluralign.models.heads import hidden_size
from pluralign.models.load import is_adapter_dir
from pluralign.models.lora import is_peft_model
from pluralign.online.advantages import ESTIMATORS
from pluralign.online.engine import Engine, Reference
from pluralign.online.methods import PolicyGradient, PolicyWithValue
from pluralign.online.opponents import Opponents
from pluralign.online.policy_losses import LOSSES as POLICY_LOSSES
from pluralign.online.rewards import RewardSpec, Source
from pluralign.online.rollout import Prompt, RolloutConfig, make_backend, read_prompts
from pluralign.online.selected import BestOfN, Pairs
from pluralign.runs import atomic_open
from pluralign.seeding import seeded
from pluralign.train.loop import LoopConfig, holding, train
from pluralign.train.parallel import launched_with_fsdp, process_state
from pluralign.train.recipes.common import (
    PolicyTrainingConfig,
    RecipeResult,
    load_frozen,
    load_policy,
    save_policy,
)

# Defaults implied by each algorithm's name (specs/online.md §8): estimator, policy loss, aggregation, KL.
PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"advantage": "grpo", "policy_loss": "clip", "aggregation": "token_mean", "beta": 0.0, "kl_estimator": "k3", "kl_in": "loss"},
    "gspo": {"advantage": "grpo", "policy_loss": "gspo", "aggregation": "seq_mean_token_mean", "beta": 0.0, "kl_estimator": "k3", "kl_in": "loss"},
    "rloo": {"advantage": "rloo", "policy_loss": "clip", "aggregation": "token_mean", "beta": 0.05, "kl_estimator": "k1", "kl_in": "reward"},
    "reinforce_pp": {"advantage": "reinforce_pp", "policy_loss": "clip", "aggregation": "token_mean", "beta": 0.01, "kl_estimator": "k1", "kl_in": "reward"},
    "ppo": {"advantage": "gae", "policy_loss": "clip", "aggregation": "token_mean", "beta": 0.05, "kl_estimator": "k1", "kl_in": "reward"},
    "online_dpo": {"preference_loss": "dpo", "ref_policy": "round_start"},
    "mnpo_rounds": {"preference_loss": "mnpo", "ref_policy": "initial"},
    "rsft": {},
}
GROUP_METHODS = {"grpo", "gspo", "rloo", "online_dpo", "mnpo_rounds"}
PAIR_METHODS = ("online_dpo", "mnpo_rounds")
# Settings of one family that another would drop without a word (online DPO's β is preference_params.beta,
# where TRL's OnlineDPOConfig calls it beta).
POLICY_GRADIENT_FIELDS = ("advantage", "advantage_params", "policy_loss", "loss_params", "aggregation", "beta",
                          "kl_estimator", "kl_in")
PAIR_FIELDS = ("preference_loss", "preference_params", "ref_policy")
# Settings with a default that only some algorithms read, and which: set away from it for another, each was
# dropped without a word (mask_truncated trained RSFT's and online DPO's truncated completions, GRPO ignored
# rsft_select). Online DPO drops tied groups itself, dynamic_sampling's rule, so it accepts that one.
POLICY_GRADIENT_METHODS = tuple(name for name in PRESETS if name not in (*PAIR_METHODS, "rsft"))
READ_BY: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("mask_truncated", "kl_bias_correction", "vf_coef", "value_clip", "shared_prompt"),
                    POLICY_GRADIENT_METHODS),
    "dynamic_sampling": (*POLICY_GRADIENT_METHODS, *PAIR_METHODS), "rsft_select": ("rsft",),
    "rsft_top_fraction": ("rsft",), "round_steps": PAIR_METHODS, "mnpo_history": ("mnpo_rounds",)}


@dataclass
class OnlineConfig(PolicyTrainingConfig):
    algorithm: Literal["grpo", "gspo", "rloo", "reinforce_pp", "ppo", "online_dpo", "mnpo_rounds", "rsft"] = option("grpo", help="The algorithm; fixes the defaults of the fields left unset (null).")
    group_size: int = option(4, help="Completions sampled per prompt (GRPO's G, RLOO's k, online DPO's N, RAFT's K).")
    max_new_tokens: int = option(32, help="Longest completion in tokens (L_max).")
    temperature: float = option(1.0, help="Sampling temperature (log-probs are always the model's own, at temperature 1).")
    top_k: int = option(0, help="Top-k sampling (0: off).")
    top_p: float = option(1.0, help="Nucleus sampling (1: off).")
    rollout: RolloutConfig = option(default_factory=RolloutConfig, help="Rollout backend: native (default) or vllm, and its settings.")
    rewards: list[RewardSpec] = option(default_factory=lambda: [RewardSpec()], help="Reward sources, summed with their weights (see RewardSpec).")
    reward_combine: Literal["sum", "normalize_then_sum"] = option("sum", help="sum: weighted sum of raw rewards; normalize_then_sum: per-source z-scores within the group first (GDPO).")
    reward_norm: Literal["none", "running", "running_scale"] = option("none", help="PPO-max: normalise rewards with running statistics ((R-mean)/std, or R/std).")
    reward_clip: float | None = option(None, help="Clip (normalised) rewards to ±this value.")
    calibrate_samples: int = option(0, help="InfAlign: >0 ranks each reward among this many reference samples per prompt and uses exp(t·rank).")
    calibrate_t: float = option(1.0, help="InfAlign transform temperature t in exp(t·C).")
    overlong_buffer: int = option(0, help="DAPO soft overlong punishment over the last N tokens before max_new_tokens (0: off).")
    overlong_penalty: float = option(1.0, help="DAPO overlong penalty at max_new_tokens.")
    mask_truncated: bool = option(False, help="DAPO overlong filtering: completions cut at max_new_tokens get no loss. Policy-gradient algorithms only.")
    dynamic_sampling: bool = option(False, help="DAPO: groups whose rewards do not vary get no loss (re-drawn when redraw_tries > 0). Not rsft, which trains each group's best.")
    redraw_tries: int = option(0, help="DAPO dynamic sampling: up to this many re-draws per micro-batch replace flat groups by groups of other prompts (drawn from the prompt set, seeded) until every slot varies; logged as redraw_tries and filled_fraction.")
    ppo_epochs: int = option(1, help="Passes over each rollout (PPO's K epochs): the sampling policy's log-probs and values stay fixed, so later passes have ratios != 1 and clipping acts. Policy-gradient algorithms only.")
    num_minibatches: int = option(1, help="Each pass splits every micro-batch's completions into this many minibatches, one optimizer step each (reshuffled per pass). A rollout serves ppo_epochs x num_minibatches optimizer steps.")
    advantage: str | None = option(None, help="Advantage estimator: grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, gae.")
    advantage_params: dict[str, Any] = option(default_factory=dict, help="Estimator settings, e.g. {scale: batch, eps: 1e-4} (grpo), {gamma: 1, lam: 0.95} (gae).")
    policy_loss: str | None = option(None, help="Policy loss: clip (token ratio, PPO/GRPO) or gspo (sequence ratio).")
    loss_params: dict[str, Any] = option(default_factory=dict, help="Policy-loss settings: eps_low, eps_high (clip-higher), dual_clip, delta; gspo: length_normalize.")
    aggregation: str | None = option(None, help="token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm (Dr. GRPO); denominators over the whole step.")
    beta: float | None = option(None, help="KL coefficient toward the reference (0: no KL; the reference is then made only for calibrate_samples).")
    kl_estimator: Literal["k1", "k2", "k3"] | None = option(None, help="Per-token KL estimator (Schulman 2020).")
    kl_in: Literal["loss", "reward"] | None = option(None, help="Where the KL enters: the loss (GRPO family) or the token rewards (PPO, RLOO, REINFORCE++).")
    kl_bias_correction: bool = option(False, help="KL in the loss: weight it by the token ratio (DeepSeek-V3.2).")
    ref_model: str | None = option(None, help="Reference model (default: the initial policy; fresh LoRA adapters: its base with adapters off; a saved adapter given as model: that adapter, frozen).")
    vf_coef: float = option(0.1, help="PPO: weight of the value loss.")
    value_clip: float | None = option(0.2, help="PPO: value clipping range (null: off).")
    preference_loss: str | None = option(None, help="online_dpo, mnpo_rounds: the pairwise loss (dpo, ipo, …; mnpo_rounds: mnpo).")
    preference_params: dict[str, Any] = option(default_factory=dict, help="online_dpo, mnpo_rounds: loss settings, e.g. {beta: 0.1}; mnpo: {eta: 0.0075, ratio: 0.3333}.")
    ref_policy: Literal["round_start", "initial"] | None = option(None, help="online_dpo, mnpo_rounds: reference = the policy at the start of each round (online_dpo's default), or the initial policy (mnpo_rounds').")
    round_steps: int = option(1, help="online_dpo, mnpo_rounds: optimizer steps per round.")
    mnpo_history: int = option(2, help="mnpo_rounds: past round-start policies kept as opponents, newest first (MNPO's max_history_t); each round's start adds one.")
    rsft_select: Literal["local", "top"] = option("local", help="rsft: keep the best sample per prompt, or the top fraction of the step's samples (all its micro-batches and processes).")
    rsft_top_fraction: float = option(0.25, help="rsft with select=top: fraction kept.")
    shared_prompt: bool = option(True, help="Policy-gradient methods: one training row per prompt holding its prompt once and all its completions (each sees the prompt and itself), instead of one padded row per completion; falls back to the latter when the model's attention ignores 4D masks.")
    packing: bool = option(False, help="Online batches are padded (packing is not supported here).")
    output_dir: str = option("runs/online", help="Run directory: config.yaml, metrics.jsonl, checkpoints/, and the trained model in model/.")
    loop: LoopConfig = option(default_factory=lambda: LoopConfig(learning_rate=1e-6, batch_size=4, warmup_ratio=0.0), help="Training loop settings (batch_size counts prompts).")

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps each rollout serves (ppo_epochs x num_minibatches)."""
        return self.ppo_epochs * self.num_minibatches

    def resolved(self) -> OnlineConfig:
        """A copy with the algorithm's defaults in the fields left unset."""
        preset = PRESETS[self.algorithm]
        return replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})


def check(config: OnlineConfig, have_objects: bool = False) -> None:
    if config.algorithm not in PRESETS:
        raise ConfigError(f"unknown online algorithm {config.algorithm!r}; valid: {', '.join(PRESETS)}")
    if config.algorithm in GROUP_METHODS and config.group_size < 2:
        raise ConfigError(f"{config.algorithm} compares the samples of a prompt: group_size must be >= 2, got {config.group_size}")
    if config.group_size < 1 or config.max_new_tokens < 1:
        raise ConfigError("group_size and max_new_tokens must be >= 1")
    if config.max_new_tokens >= config.max_length:  # else every prompt would be refused, each on its own line
        raise ConfigError(f"max_new_tokens {config.max_new_tokens} leaves no room for a prompt within max_length "
                          f"{config.max_length} (prompt + completion tokens); raise max_length")
    if config.packing:
        raise ConfigError("packing is not supported by the online recipes; set packing=false")
    # Settings every policy recipe inherits that the online ones do not apply: said, not silently dropped
    unread = [name for name, given in (("eval_data", bool(config.eval_data)),
                                       ("max_prompt_length", config.max_prompt_length is not None),
                                       ("truncation", config.truncation != "keep_end"),
                                       ("skip_invalid", config.skip_invalid)) if given]
    if unread:
        raise ConfigError(f"the online recipes do not apply {', '.join(unread)} (prompts are generated from whole, bad "
                          "prompt rows are errors, and nothing is evaluated during training); remove them")
    if not finite_above(config.temperature, 0):  # greedy rollouts: one completion per prompt, not the policy's samples
        raise ConfigError(f"'temperature' must be a finite number > 0: online training learns from the policy's samples, "
                          f"got {config.temperature}")
    if not 0 < config.top_p <= 1 or config.top_k < 0:
        raise ConfigError(f"'top_p' must be in (0, 1] and 'top_k' >= 0, got {config.top_p}, {config.top_k}")
    if config.beta is not None and not finite_above(config.beta, 0, inclusive=True):
        raise ConfigError(f"'beta' (the KL coefficient) must be a finite number >= 0, got {config.beta}")
    # Out of range, each was silently off or wrong: reward_clip -1 clamped every reward to -1 (no signal), 0 and a
    # negative overlong_buffer turned the setting off, round_steps 0 became 1
    ranges = (("reward_clip", config.reward_clip is None or config.reward_clip > 0, "> 0 (or null: off)"),
              ("overlong_buffer", 0 <= config.overlong_buffer <= config.max_new_tokens, "in [0, max_new_tokens]"),
              ("calibrate_samples", config.calibrate_samples >= 0, ">= 0"),
              ("round_steps", config.round_steps >= 1, ">= 1"), ("mnpo_history", config.mnpo_history >= 1, ">= 1"),
              ("rsft_top_fraction", 0 < config.rsft_top_fraction <= 1, "in (0, 1]"),
              # NaN or inf reached the loss ("non-finite loss at step 1") after the model had loaded
              ("vf_coef", finite_above(config.vf_coef, 0, inclusive=True), "a finite number >= 0"),
              ("value_clip", config.value_clip is None or finite_above(config.value_clip, 0), "a finite number > 0 (or null: off)"),
              ("overlong_penalty", finite_above(config.overlong_penalty, 0, inclusive=True), "a finite number >= 0"),
              ("calibrate_t", finite_above(config.calibrate_t, -math.inf), "a finite number"))
    for name, ok, rule in ranges:
        if not ok:
            raise ConfigError(f"'{name}' must be {rule}, got {getattr(config, name)}")
    unused = (POLICY_GRADIENT_FIELDS if config.algorithm in PAIR_METHODS else
              POLICY_GRADIENT_FIELDS + PAIR_FIELDS if config.algorithm == "rsft" else PAIR_FIELDS)
    unused = [name for name in unused if getattr(config, name) not in (None, {})] + changed_defaults(config)
    if unused:
        hint = "; its DPO beta is preference_params.beta" if config.algorithm in PAIR_METHODS and "beta" in unused else ""
        raise ConfigError(f"{config.algorithm} does not use {', '.join(unused)}{hint}")
    resolved = config.resolved()  # the policy-gradient parts: a setting a part does not take stops here
    if resolved.advantage is not None:
        ESTIMATORS.check_params(resolved.advantage, config.advantage_params, reserved=("group_size", "kl_penalty", "values"))
    if resolved.policy_loss is not None:
        POLICY_LOSSES.check_params(resolved.policy_loss, config.loss_params)
        # and their values, on one token of negative advantage (dual_clip <= 1 stopped the first step, after
        # the model had loaded)
        one = torch.ones(1, 1)
        POLICY_LOSSES.get(resolved.policy_loss)(0 * one, 0 * one, -one, one, **(config.loss_params or {}))
    if resolved.ref_policy == "round_start" and config.ref_model:  # it was the reference of every round, or overwritten
        raise ConfigError(f"{config.algorithm}: ref_model is a fixed reference, but ref_policy round_start takes the policy "
                          "at the start of each round as the reference; set ref_policy=initial or remove ref_model")
    if (config.ref_model and config.algorithm not in PAIR_METHODS and not (resolved.beta or 0) > 0
            and config.calibrate_samples == 0):  # it was loaded, and never read
        raise ConfigError(f"ref_model is read only for the KL (beta > 0) or InfAlign's calibration (calibrate_samples "
                          f"> 0), neither of which this {config.algorithm} run uses; remove it")
    if not config.rewards:
        raise ConfigError("set at least one reward source in 'rewards'")
    for i, spec in enumerate(config.rewards):  # NaN surfaced at the first step as a "non-finite loss"
        w = spec.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise ConfigError(f"rewards[{i}].weight must be a finite number, got {w!r}", field=f"rewards[{i}].weight")
    k = config.updates_per_rollout
    if config.ppo_epochs < 1 or config.num_minibatches < 1:
        raise ConfigError(f"ppo_epochs and num_minibatches must be >= 1, got {config.ppo_epochs}, {config.num_minibatches}")
    if k > 1 and config.algorithm in (*PAIR_METHODS, "rsft"):
        raise ConfigError(f"ppo_epochs / num_minibatches reuse a rollout for policy-gradient updates; {config.algorithm} takes one step per rollout")
    if k > 1 and (config.loop.save_every % k or config.loop.max_steps % k):
        raise ConfigError(f"with {k} updates per rollout (ppo_epochs x num_minibatches), loop.save_every and loop.max_steps "
                          f"must be multiples of {k} (checkpoints fall on rollout boundaries), got {config.loop.save_every}, {config.loop.max_steps}")
    if config.num_minibatches > config.loop.batch_size * config.group_size:
        raise ConfigError(f"num_minibatches {config.num_minibatches} exceeds the completions of a micro-batch "
                          f"({config.loop.batch_size} x {config.group_size})")
    if config.redraw_tries < 0 or (config.redraw_tries > 0 and not config.dynamic_sampling):
        raise ConfigError("redraw_tries (>= 0) re-draws the groups dynamic_sampling drops: set dynamic_sampling=true")
    for i, spec in enumerate([] if have_objects else config.rewards):
        src = spec.source
        if src not in ("gold", "judge") and ":" not in src and not Path(src).is_dir():
            raise ConfigError(f"rewards[{i}].source: {src!r} is not 'gold', 'judge', 'module:function' or an existing "
                              "reward-model directory")


def finite_above(x: Any, low: float, inclusive: bool = False) -> bool:
    """x is a finite number (not a bool) above `low` (or equal to it, `inclusive`); NaN and inf are not."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return False
    return x >= low if inclusive else x > low


def changed_defaults(config: OnlineConfig) -> list[str]:
    """The settings (`READ_BY`) a config sets away from their defaults that its algorithm does not read."""
    defaults = {f.name: f.default for f in fields(OnlineConfig)}
    return [name for name, readers in READ_BY.items()
            if config.algorithm not in readers and getattr(config, name) != defaults[name]]


def run(config: OnlineConfig, *, prompts: list[Any] | None = None, reward_objects: list[Any] | None = None) -> RecipeResult:
    """Train with `config.algorithm`. Python API: `prompts` (texts or chat messages) instead of `data`
    files, `reward_objects` (callables or objects with `.score`) instead of the sources' loading."""
    check(config, have_objects=reward_objects is not None)
    if launched_with_fsdp():
        # The rollout runs the policy itself, outside the sharded wrapper whose forward gathers the root's
        # shards (embeddings, head): every process failed at the first step with a traceback.
        raise ConfigError("online recipes do not run under FSDP yet (the rollout cannot gather the sharded "
                          "policy); launch with DDP: accelerate launch --multi_gpu --num_processes N")
    config = config.resolved()
    given = prompts
    if given is not None:
        prompts = [Prompt(i, p) for i, p in enumerate(given)]
        config = replace(config, data=config.data or ["<prompts given in Python>"])
    if reward_objects is not None and len(reward_objects) != len(config.rewards):
        raise ConfigError(f"{len(reward_objects)} reward objects for {len(config.rewards)} entries of 'rewards'")
    sources = [Source(spec, reward_objects[i] if reward_objects else None, f"rewards[{i}].source")
               for i, spec in enumerate(config.rewards)]
    for source in sources:
        source.check_reachable()
    tokenizer, policy, _ = load_policy(config)
    # Checked once the tokenizer tells which prompts it cannot render or are too long: named by file and line
    # (a prompt past a learned position table stopped the first rollout with an IndexError traceback)
    check_prompt = rendering_check(tokenizer, config.chat_template, prompt_room(config, policy))
    if given is None:
        prompts = read_prompts(config.data, check_prompt)
    else:
        check_prompt(prompts, "<prompts given in Python>", [p.index + 1 for p in prompts])
    method, reference, trainee = build_method(config, tokenizer, policy)
    engine = Engine(policy=policy, tokenizer=tokenizer, prompts=prompts, sources=sources,
                    source_weights=[s.weight for s in config.rewards], method=method, group_size=config.group_size,
                    seed=config.loop.seed, sampling=sampling(config), combine_mode=config.reward_combine,
                    reward_norm=config.reward_norm, reward_clip=config.reward_clip,
                    overlong_buffer=config.overlong_buffer, overlong_factor=config.overlong_penalty,
                    calibrate_samples=config.calibrate_samples, calibrate_t=config.calibrate_t,
                    reference=reference, trainee=trainee, ppo_epochs=config.ppo_epochs,
                    num_minibatches=config.num_minibatches, redraw_tries=config.redraw_tries,
                    backend=make_backend(config.rollout, policy, tokenizer, config.loop.seed),
                    precision=config.loop.mixed_precision)
    out = Path(config.output_dir)
    with holding(out):  # until the model is saved: no second run starts on the directory after the loop
        result = train(trainee, prompts, engine.collate, method.step, config.loop, out, stateful=engine.stateful(),
                       run_config=config, prepare_step=engine.prepare, finish_step=engine.finish, steps_per_batch=engine.updates_per_rollout)
        saved = save_policy(policy, tokenizer, config, out, result)
        if isinstance(trainee, PolicyWithValue) and process_state().is_main_process:
            with atomic_open(out / "value_head.pt") as f:  # a kill mid-write leaves the previous file, not half of one
                torch.save(trainee.value_head.state_dict(), f)
    return saved


def prompt_room(config: OnlineConfig, policy: Any) -> Callable[[int], str | None]:
    """Why a prompt of n tokens leaves no room for max_new_tokens within the model's context window or the
    config's max_length (online prompts are generated from whole, not truncated), or None."""
    window = context_window(policy)
    # vLLM refuses a longer prompt, and ends a completion early without a word, past the length it planned for
    planned = config.rollout.max_model_len if config.rollout.backend == "vllm" else None
    limits = [(name, limit) for name, limit in (("max_length", config.max_length), ("rollout.max_model_len", planned))
              if limit is not None]

    def room(n: int) -> str | None:
        if why := window_problem(n, config.max_new_tokens, window):
            return why
        for name, limit in limits:
            if n + config.max_new_tokens > limit:
                return (f"{n} prompt tokens + max_new_tokens {config.max_new_tokens} exceed {name} {limit}; online "
                        f"prompts are not truncated: raise {name} or shorten the prompt")
        return None

    return room


def sampling(config: OnlineConfig) -> dict:
    return {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_k": config.top_k,
            "top_p": config.top_p, "chat_template": config.chat_template}


def build_method(config: OnlineConfig, tokenizer: Any, policy: Any) -> tuple[Any, Reference | None, Any]:
    """(method, reference, the module the loop trains) for a resolved config."""
    ref_model = load_frozen(config.ref_model, config, False, "ref_model") if config.ref_model else None
    # InfAlign's calibration ranks rewards among the reference's samples: without KL (beta 0) too, so the reference
    # is made for it (it ranked them among the current policy's own samples, a drifting baseline)
    calibrating = config.calibrate_samples > 0
    needed = config.ref_policy == "initial" if config.algorithm in PAIR_METHODS else (config.beta or 0) > 0 or calibrating
    if ref_model is None and needed and is_peft_model(policy) and is_adapter_dir(config.model):
        # The policy continues a saved adapter (e.g. an SFT run's): with adapters off it is the model before that
        # adapter, not the initial policy (KL -0.24 at step 0 on SmolLM2), so the initial policy is loaded frozen.
        ref_model = load_frozen(config.model, config, False, "model")
    if config.algorithm in PAIR_METHODS:
        reference = Reference(policy, model=ref_model, mode=config.ref_policy, round_steps=config.round_steps)
        history = None
        if config.algorithm == "mnpo_rounds":
            if "history_chosen_logps" not in losses.describe(config.preference_loss).inputs:
                raise ConfigError(f"mnpo_rounds trains against past policies; loss '{config.preference_loss}' does not read them (use mnpo)")
            history = Opponents(policy, round_steps=config.round_steps, keep=config.mnpo_history)
        return Pairs(tokenizer=tokenizer, loss=config.preference_loss, loss_params=config.preference_params,
                     reference=reference, history=history), reference, policy
    reference = Reference(policy, model=ref_model) if (config.beta or 0) > 0 or calibrating else None
    if config.algorithm == "rsft":
        return BestOfN(tokenizer=tokenizer, select=config.rsft_select, fraction=config.rsft_top_fraction), reference, policy
    trainee = policy
    if config.advantage == "gae":
        base = policy.get_base_model() if is_peft_model(policy) else policy
        with seeded(config.loop.seed):  # the value head's initial weights: from the run's seed
            trainee = PolicyWithValue(policy, hidden_size(base)).to(next(policy.parameters()).device)
    method = PolicyGradient(
        tokenizer=tokenizer, estimator=config.advantage, estimator_params=config.advantage_params,
        loss=config.policy_loss, loss_params=config.loss_params, aggregation=config.aggregation,
        max_len=config.max_new_tokens, beta=config.beta, kl_estimator=config.kl_estimator, kl_in=config.kl_in,
        kl_bias_correction=config.kl_bias_correction, reference=reference, vf_coef=config.vf_coef,
        value_clip=config.value_clip, mask_truncated=config.mask_truncated, dynamic_sampling=config.dynamic_sampling,
        reuse=config.updates_per_rollout > 1,
        shared_prompt=config.shared_prompt)
    return method, reference, trainee


