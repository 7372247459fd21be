"""The benchmark scripts' flags, and the GPU mode of bench/dpo_vs_trl.py (--preset), driven on the CPU with
the tiny preset: the same code path as `--device cuda --preset 0.3b|1.3b` (a 32000-token vocabulary, bf16
autocast on both sides, each side in its own process, per-phase timers, MFU against a bf16 peak), with only
the CUDA calls left out."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "dpo_vs_trl.py"


@pytest.mark.parametrize("script", ["dpo_vs_trl.py", "grpo_vs_trl.py"])
@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--lr", "-1"), ("--lr", "nan"), ("--lr", "x")])
def test_a_bad_seed_or_learning_rate_is_refused_before_any_work(script, flag, value):
    # A negative seed used to stop in numpy after the data was built, a bad learning rate in a side's
    # subprocess (the loop's ConfigError, with its traceback, after TRL had run).
    proc = subprocess.run([sys.executable, str(BENCH.parent / script), flag, value, "--steps", "1"],
                          capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("seconds", ["inf", "nan", "0"])
def test_serve_load_refuses_a_duration_that_is_not_a_finite_positive_number(seconds):
    # --seconds inf used to start the server and keep the clients sending for ever
    proc = subprocess.run([sys.executable, str(BENCH.parent / "serve_load.py"), "--seconds", seconds],
                          capture_output=True, text=True, timeout=60, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "--seconds" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL (dev extra) not installed")
def test_gpu_mode_runs_on_cpu_with_the_tiny_preset():
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--preset", "tiny", "--repeats", "1",
                           "--keep"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    work = Path(re.search(r"^work directory: (.+)$", out, re.M).group(1))
    try:
        # CPU seconds over the wall clock's span, on one thread: no more than the wall seconds (plus a little
        # for a helper thread). They used to start before the side's imports (TRL's took ~1.5 CPU-s), which
        # its wall clock leaves out, so the "ratio by CPU seconds" counted imports for one side.
        for side in ("trl0", "pluralign0"):
            result = json.loads((work / f"{side}.json").read_text())
            assert result["cpu_s"] <= result["wall_s"] + 0.1, (side, result["cpu_s"], result["wall_s"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert "vocab 32000" in out and "bf16 autocast on fp32 weights" in out
    phases = re.search(r"seconds per phase: trl (.*); pluralign (.*)", out)
    assert phases, out
    for side in phases.groups():
        seconds = dict(re.findall(r"(\w+) ([\d.]+)", side))
        assert set(seconds) == {"load", "reference", "train", "save"} and float(seconds["train"]) > 0, side
    result = re.search(r"^RESULT preset=tiny device=cpu throughput_ratio=([\d.]+) memory_ratio=([\d.]+) "
                       r"loss_abs_diff=(\S+) mfu=([\d.]+) trl_mfu=([\d.]+)$", out, re.M)
    assert result, out
    throughput, memory, loss_diff, mfu, trl_mfu = map(float, result.groups())
    assert throughput > 0 and memory > 0 and 0 < mfu < 1 and 0 < trl_mfu < 1
    # Same batches, same bf16 autocast on both sides: the DPO losses of 2 steps stay close (not a parity
    # claim: bf16 rounding differs between the two implementations).
    assert loss_diff < 1e-2
