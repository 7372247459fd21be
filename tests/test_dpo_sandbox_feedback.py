"""experiments/dpo_sandbox.py's feedback cache (also online_frontier.py's): a file is reused only for the base
model it was sampled from."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from pluralign.data.records import Pairwise

PATH = Path(__file__).parents[1] / "experiments" / "dpo_sandbox.py"
sys.path.insert(0, str(PATH.parent))
spec = importlib.util.spec_from_file_location("dpo_sandbox", PATH)
ds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ds)


def test_feedback_of_another_base_model_is_not_reused(tmp_path, monkeypatch):
    import pluralign.sandbox.feedback as F

    def fake_generate(kind, pop, n, base_dir, seed):  # the base's name in every response: whose samples they are
        return [Pairwise(f"question: p{i} answer:", f"{Path(base_dir).name} a", f"{Path(base_dir).name} b",
                         user="g1-u0", group="minority") for i in range(n)]

    monkeypatch.setattr(F, "generate", fake_generate)
    name = tmp_path / "feedback_default_minority_4_seed0.jsonl"
    old = ds.group_feedback(name, "default", "minority", 4, tmp_path / "base-aaaa", 0)
    assert ds.group_feedback(name, "default", "minority", 4, tmp_path / "base-aaaa", 0) == old  # reused
    new = ds.group_feedback(name, "default", "minority", 4, tmp_path / "base-bbbb", 0)
    assert new != old and "base-bbbb a" in new.read_text() and "base-aaaa" not in new.read_text()
