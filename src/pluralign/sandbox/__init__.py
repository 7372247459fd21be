"""The sandbox: a tiny world with ground truth, so every alignment method can be measured, not guessed.

- `world`: a lexicon and a grammar of prompts (`question: … answer:`) and varied responses;
- `attributes`: gold attribute functions of (prompt, response), some of which trade off;
- `users`: populations of simulated users (groups with weights and a Bradley–Terry temperature);
- `base`: a small Llama-style base model trained on the world, cached by config hash;
- `feedback`: simulated feedback of every kind, from grammar or model responses;
- `gold`: gold evaluation of a model (attributes, utilities, KL to the base, win rates).

Typical use::

    base = build_base()                                    # ~1 min the first time, then cached
    records = generate("user_pairwise", "default", 500, base, seed=0)
    report = gold_eval(aligned_dir, base=base, population="default")
"""

from pluralign.sandbox.attributes import ATTRIBUTES, RANGES, TRADE_OFFS, GoldScorer, score, score_batch
from pluralign.sandbox.base import SandboxConfig, build_base, load, read_manifest, weights_hash
from pluralign.sandbox.feedback import FEEDBACK_KINDS, draw_responses, generate, generate_file
from pluralign.sandbox.gold import eval_prompts, format_table, gold_eval
from pluralign.sandbox.users import (
    Group,
    Population,
    User,
    population,
    population_names,
    preference_probability,
    utility,
)
from pluralign.sandbox.world import World, format_prompt

__all__ = [
    "ATTRIBUTES", "FEEDBACK_KINDS", "RANGES", "TRADE_OFFS", "GoldScorer", "Group", "Population", "SandboxConfig",
    "User", "World", "build_base", "draw_responses", "eval_prompts", "format_prompt", "format_table", "generate",
    "generate_file", "gold_eval", "load", "population", "population_names", "preference_probability",
    "read_manifest", "score", "score_batch", "utility", "weights_hash",
]
