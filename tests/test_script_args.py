"""Bad arguments to the experiment and benchmark scripts stop at once with argparse's usage line and a message
naming the option (exit 2), never with a traceback and never after work has started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

CASES = [
    # (script, arguments, what the message says)
    ("experiments/dpo_sandbox.py", ["--methods", "dpo,nosuch"], "unknown method(s) 'nosuch'"),
    ("experiments/dpo_sandbox.py", ["--pairs", "-5"], "must be at least 1"),
    ("experiments/dpo_sandbox.py", ["--group", "nosuch"], "has no group 'nosuch'"),
    ("experiments/online_frontier.py", ["--methods", "grpo,nosuch"], "unknown method(s) 'nosuch'"),
    ("experiments/online_frontier.py", ["--offline", "dpo,nosuch"], "unknown method(s) 'nosuch'"),
    ("experiments/online_frontier.py", ["--steps", "-1"], "must be at least 1"),
    ("experiments/online_frontier.py", ["--set", "grpo.beta"], "not of the form key=value"),
    ("experiments/pareto_training.py", ["--methods", "linear,jsop"], "unknown name(s) 'jsop'"),
    ("experiments/pareto_training.py", ["--cases", "4obj"], "unknown name(s) '4obj'"),
    ("experiments/pareto_training.py", ["--methods", "linear,mod"], "needs soups"),
    ("experiments/personal_training.py", ["--only", "nosuch"], "unknown row(s) 'nosuch'"),
    ("experiments/personal_training.py", ["--pairs", "-1"], "must be at least 1"),
    ("experiments/preference_models.py", ["--seeds", "0"], "must be at least 1"),
    ("experiments/sandbox_sanity.py", ["--n-pairs", "-1"], "must be at least 1"),
    ("experiments/decoding_frontier.py", ["--prompts", "-1"], "must be at least 1"),
    # a negative seed was numpy's "expected non-negative integer" traceback, some --out directories made already
    *[(f"experiments/{name}.py", ["--seed", "-1"], "must be at least 0") for name in (
        "dpo_sandbox", "online_frontier", "pareto_training", "personal_training", "preference_models", "sandbox_sanity")],
    # a learning rate the loop refuses (nan, negative) failed only inside the first training run
    ("experiments/dpo_sandbox.py", ["--lr", "nan"], "learning_rate"),
    ("experiments/pareto_training.py", ["--expert-lr", "-1"], "learning_rate"),
    ("experiments/personal_training.py", ["--lr", "-1"], "learning_rate"),
    ("bench/dpo_vs_trl.py", ["--repeats", "0"], "must be at least 1"),
    ("bench/dpo_vs_trl.py", ["--pluralign-set", "packing"], "KEY=VALUE expected"),
    ("bench/grpo_vs_trl.py", ["--steps", "-2"], "must be at least 1"),
    ("bench/grpo_vs_trl.py", ["--model", "no/such/dir"], "no model directory"),
    ("bench/decode_vs_naive.py", ["--threads", "0"], "must be at least 1"),
    ("bench/serve_load.py", ["--clients", "-1"], "must be at least 1"),
    ("bench/reward_memory.py", ["--steps", "-1"], "must be at least 1"),
    ("bench/data_validate_speed.py", ["--repeats", "0"], "must be at least 1"),
]


@pytest.mark.parametrize(("script", "args", "message"), CASES, ids=[f"{s}:{' '.join(a)}" for s, a, _ in CASES])
def test_a_bad_argument_is_one_message(script, args, message, tmp_path):
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir()), "nothing is written before the arguments are checked"


def test_dpo_sandbox_never_removes_what_a_stray_comma_names(tmp_path):
    """Each method's run directory under --out is removed before it trains: '' (from 'dpo,') named --out itself."""
    out = tmp_path / "out"
    (out / "ref_cache").mkdir(parents=True)
    keep = out / "feedback.jsonl"
    keep.write_text("{}\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for methods in ("dpo,", "ref_cache", ".."):
        proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "dpo_sandbox.py"), "--methods", methods,
                               "--out", str(out)], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2 and "unknown method" in proc.stderr, proc.stderr
    assert keep.exists() and (out / "ref_cache").is_dir()


def test_personal_training_removes_only_its_own_output_directory(tmp_path):
    """--out is emptied before the run: a directory it did not write (no train.jsonl) is refused, untouched."""
    other = tmp_path / "runs"
    (other / "dpo").mkdir(parents=True)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "personal_training.py"), "--quick", "--out",
                           str(other)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "not an earlier run of this script" in proc.stderr, proc.stderr
    assert (other / "dpo").is_dir()


def test_grpo_bench_refuses_cuda_without_a_gpu(tmp_path):
    """Without a visible GPU, --device cuda stops (as bench/dpo_vs_trl.py does) instead of running both sides on
    the CPU under a RESULT line that says device=cuda."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "grpo_vs_trl.py"), "--quick", "--device", "cuda"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "RESULT" not in proc.stdout


def test_personal_training_quick_keeps_the_flags_given():
    """--quick sets the short run's defaults; a count given on the command line still counts (it was overwritten)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("personal_training", ROOT / "experiments" / "personal_training.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    quick = script.parse_args(["--quick", "--pairs", "300", "--out", "/nonexistent/x"])
    assert (quick.pairs, quick.epochs, quick.eval_prompts, quick.samples) == (300, 1, 24, 2)
    full = script.parse_args(["--samples", "4", "--out", "/nonexistent/x"])
    assert (full.pairs, full.epochs, full.eval_prompts, full.samples) == (2048, 2, 256, 4)


def _gpu_checks_commands() -> list[list[str]]:
    """The commands of bench/gpu_checks.sh's steps (continuation lines joined), after `$PY`."""
    import shlex

    text = (ROOT / "bench" / "gpu_checks.sh").read_text().replace("\\\n", " ")
    return [shlex.split(line.split("$PY", 1)[1]) for line in text.splitlines() if line.startswith("step ")]


def test_gpu_checks_run_every_gpu_test_and_cuda_bench():
    """The one script run on a GPU runs every test file with GPU-only tests and every bench's --device cuda mode:
    the vLLM backend's GPU tests and grpo_vs_trl.py --device cuda were run by none."""
    import re

    commands = _gpu_checks_commands()
    tests = {c[i] for c in commands for i in range(len(c)) if c[i].startswith("tests/")}
    gpu_tests = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
                 if re.search(r"skip\(.*CUDA|CUDA\s+else", p.read_text())}
    assert gpu_tests and gpu_tests <= tests, gpu_tests - tests
    benches = {c[0] for c in commands if c[0].startswith("bench/") and "--device" in c
               and c[c.index("--device") + 1] == "cuda"}
    cuda_benches = {f"bench/{p.name}" for p in (ROOT / "bench").glob("*.py") if '"cuda"]' in p.read_text()}
    assert cuda_benches and cuda_benches <= benches, cuda_benches - benches


def test_gpu_checks_give_the_benches_arguments_they_accept():
    """Each bench step's arguments parse: without a GPU the script then stops at its CUDA check, not at argparse."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for command in (c for c in _gpu_checks_commands() if c[0].startswith("bench/")):
        proc = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], capture_output=True, text=True,
                              timeout=120, env=env)
        assert "no CUDA device is visible" in proc.stderr, (command, proc.stderr[-2000:])
