"""Shared pieces of the online-alignment tests: a Python reward (importable as
`online_toys:cat_reward` when tests/ is on the path) and a tiny Llama directory."""

from __future__ import annotations

import math
from pathlib import Path

from conftest import WORDS

from pluralign.models import tiny


def cat_reward(prompts, responses):
    """More 'cat' is better, length costs a little: a verifiable reward with variance across samples."""
    return [r.split().count("cat") - 0.1 * len(r.split()) for r in responses]


def raising_reward(prompts, responses):
    raise ValueError("the grader crashed")


def nan_reward(prompts, responses):
    return [math.nan] * len(responses)


def short_reward(prompts, responses):
    return [0.0] * (len(responses) - 1)


def make_model_dir(path: Path) -> Path:
    tok = tiny.word_tokenizer(WORDS)
    tiny.tiny_llama(len(tok), hidden_size=32, num_heads=2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


PROMPTS = ["the cat", "a dog", "hello world", "what is the answer", "the big red dog", "why", "yes", "the mat"]


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    import json

    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def online_config(base: Path, tmp_path: Path, loop_defaults: dict, **kw):
    """An OnlineConfig on the tiny model writing to tmp_path/out: group of 4, 6 new tokens, `loop_defaults`
    updated by kw['loop'], the other kw as fields."""
    from pluralign.config import from_dict
    from pluralign.train.recipes.online import OnlineConfig

    loop = loop_defaults | kw.pop("loop", {})
    return from_dict(OnlineConfig, {"model": str(base), "output_dir": str(tmp_path / "out"), "group_size": 4,
                                    "max_new_tokens": 6, "loop": loop} | kw)


def metric_rows(tmp_path: Path) -> list[dict]:
    """The rows of tmp_path/out/metrics.jsonl."""
    import json

    return [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def any_cat_reward(prompts, responses):
    """1 when a 'cat' appears, else 0: a pass/fail reward whose groups are often all-0 or all-1 (flat)."""
    return [float("cat" in r.split()) for r in responses]


def one_second_generation(engine, now: list[float]) -> None:
    """Swap `engine`'s rollout backend for one whose every generation takes 1 s on the clock `now[0]` (patched
    over the engine's `time.perf_counter`), so a test knows the rates the engine logs."""
    native = engine.backend

    class OneSecond:
        def sync(self):
            native.sync()

        def generate(self, *args, **kwargs):
            now[0] += 1.0
            return native.generate(*args, **kwargs)

    engine.backend = OneSecond()
