"""README statements about the code that its runnable blocks (tests/test_readme.py) do not exercise: the
Layout section names every package there is, and only folders that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_layout_names_every_package_and_only_real_folders():
    layout = section("Layout")
    # A folder is a line's first word ending in "/" (indented ones are inside src/pluralign/).
    named = re.findall(r"^(\s*)([\w.]+)/", layout, re.M)
    packages = {name for indent, name in named if indent}
    top = {name for indent, name in named if not indent} - {"src"}
    real = {p.name for p in (ROOT / "src" / "pluralign").iterdir() if (p / "__init__.py").is_file()}
    assert packages == real, f"missing from the Layout: {sorted(real - packages)}; not there: {sorted(packages - real)}"
    assert all((ROOT / name).is_dir() for name in top), top


def test_speed_names_every_benchmark_make_bench_runs_and_only_real_ones():
    speed = section("Speed")
    target = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    run = set(re.findall(r"bench/\w+\.py", target))
    named = set(re.findall(r"bench/\w+\.(?:py|sh)", speed))
    assert run <= named, f"make bench runs {sorted(run - named)}, which the Speed section does not name"
    assert all((ROOT / path).is_file() for path in named), named
