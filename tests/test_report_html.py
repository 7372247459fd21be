"""The HTML report: self-contained, escaped, built from results dicts or run directories, and rendered
in headless Chromium with every plot loaded."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from pluralign.cli import main
from pluralign.errors import ConfigError
from pluralign.evaluate.report import fmt, render_html, write_report
from pluralign.evaluate.run_dirs import load_run_dir, load_run_dirs


def synthetic_results(n_runs: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n_runs):
        kl = float(0.3 * (i + 1))
        h = float(rng.random())
        runs.append({"name": f"run<{i}>", "method": "dpo" if i % 2 else "bon", "kl": kl,
                     "reward": float(np.sqrt(kl) + rng.normal(0, 0.05)), "reward_se": 0.03,
                     "per_group": {"majority": 0.5 + h, "minority": 1.0 - h / 2},
                     "objectives": {"helpful": h, "harmless": float(1 - h ** 2)},
                     "win_rate": {"win_rate": 40 + 20 * h, "ci": [35 + 20 * h, 45 + 20 * h], "lc_win_rate": 45.0},
                     "metrics": {"steps": 100 * i}})
    p = rng.random(300)
    return {"title": "Synthetic & <test>", "description": "synthetic numbers", "runs": runs,
            "calibration": [{"name": "rm", "probs": p.tolist(), "labels": (rng.random(300) < p).astype(int).tolist()}],
            "judge_reliability": [{"judge": "scripted", "acc_both": 0.667, "acc_random": 0.737,
                                   "position_bias": 0.022, "length_bias": 0.197, "n": 50}],
            "curves": [{"name": "dpo", "rows": [{"step": s, "loss": 1 / (s + 1), "reward": s / 10} for s in range(20)]}],
            "tables": [{"title": "Extra table", "columns": ["k", "v"], "rows": [["a", 1.23456], ["b", None]]}]}


def images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)]


def test_report_is_self_contained_and_escaped(tmp_path):
    html = write_report(synthetic_results(), tmp_path / "r.html").read_text()
    pngs = images(html)
    # reward–KL, per-group bars, Pareto, calibration, training curves
    assert len(pngs) == 5 == html.count("<img ")
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert 'name="viewport"' in html and "@media" in html
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from outside
    assert "<script" not in html and "run&lt;0&gt;" in html and "Synthetic &amp; &lt;test&gt;" in html
    assert "Judge reliability" in html and "0.667" in html and "Extra table" in html and "—" in html
    assert "hypervolume" in html and "Gini" in html and "ECE" in html


def test_report_sections_appear_only_with_data():
    html = render_html({"runs": [{"name": "a", "kl": 0.1, "reward": 1.0}]})
    assert html.count("<img ") == 1 and "Pareto" not in html and "Calibration" not in html
    assert render_html({}).count("<img ") == 0


def test_fmt():
    assert fmt(None) == "—" and fmt(float("nan")) == "—" and fmt(3) == "3" and fmt(0.123456) == "0.1235"
    assert fmt([1.0, 2.5]) == "[1, 2.5]" and fmt(True) == "True"


def test_load_run_dirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "results.json").write_text(json.dumps(synthetic_results(2)))
    (b / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / (s + 1), "kl": s * 0.1,
                                                         "reward": s * 0.2}) + "\n" for s in range(5)) + "{torn")
    one = load_run_dir(b)
    assert one["runs"] == [{"name": "b", "kl": pytest.approx(0.4), "reward": pytest.approx(0.8)}]
    merged = load_run_dirs([a, b])
    assert [r["name"] for r in merged["runs"]] == ["run<0>", "run<1>", "b"]
    assert merged["title"] == "Synthetic & <test>" and len(merged["curves"]) == 2
    (b / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match="results.json: invalid JSON"):
        load_run_dir(b)
    with pytest.raises(ConfigError, match="not found"):
        load_run_dir(tmp_path / "missing")


def test_report_cli(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(synthetic_results(3)))
    assert main(["report", str(run), "--title", "CLI report"]) == 0
    out = run / "report" / "report.html"
    assert out.exists() and "CLI report" in out.read_text()
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")]) == 2
    assert "run directory not found" in capsys.readouterr().err


# ---- headless browser ---------------------------------------------------------------------------
PROBE = ("<script>window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);"
         "document.body.setAttribute('data-images',String(im.length));"
         "document.body.setAttribute('data-loaded',String(im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length));"
         "document.body.setAttribute('data-overflow',String(document.documentElement.scrollWidth>window.innerWidth));"
         "});</script>")


def chromium_binary() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def browser_dom(html_path, tmp_path, width: int = 1200) -> str:
    """Load the report (plus a probe script) in headless Chromium and return the DOM after load."""
    probe = tmp_path / f"probe_{width}.html"
    probe.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={width},900",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_all_images_loaded(dom: str, expected: int) -> None:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    loaded = int(re.search(r'data-loaded="(\d+)"', body).group(1))
    assert images == expected and loaded == images


@pytest.mark.skipif(chromium_binary() is None, reason="Chromium not installed (scripts/ensure_chromium.sh installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    path = write_report(synthetic_results(), tmp_path / "report.html")
    dom = browser_dom(path, tmp_path)
    check_all_images_loaded(dom, 5)
    phone = browser_dom(path, tmp_path, width=390)  # a phone: the page itself must not scroll sideways
    check_all_images_loaded(phone, 5)
    assert 'data-overflow="false"' in phone


def test_the_per_group_bars_say_which_runs_they_leave_out():
    # The bars show at most 8 runs; the 9th and later were left out under the caption "of each run".
    many = render_html(synthetic_results(n_runs=10))
    assert "per-group utility of the first 8 of 10 runs" in many
    assert "per-group utility of each run" in render_html(synthetic_results(n_runs=8))
