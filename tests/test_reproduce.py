"""`infovae reproduce --quick`: every experiment at toy size; the output files and the report are well formed."""

import json
import math
import os
import re
import sys
import time

import pytest

try:
    import infovae  # noqa: F401
except ImportError:  # the editable install predates python/infovae: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))


@pytest.mark.slow
def test_reproduce_quick(tmp_path):
    import torch

    from infovae.cli import main
    from infovae.reproduce import PIXEL_MODELS, SETTINGS

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = str(tmp_path / "repro")
    t = time.time()
    assert main(["reproduce", "--quick", "--out", out, "--no-progress"]) == 0
    assert time.time() - t < 300, "quick mode must finish in under 5 minutes"

    report = open(os.path.join(out, "REPRODUCTION.md")).read()
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["mode"] == "quick" and res["seed"] == 0
    latents = SETTINGS["quick"]["pixel"]["latents"]
    # every claim has a verdict and numbers, in the JSON and in the report
    assert len(res["claims"]) == 4 + 3 * len(latents)
    for c in res["claims"]:
        assert isinstance(c["confirmed"], bool) and c["numbers"]
    assert len(re.findall(r"\*\*(?:not )?confirmed\*\*", report)) == len(res["claims"])
    for section in ("## Claims", "## Where this differs from the paper", "## 1. Proposition 1 toy",
                    "## 2. Small data", "## 3. PixelCNN decoder"):
        assert section in report
    # every figure the report links exists and is a PNG
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) == 1 + 4 + len(latents)
    for f in figures:
        with open(os.path.join(out, f), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f
    # every run saved its config, history and metrics
    runs = ([os.path.join("toy", n) for n in ("elbo", "infovae")] + [os.path.join("small", n) for n in ("elbo", "mmd")]
            + [os.path.join("pixel", f"{n}_z{z}") for z in latents for n in PIXEL_MODELS])
    for r in runs:
        for f in ("config.json", "history.json", "metrics.json"):
            json.load(open(os.path.join(out, r, f)))
    for name, m in res["pixel"].items():
        for k in ("mmd", "logdet_cov_test", "class_ce", "acc_100", "acc_1000", "nll", "mi"):
            assert isinstance(m[k], float) and math.isfinite(m[k]), (name, k)
        assert m["mmd_curve"], name


@pytest.mark.slow
def test_demo_one_epoch(tmp_path):
    """`infovae demo` (what `make demo` runs), cut to one epoch: both runs, the report, its figures."""
    from infovae.cli import main

    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--epochs", "1", "--no-progress"]) == 0
    report = open(os.path.join(out, "REPORT.md")).read()
    assert re.search(r"^\| mmd \|", report, re.M) and re.search(r"^\| elbo \|", report, re.M)
    for f in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        with open(os.path.join(out, f), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f
    for name in ("mmd", "elbo"):
        m = json.load(open(os.path.join(out, name, "metrics.json")))
        assert m["epochs_trained"] == 1 and math.isfinite(m["nll"])
