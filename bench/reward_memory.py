"""Peak memory of reward-model training vs DPO on the same small model and pairs.

    .venv/bin/python bench/reward_memory.py [--hidden 256] [--layers 6] [--length 200] [--steps 2]

Each configuration runs `pluralign train ...` in its own process (same model, same pairs, same batch) and
the peak resident set size of that process is read from the OS (`os.wait4`). Configurations:

- rm_padded_full: `train rm` as it was before gradient checkpointing and packing reached reward models
  (gradient_checkpointing=false packing=false);
- rm_default: `train rm` at its defaults (gradient checkpointing, packed batches);
- rm_lora: `train rm use_lora=true`;
- dpo_default: `train dpo` at its defaults.

CPU only; the baseline of a Python process with torch loaded (~0.4 GB) is in every number. Last line:
RESULT rm_padded_full_mb=… rm_default_mb=… rm_lora_mb=… dpo_default_mb=… ratio_before=… ratio_after=…
(ratios: reward model / DPO peak).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from pluralign.cli import positive_int

CONFIGS = {
    "rm_padded_full": ["rm", "gradient_checkpointing=false", "packing=false"],
    "rm_default": ["rm"],
    "rm_lora": ["rm", "use_lora=true"],
    "dpo_default": ["dpo", "ref_cache=true"],
}


def build(root: Path, hidden: int, layers: int, length: int, n: int) -> tuple[Path, Path]:
    from pluralign.models.load import save_model
    from pluralign.models.tiny import tiny_llama, word_tokenizer

    words = [f"w{i}" for i in range(500)]
    tok = word_tokenizer(words)
    model_dir = save_model(tiny_llama(len(tok), hidden_size=hidden, num_layers=layers, num_heads=4), tok, root / "model")
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        # varied lengths, as real data has: packing saves the padding, checkpointing the activations
        size = lambda: rng.randint(length // 3, length)  # noqa: E731
        rows.append({"prompt": " ".join(rng.choices(words, k=8)), "chosen": " ".join(rng.choices(words, k=size())),
                     "rejected": " ".join(rng.choices(words, k=size()))})
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def peak_rss_mb(args: list[str]) -> float:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(args)} failed:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=positive_int, default=256)
    ap.add_argument("--layers", type=positive_int, default=6)
    ap.add_argument("--length", type=positive_int, default=200, help="longest response in tokens")
    ap.add_argument("--batch", type=positive_int, default=16)
    ap.add_argument("--steps", type=positive_int, default=2)
    args = ap.parse_args()
    if args.hidden % 4:
        ap.error(f"--hidden must be a multiple of 4 (the model's attention heads), got {args.hidden}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, data = build(root, args.hidden, args.layers, args.length, args.batch * args.steps)
        peaks = {}
        for name, (recipe, *extra) in CONFIGS.items():
            cmd = [sys.executable, "-m", "pluralign.cli", "train", recipe, f"model={model_dir}", f"data={data}",
                   f"output_dir={root / name}", f"max_length={args.length + 16}", f"loop.batch_size={args.batch}",
                   f"loop.max_steps={args.steps}", "loop.progress=false", "loop.learning_rate=1e-4", *extra]
            peaks[name] = peak_rss_mb(cmd)
            print(f"{name:<16} peak RSS {peaks[name]:8.0f} MB", flush=True)
    dpo = peaks["dpo_default"]
    print(f"RESULT rm_padded_full_mb={peaks['rm_padded_full']:.0f} rm_default_mb={peaks['rm_default']:.0f} "
          f"rm_lora_mb={peaks['rm_lora']:.0f} dpo_default_mb={dpo:.0f} "
          f"ratio_before={peaks['rm_padded_full'] / dpo:.2f} ratio_after={peaks['rm_default'] / dpo:.2f}")


if __name__ == "__main__":
    main()
