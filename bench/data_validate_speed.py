"""Wall time of `pluralign data validate` on a 100-line JSONL file, as a user runs it (a fresh process),
side by side with the floors it cannot beat and the cost it used to pay:

  python -c pass         the interpreter's start (the floor of any Python CLI)
  python -c import torch what every command paid when the CLI registered all command groups eagerly
  pluralign data validate  the whole command: start, argument parsing, reading, checking, report

Each is run `--repeats` times in a fresh process; the median is reported. The goal is < 1 s wall.
Timings on a shared machine are inflated by other load; compare the ratios.

    .venv/bin/python bench/data_validate_speed.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pluralign.cli import positive_int


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--lines", type=positive_int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        path.write_text("".join(
            json.dumps({"prompt": [{"role": "user", "content": f"question {i}?"}], "chosen": f"a good answer {i}",
                        "rejected": f"a bad answer {i}", "user": f"u{i % 7}", "margin": i % 3}) + "\n"
            for i in range(args.lines)))
        py = sys.executable
        floor = wall([py, "-c", "pass"], args.repeats)
        torch_import = wall([py, "-c", "import torch"], args.repeats)
        validate = wall([py, "-m", "pluralign.cli", "data", "validate", str(path)], args.repeats)
        imported = subprocess.run([py, "-X", "importtime", "-m", "pluralign.cli", "data", "validate", str(path)],
                                  capture_output=True, text=True).stderr
        heavy = sorted({line.split("|")[-1].strip() for line in imported.splitlines()
                        if line.split("|")[-1].strip() in ("torch", "transformers", "numpy", "accelerate")})
    print(f"python -c pass:           {floor:.3f} s")
    print(f"python -c 'import torch': {torch_import:.3f} s")
    print(f"pluralign data validate:  {validate:.3f} s ({args.lines} lines; heavy imports: {heavy or 'none'})")
    print(f"RESULT validate_wall_s={validate:.3f} goal_s=1.0 meets_goal={validate < 1.0} "
          f"python_start_s={floor:.3f} torch_import_s={torch_import:.3f} "
          f"validate_over_python_start={validate / floor:.2f} validate_over_torch_import={validate / torch_import:.2f} "
          f"heavy_imports={','.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
