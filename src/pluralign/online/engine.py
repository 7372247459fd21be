"""The rollout phase in front of the one training loop (`pluralign.train.loop.train`).

The loop's dataset is the prompt set. Before each optimizer step the loop calls `Engine.prepare` with the
prompt indices of this process's micro-batches; the engine generates each micro-batch's completions from
the current policy (seeded by run seed, step and prompt indices, so resume and any process count draw the
same samples), scores them, and lets the method build its batch. The denominators of the step's
objective are summed over micro-batches and processes, so token-mean and sequence-mean losses are exact
whatever the accumulation. `Engine.collate` hands the loop the prepared batch of a micro-batch.

A rollout can serve several optimizer steps (PPO epochs x minibatches, Schulman et al. 2017): the loop keeps
the same prompts for `updates_per_rollout` steps (`steps_per_batch`), the engine generates at the first and
hands each step its minibatch; the sampling policy's log-probs stay with the rollout. Checkpoints fall on
rollout boundaries, so a resumed run regenerates the rollout it stopped in from the same weights and seeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

from pluralign.decode.sampler import eval_mode
from pluralign.errors import ConfigError, PluralignError
from pluralign.models.logprobs import token_logps
from pluralign.models.lora import is_peft_model
from pluralign.online import grouped
from pluralign.online.rewards import (
    RunningMoments,
    Source,
    calibrated,
    combine,
    overlong_penalty,
    scaled_by,
    varied_groups,
)
from pluralign.online.rollout import NativeBackend, Prompt, Rollout, derived_seed, generate, generate_by_stop
from pluralign.train.parallel import all_processes_rows, all_processes_sum
from pluralign.train.reference import Snapshot, adapters_disabled, frozen_copy, loop_autocast


class Reference:
    """Reference log-probs: a separate model (`ref_model`), the policy's base with adapters off (LoRA), a
    frozen copy of the initial policy, or (online DPO) the policy at the start of each round of
    `round_steps` steps — the policy itself when a round is one step."""

    def __init__(self, policy: Any, *, model: Any = None, mode: str = "initial", round_steps: int = 1):
        if mode not in ("initial", "round_start"):
            raise ConfigError(f"ref_policy must be 'initial' or 'round_start', got {mode!r}")
        self.policy, self.mode, self.round_steps = policy, mode, max(1, round_steps)
        self.model = model
        self.snapshot: Snapshot | None = None  # the policy at the round's start (rounds of several steps)
        if self.moves:
            self.snapshot = Snapshot(policy)
        elif model is None and mode == "initial" and not is_peft_model(policy):
            self.model = frozen_copy(policy)

    def refresh(self, step: int) -> None:
        if self.moves and step % self.round_steps == 0:
            self.snapshot.take()

    @contextmanager
    def acting(self) -> Iterator[Any]:
        """The module that is the reference for now: its log-probs, and its samples (InfAlign's calibration)."""
        if self.snapshot is not None:  # the policy at the round's start
            with self.snapshot.model() as m:
                yield m
        elif self.mode == "round_start":  # one-step rounds: the policy before this step's update
            yield self.policy
        elif self.model is not None:
            yield self.model
        else:  # LoRA: the base, adapters off
            with adapters_disabled(self.policy):
                yield self.policy

    def token_logps(self, batch: dict) -> torch.Tensor:
        with self.acting() as m, torch.no_grad(), eval_mode(m):
            if "group_input_ids" in batch and grouped.works(m):  # the policy's layout: the same rounding
                return grouped.token_logps_grouped(m, batch)
            return token_logps(m, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])

    # Checkpointed with the run when the reference moves (rounds of several steps).
    def state_dict(self) -> dict:
        return self.snapshot.state_dict() if self.moves else {}

    def load_state_dict(self, state: dict) -> None:
        if self.moves:
            self.snapshot.load_state_dict(state)

    @property
    def moves(self) -> bool:
        return self.mode == "round_start" and self.round_steps > 1


class Engine:
    def __init__(self, *, policy: Any, tokenizer: Any, prompts: list[Prompt], sources: list[Source],
                 source_weights: list[float], method: Any, group_size: int, seed: int, sampling: dict,
                 combine_mode: str = "sum", reward_norm: str = "none", reward_clip: float | None = None,
                 overlong_buffer: int = 0, overlong_factor: float = 1.0, calibrate_samples: int = 0,
                 calibrate_t: float = 1.0, reference: Reference | None = None, trainee: Any = None,
                 ppo_epochs: int = 1, num_minibatches: int = 1, redraw_tries: int = 0, backend: Any = None,
                 precision: str = "no"):
        self.policy, self.tokenizer, self.prompts, self.sources = policy, tokenizer, prompts, sources
        self.weights = torch.tensor(source_weights, dtype=torch.float)
        self.method, self.group_size, self.seed, self.sampling = method, group_size, seed, dict(sampling)
        self.combine_mode, self.reward_norm, self.reward_clip = combine_mode, reward_norm, reward_clip
        self.overlong_buffer, self.overlong_factor = overlong_buffer, overlong_factor
        self.calibrate_samples, self.calibrate_t = calibrate_samples, calibrate_t
        self.reference = reference
        if calibrate_samples > 0 and reference is None:  # the policy's own samples would rank it against itself
            raise ConfigError("calibrate_samples (InfAlign) ranks rewards among the reference's samples: give a reference")
        self.trainee = trainee if trainee is not None else policy  # what the method's forwards run on
        self.ppo_epochs, self.num_minibatches, self.redraw_tries = ppo_epochs, num_minibatches, redraw_tries
        self.backend = backend if backend is not None else NativeBackend(policy, tokenizer)  # who generates
        self.precision = precision  # the loop's autocast ("no", "bf16", "fp16"), which the method's forwards share
        self.moments = RunningMoments()
        self.ready: dict[tuple[int, ...], dict] = {}
        self._rollout: tuple[int, list[tuple[tuple[int, ...], dict, float]]] | None = None  # (its step, batches)
        self._train_clock: tuple[float, float] | None = None  # (start of this step's training, its tokens)
        self._gen_seconds = 0.0  # spent generating in this rollout

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps taken on one rollout: PPO epochs x minibatches (the loop's `steps_per_batch`)."""
        return self.ppo_epochs * self.num_minibatches

    def stateful(self) -> dict[str, Any]:
        out = {"reward_moments": self.moments}
        if self.reference is not None and self.reference.moves:
            out["reference"] = self.reference
        history = getattr(self.method, "history", None)
        if history is not None:
            out["opponents"] = history
        return out

    # ---- rollout phase
    def prepare(self, step: int, micro: list[list[int]]) -> None:
        """Generate, score and build this step's batches (every `updates_per_rollout` steps), then hand the
        loop the minibatch of this step: minibatch `k mod M` of PPO epoch `k // M`, k = step − rollout step."""
        k = step % self.updates_per_rollout
        if k == 0:
            self._rollout = (step, self._roll(step, micro))
        elif self._rollout is None or self._rollout[0] != step - k:
            raise PluralignError(f"step {step} trains on the rollout of step {step - k}, which this run did not make: "
                                 "checkpoints must fall on rollout boundaries (save_every a multiple of "
                                 "ppo_epochs x num_minibatches)")
        rollout_step, built = self._rollout
        served = []
        for key, batch, denominator in built:
            if self.updates_per_rollout > 1:
                rows = minibatch_rows(len(batch["input_ids"]), self.num_minibatches, k,
                                      derived_seed(self.seed, rollout_step, key, "minibatches", k // self.num_minibatches))
                batch, denominator = self.method.minibatch(batch, rows)
                batch["metrics"] = batch["metrics"] | {"ppo_epoch": torch.tensor(float(k // self.num_minibatches))}
            served.append((key, batch, denominator))
        totals = all_processes_sum(torch.tensor([float(sum(len(i) for i in micro)), sum(d for _, _, d in served)]))
        n_prompts, denominator = float(totals[0]), float(totals[1])
        scale = torch.tensor(n_prompts / denominator if denominator > 0 else 0.0)
        self.ready = {}
        train_tokens = 0
        for key, batch, _ in served:
            batch["scale"] = scale
            trained = batch["attention_mask"] if "live" not in batch else batch["attention_mask"][batch["live"]]
            train_tokens += int(trained.sum())
            self.ready[key] = batch
        self._train_clock = (time.perf_counter(), train_tokens)

    def finish(self) -> dict[str, float]:
        """The loop's `finish_step`: this step's training throughput, tokens of its forwards and backwards (every
        process's) over the time since `prepare` handed them out, logged in this step's row (from `prepare`, it
        was the previous step's, beside this step's generation speed)."""
        if self._train_clock is None:
            return {}
        start, tokens = self._train_clock
        return {"train_tokens_per_s": total_rate(tokens, time.perf_counter() - start)}

    def _roll(self, step: int, micro: list[list[int]]) -> list[tuple[tuple[int, ...], dict, float]]:
        self._gen_seconds = 0.0  # time in the backend's generate only, not in reward scoring or the method's forwards
        if self.reference is not None:
            self.reference.refresh(step)
        history = getattr(self.method, "history", None)
        if history is not None:
            history.refresh(step)
        self.backend.sync()  # the trained weights into the generator (vLLM); nothing to do for the native one
        built, gen_tokens = [], 0
        score = getattr(self.method, "score", self.method.build)  # a method with batch statistics `finish`es below
        sampled = [self._sample(step, idx) for idx in micro]
        normalized = self.normalized([rewards for _, rewards, _, _ in sampled])
        for idx, (rollout, _, metrics, tokens), rewards in zip(micro, sampled, normalized, strict=True):
            gen_tokens += tokens
            # Under the loop's autocast: the sampling policy's and the reference's log-probs must round as the
            # training forward's do, or ratios and KL start off 1 and 0 (fp32 against bf16: ~0.03 a token).
            with loop_autocast(next(self.trainee.parameters()).device, self.precision):
                batch, denominator = score(self.trainee, rollout, rewards)
            batch["metrics"] = metrics | batch.get("metrics", {})
            built.append((tuple(idx), batch, denominator))
        if hasattr(self.method, "finish"):  # over the whole step's rollout, every micro-batch and process
            recounted = self.method.finish([batch for _, batch, _ in built], gather=all_processes_rows)
            if recounted is not None:  # a selection over the step (RAFT's top) sets the denominators
                built = [(key, batch, d) for (key, batch, _), d in zip(built, recounted, strict=True)]
        gen_tps = torch.tensor(total_rate(gen_tokens, self._gen_seconds))
        for _, batch, _ in built:
            batch["metrics"]["gen_tokens_per_s"] = gen_tps
        return built

    def _sample(self, step: int, idx: list[int]) -> tuple[Rollout, torch.Tensor, dict, int]:
        """The micro-batch's rollout and its shaped rewards (`normalized` later, with the whole step's). With
        DAPO's dynamic sampling re-draws (`redraw_tries`), groups whose rewards do not vary are replaced by
        groups of other prompts drawn from the prompt set (seeded by run seed, step, micro-batch and try) until
        every slot holds a varied group or the tries run out; the slots still unfilled keep their flat groups
        (no loss, `dynamic_sampling`)."""
        g = self.group_size
        rollout = self._generate(idx, derived_seed(self.seed, step, tuple(idx)))
        shaped, metrics = self.shaped_rewards(rollout, step, idx)
        tokens = int(rollout.lengths.sum())
        if self.redraw_tries > 0:
            kept = varied_groups(shaped, g)
            parts = [(rollout.groups(kept.nonzero().flatten().tolist()), shaped.view(-1, g)[kept])]
            filled, tries = int(kept.sum()), 0
            while filled < len(idx) and tries < self.redraw_tries:
                tries += 1
                gen = torch.Generator().manual_seed(derived_seed(self.seed, step, tuple(idx), "redraw", tries))
                new = torch.randint(len(self.prompts), (len(idx) - filled,), generator=gen).tolist()
                extra = self._generate(new, derived_seed(self.seed, step, tuple(idx), "redraw", tries, tuple(new)))
                tokens += int(extra.lengths.sum())
                r, _ = self.shaped_rewards(extra, step, new)
                ok = varied_groups(r, g)
                parts.append((extra.groups(ok.nonzero().flatten().tolist()), r.view(-1, g)[ok]))
                filled += int(ok.sum())
            flat = (~kept).nonzero().flatten().tolist()  # slots no re-draw filled keep their flat groups
            parts.append((rollout.groups(flat), shaped.view(-1, g)[~kept]))
            rollout = Rollout.concat([p for p, _ in parts]).groups(range(len(idx)))
            shaped = torch.cat([r for _, r in parts]).flatten()[:len(idx) * g]
            metrics |= {"redraw_tries": torch.tensor(float(tries)),
                        "filled_fraction": torch.tensor(min(filled, len(idx)) / len(idx))}
        return rollout, shaped, metrics, tokens

    def _generate(self, idx: list[int], seed: int) -> Rollout:
        start = time.perf_counter()
        out = generate_by_stop(self.backend.generate, [self.prompts[i] for i in idx], self.group_size, seed, self.sampling)
        self._gen_seconds += time.perf_counter() - start
        return out

    def collate(self, items: list[Prompt]) -> dict:
        key = tuple(it.index for it in items)
        if key not in self.ready:
            raise RuntimeError(f"no rollout prepared for prompts {key}: the loop must be given prepare_step=engine.prepare")
        return self.ready.pop(key)

    # ---- rewards
    def shaped_rewards(self, rollout: Rollout, step: int, idx: list[int]) -> tuple[torch.Tensor, dict]:
        """Combined, calibrated and overlong-shaped rewards, before the running normalisation (which is
        affine, so a group that does not vary here does not vary after it)."""
        rows = [self.prompts[i] for i in idx for _ in range(self.group_size)]
        users, weights = [r.user for r in rows], [r.weights for r in rows]
        scored = [src.scored(rollout.prompts, rollout.texts, users, weights) for src in self.sources]
        columns = torch.stack([column for column, _ in scored], 1)
        raw = combine(columns, self.weights, self.group_size, "sum")
        rewards = raw if self.combine_mode == "sum" else combine(columns, self.weights, self.group_size, self.combine_mode)
        metrics = {"reward": raw.mean(), "response_length": rollout.lengths.mean(),
                   "truncated_fraction": rollout.truncated.float().mean()}
        labels = source_labels(self.sources)
        if len(self.sources) > 1:
            metrics |= {f"reward/{name}": columns[:, k].mean() for k, name in enumerate(labels)}
        for label, (_, objectives) in zip(labels, scored, strict=True):  # a multi-output source's objectives
            metrics |= {f"reward/{label}/{name}": mean for name, mean in objectives.items()}
        if self.calibrate_samples > 0:
            rewards = self._calibrated(rewards, rollout, step, idx)
        if self.overlong_buffer > 0:
            rewards = rewards + overlong_penalty(rollout.lengths, self.sampling["max_new_tokens"], self.overlong_buffer,
                                                 self.overlong_factor)
        return rewards, metrics

    def normalized(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """The micro-batches' rewards normalised (PPO-max) with running moments updated by the step's whole
        rollout first, every micro-batch and process: per micro-batch, the first was scaled by statistics
        without the second's rewards, and each process kept moments of its own."""
        if self.reward_norm != "none":
            self.moments.update(all_processes_rows(torch.cat(parts))[0])
            return [scaled_by(r, self.moments, center=self.reward_norm == "running", clip=self.reward_clip) for r in parts]
        if self.reward_clip:
            return [r.clamp(-self.reward_clip, self.reward_clip) for r in parts]
        return parts

    def _calibrated(self, rewards: torch.Tensor, rollout: Rollout, step: int, idx: list[int]) -> torch.Tensor:
        """InfAlign: rank each reward among the reference's samples for the same prompt, then exp(t·C)."""
        m = self.calibrate_samples
        with self.reference.acting() as model:
            ref = generate_by_stop(partial(generate, model, self.tokenizer), [self.prompts[i] for i in idx], m,
                                   derived_seed(self.seed, step, tuple(idx), "reference"), self.sampling)
        rows = [self.prompts[i] for i in idx for _ in range(m)]
        ref_cols = torch.stack([src(ref.prompts, ref.texts, [r.user for r in rows], [r.weights for r in rows])
                                for src in self.sources], 1)
        ref_r = combine(ref_cols, self.weights, m, "sum").view(-1, m)
        return calibrated(rewards.view(-1, self.group_size), ref_r, self.calibrate_t).flatten()


def source_labels(sources: list[Source]) -> list[str]:
    """Each source's name in the metrics; a name that several sources share (one multi-objective reward
    under different weights, a reward model for different users) gets its index in `rewards`, [k], so that
    no source's column overwrites another's."""
    names = [s.name for s in sources]
    return [f"{n}[{k}]" if names.count(n) > 1 else n for k, n in enumerate(names)]


def total_rate(tokens: float, seconds: float) -> float:
    """Tokens per second of all processes together: their tokens summed, over their mean time (each process
    logged its own rate, which the loop averaged: 2 processes read as fast as one)."""
    total_tokens, total_seconds, processes = all_processes_sum(torch.tensor([float(tokens), seconds, 1.0])).tolist()
    return total_tokens / max(total_seconds / processes, 1e-9)


def minibatch_rows(n_rows: int, n_minibatches: int, k: int, seed: int) -> torch.Tensor:
    """Rows of minibatch k mod M of a micro-batch's n rows: each PPO epoch deals the rows out anew, in a
    permutation drawn from `seed` (the rollout's step, micro-batch and epoch), into M near-equal parts."""
    if n_minibatches == 1:
        return torch.arange(n_rows)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    return torch.tensor_split(order, n_minibatches)[k % n_minibatches].sort().values
