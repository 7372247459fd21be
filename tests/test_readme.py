"""The README is executable: every command of its ```bash blocks and every ```python block runs, in README
order, in a temporary directory holding a copy of `examples/`; then every example config runs as shipped
through the command in its own header comment.

What runs, and how:
* ``pluralign ...`` lines run in this process (`pluralign.cli.main`), which is much faster than a
  subprocess each; any other line (``printf``, ``echo ... > file``) runs in bash. A command must exit 0.
* Quick settings (`quick_argv`, `quick_python`): the commands are the README's own text, but sizes are
  shrunk: the sandbox's tiny preset, at most 64 feedback records, 2 optimizer steps per ``train``, a few
  evaluation prompts, short decodes. A new ``pluralign`` command gets them when its subcommand is listed.
* Skipped lines: ``make ...`` (the Makefile's own targets build a virtual environment) and
  ``accelerate launch ...`` (on a machine without GPUs accelerate starts several processes only through
  mpirun; the same 2-process path runs in tests/test_ddp.py).
* To skip a whole block (a command that needs a GPU, a server or the network), put an HTML comment on the
  line right before its opening fence: ``<!-- readme-test: skip (why) -->``. Blocks in other languages
  (```json, ```yaml, plain ```) are not run.

A section added to the README later is run too: keep its commands runnable in order after the ones
before it, or mark the block.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\b")
SKIPPED_LINES = {
    "make": "the Makefile's targets create a virtual environment",
    "accelerate": "accelerate launch on CPU needs mpirun; tests/test_ddp.py runs the 2-process path",
}


def blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, body, skipped) of every fenced block, in order."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        skipped = i > 0 and bool(SKIP_MARK.search(lines[i - 1]))
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        out.append((m.group(1), "\n".join(lines[i + 1:j]), skipped))
        i = j + 1
    return out


def commands(body: str) -> list[str]:
    """The command lines of a bash block: comments and blank lines dropped, lines ending in a backslash
    joined with the next."""
    joined = re.sub(r"\s*\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def quick_argv(argv: list[str]) -> list[str]:
    """A `pluralign` command with small sizes (see the module doc)."""
    argv = list(argv)
    group = argv[0] if argv else ""
    sub = argv[1] if len(argv) > 1 else ""
    if group == "sandbox" and sub == "build":
        argv.append("--tiny")
    if group == "sandbox" and sub == "feedback" and "--n" in argv:
        k = argv.index("--n") + 1
        argv[k] = str(min(int(argv[k]), 64))
    if group == "sandbox" and sub == "eval":
        argv += ["--n-prompts", "8", "--samples", "1"]
    if group == "train" and "--help-config" not in argv:
        argv += ["loop.max_steps=2", "loop.progress=false"]
    if group == "decode":
        argv += ["--n", "3", "--max-new-tokens", "8"]
    if group == "demo":
        argv.append("quick=true")
    return argv


def quick_python(monkeypatch) -> None:
    """The library calls of the README's Python with small sizes, by wrapping the functions it imports."""
    import pluralign.sandbox as sandbox
    import pluralign.train as train
    from pluralign.sandbox.base import SandboxConfig

    build, gen, gold = sandbox.build_base, sandbox.generate_file, sandbox.gold_eval
    pref, reward = train.run_preference, train.run_reward

    def build_base(*args, **kwargs):
        kwargs.setdefault("config", SandboxConfig.tiny())
        return build(*args, **kwargs)

    def generate_file(path, kind, population="default", n=100, *args, **kwargs):
        return gen(path, kind, population, min(n, 64), *args, **kwargs)

    def gold_eval(*args, **kwargs):
        return gold(*args, **{**kwargs, "n_prompts": 8, "n_samples": 1})

    def run_preference(*args, **kwargs):
        kwargs["loop"] = {**kwargs.get("loop", {}), "max_steps": 2, "progress": False}
        return pref(*args, **kwargs)

    def run_reward(*args, **kwargs):
        kwargs["loop"] = {**kwargs.get("loop", {}), "max_steps": 2, "progress": False}
        return reward(*args, **kwargs)

    for name, fn in [("build_base", build_base), ("generate_file", generate_file), ("gold_eval", gold_eval)]:
        monkeypatch.setattr(sandbox, name, fn)
    monkeypatch.setattr(train, "run_preference", run_preference)
    monkeypatch.setattr(train, "run_reward", run_reward)


def run_line(line: str, cwd: Path) -> None:
    from pluralign.cli import main

    argv = shlex.split(line, comments=True)
    if argv[0] in SKIPPED_LINES:
        return
    if argv[0] != "pluralign":
        done = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        return
    try:
        rc = main(quick_argv(argv[1:]))
    except SystemExit as e:  # argparse's --version / --help exit
        rc = e.code or 0
    assert rc == 0, f"README command failed (exit {rc}): {line}"


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """A directory where the whole README has run (the examples test continues in it)."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", work / "examples")
    mp = pytest.MonkeyPatch()
    start = time.perf_counter()
    try:
        mp.chdir(work)
        quick_python(mp)
        for lang, body, skipped in blocks((ROOT / "README.md").read_text(encoding="utf-8")):
            if skipped:
                continue
            if lang == "bash":
                for line in commands(body):
                    run_line(line, work)
            elif lang == "python":
                exec(compile(body, "README.md (python block)", "exec"), {"__name__": "__readme__"})
        print(f"README ran in {time.perf_counter() - start:.1f} s")
        yield work
    finally:
        mp.undo()


def test_readme_runs_in_order(readme_dir):
    assert (readme_dir / "runs" / "dpo" / "model" / "config.json").exists()
    assert (readme_dir / "runs" / "rm" / "model" / "config.json").exists()
    assert (readme_dir / "runs" / "eval" / "results.json").exists()
    assert (readme_dir / "report.html").exists()


HEADER_COMMAND = re.compile(r"^#\s+(pluralign \S+ .*--config examples/(\S+\.yaml).*)$", re.M)


def test_every_example_config_runs_as_shipped(readme_dir):
    """Each examples/*.yaml names its command in its header comment; run it on the README's files."""
    with contextlib.chdir(readme_dir):
        for path in sorted((ROOT / "examples").glob("*.yaml")):
            found = [m.group(1) for m in HEADER_COMMAND.finditer(path.read_text(encoding="utf-8"))
                     if m.group(2) == path.name]
            assert found, f"{path.name}: no '#   pluralign ... --config examples/{path.name}' line in its header"
            run_line(found[0].split("  #")[0] + f" output_dir=runs/example_{path.stem}"
                     if found[0].startswith("pluralign train") else found[0], readme_dir)


def test_blocks_parser_and_skip_mark():
    text = "x\n```bash\npluralign a\n# c\n\npluralign b  # d\n```\n<!-- readme-test: skip (GPU) -->\n```bash\nz\n```\n"
    parsed = blocks(text)
    assert [(lang, skipped) for lang, _, skipped in parsed] == [("bash", False), ("bash", True)]
    assert commands(parsed[0][1]) == ["pluralign a", "pluralign b  # d"]
    assert commands("pluralign x \\\n   --y 1\n") == ["pluralign x --y 1"]
    assert quick_argv(["train", "dpo", "--config", "x.yaml"])[-2:] == ["loop.max_steps=2", "loop.progress=false"]
    assert quick_argv(["sandbox", "feedback", "--n", "2000"])[-1] == "64"


def test_accelerate_lines_say_how_their_processes_start():
    """The README's DDP line was `accelerate launch --num_processes 2 ...`: on a machine without GPUs accelerate
    then starts one process, not two, without a word. `--multi_gpu` (or a launcher config) starts them on
    GPUs and CPUs alike."""
    lines = [line for lang, body, _ in blocks((ROOT / "README.md").read_text(encoding="utf-8")) if lang == "bash"
             for line in commands(body) if line.startswith("accelerate launch")]
    assert lines and [line for line in lines if "--multi_gpu" not in line and "--config_file" not in line] == []
