"""`infovae reproduce --quick` (every part at toy size: the files, the report, the verdicts are well
formed), the verdict logic on synthetic results (the gate turns P3 claims into "undecided"), and the demo."""

import copy
import json
import math
import os
import re
import sys

import pytest

try:
    import infovae  # noqa: F401
except ImportError:  # the editable install predates python/infovae: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from infovae import reproduce as R

VERDICTS = (R.CONFIRMED, R.NOT_CONFIRMED, R.UNDECIDED)


@pytest.mark.slow
def test_reproduce_quick(tmp_path):
    import torch

    from infovae.cli import main

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = str(tmp_path / "repro")
    assert main(["reproduce", "--quick", "--out", out, "--no-progress", "--device", "cpu"]) == 0

    report = open(os.path.join(out, "REPRODUCTION.md")).read()
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["mode"] == "quick" and res["parts"] == list(R.PARTS) and res["thresholds"] == R.THRESHOLDS
    assert len(res["claims"]) == 3 + 3 + 5
    for c in res["claims"]:
        assert c["verdict"] in VERDICTS and c["numbers"]
    assert len(re.findall(r"\*\*(confirmed|not confirmed|undecided \(budget too short to decide\))\*\*", report)) == 11
    for section in ("## Claims", "## P1. Proposition 1 toy", "## P2. Small data", "## P3. PixelCNN decoder", "Gate:",
                    "Authors (latent 10"):
        assert section in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) == 4
    for f in figures:
        with open(os.path.join(out, f), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f
    s = R.SETTINGS["quick"]
    runs = ([os.path.join("P1", f"{m}_s{seed}") for m in R.TOY_MODELS for seed in s["P1"]["seeds"]]
            + [os.path.join("P3", n) for n in R.P3_MODELS])
    for r in runs:
        for f in ("config.json", "history.json", "metrics.json"):
            json.load(open(os.path.join(out, r, f)))
    for name, m in res["P3"].items():
        for k in ("mmd", "logdet_cov_test", "class_ce", "class_ce_floor", "acc_1000", "acc_floor_1000", "nll", "mi"):
            assert isinstance(m[k], float) and math.isfinite(m[k]), (name, k)
        assert m["mmd_curve"] and m["probe_draws"] >= 10, name
    assert res["P3"]["elbo_beta"]["latent"] == 10
    from infovae import InfoVAE

    for n in R.P3_MODELS:  # each P3 run keeps its weights, which fit its own config (metrics can be recomputed)
        w = torch.load(os.path.join(out, "P3", n, "model.pt"), map_location="cpu")
        assert w["model_config"] == json.load(open(os.path.join(out, "P3", n, "config.json")))["model"]
        InfoVAE.from_config(w["model_config"]).load_state_dict(w["model"])


def _p3(mmd_mi, mmd_acc, floor=0.1):
    base = dict(mi=2.0, acc_1000=0.5, acc_floor_1000=floor, mmd=0.01, class_ce=0.05, class_ce_floor=0.01,
                chance_acc=0.11, converged_step=100)
    r = {n: dict(base) for n in R.P3_MODELS}
    r["mmd"].update(mi=mmd_mi, acc_1000=mmd_acc, mmd=0.001, class_ce=0.01)
    r["elbo"].update(acc_1000=0.2, mi=0.1)
    r["elbo_beta"].update(acc_1000=0.11, mi=0.0)
    r["aae"].update(converged_step=500)
    return r


def test_gate_turns_p3_claims_undecided():
    s = R.SETTINGS["cpu"]
    passed = R.claims(None, None, _p3(mmd_mi=3.0, mmd_acc=0.9), s)
    assert [v for _, v, _ in passed] == [R.CONFIRMED] * 5
    stuck = R.claims(None, None, _p3(mmd_mi=0.01, mmd_acc=0.9), s)  # MMD-VAE has not left the prior
    assert [v for _, v, _ in stuck] == [R.UNDECIDED] * 5 and all("gate" in n for _, _, n in stuck)
    at_floor = R.claims(None, None, _p3(mmd_mi=3.0, mmd_acc=0.12, floor=0.1), s)  # within 0.05 of its floor
    assert [v for _, v, _ in at_floor] == [R.UNDECIDED] * 5
    worse = _p3(mmd_mi=3.0, mmd_acc=0.9)
    worse["elbo"]["acc_1000"] = 0.85  # ELBO as good as MMD-VAE: P3.1 not confirmed, the rest unchanged
    assert [v for _, v, _ in R.claims(None, None, worse, s)][:2] == [R.NOT_CONFIRMED, R.CONFIRMED]


def test_p1_claims_need_every_seed():
    seeds = [0, 1, 2]
    good = dict(gap_over_sd=4.0, decoder_logvar=-4.0, loglik_prior_sampled=0.0)
    info = dict(gap_over_sd=0.0, decoder_logvar=-1.0, loglik_prior_sampled=-1.4)
    r = {}
    for sd in seeds:
        r[f"elbo_s{sd}"], r[f"infovae_s{sd}"], r[f"authors_a1_l500_s{sd}"] = dict(good), dict(info), dict(info)
    assert [ok for _, ok, _ in R.p1_claims(r, seeds)] == [True, True, True]
    r["elbo_s2"] = dict(good, gap_over_sd=1.5)  # one seed fails the separation
    assert [ok for _, ok, _ in R.p1_claims(r, seeds)] == [False, True, True]
    r2 = copy.deepcopy(r)
    r2["elbo_s1"]["decoder_logvar"] = -1.5  # not 1 below InfoVAE's
    assert R.p1_claims(r2, seeds)[1][1] is False


def test_thresholds_are_fixed_constants():
    """Any edit of a gate or threshold must be deliberate: the report prints them and this test pins
    the set of names (their values are the code's, written before any run)."""
    assert set(R.THRESHOLDS) == {"toy_separated", "toy_overlap", "toy_logvar_drop", "toy_seeds_needed", "small_logdet_gap",
                                 "small_mmd_near", "gate_mi", "gate_margin", "acc_gap", "chance_margin", "uses_z_mi",
                                 "converge_factor"}
    with pytest.raises(ValueError, match="unknown budget"):
        R.reproduce("/tmp/x", budget="tpu")
    with pytest.raises(ValueError, match="unknown part"):
        R.reproduce("/tmp/x", only=["P4"])
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA"):
            R.reproduce("/tmp/x", budget="gpu", device="cpu")


@pytest.mark.slow
def test_demo_one_epoch(tmp_path):
    """`infovae demo` (what `make demo` runs), cut to one epoch: both runs, the report with the sampled-z
    probe beside its floor and a verdict sentence either way, its figures."""
    from infovae.cli import main

    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--epochs", "1", "--no-progress", "--device", "cpu"]) == 0
    report = open(os.path.join(out, "REPORT.md")).read()
    assert re.search(r"^\| mmd \|", report, re.M) and re.search(r"^\| elbo \|", report, re.M)
    assert "floor (untrained)" in report and "sampled-z accuracy" in report
    assert ("carry more class information than ELBO's in this run" in report) != ("do NOT carry more" in report)
    for f in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        with open(os.path.join(out, f), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f
    for name in ("mmd", "elbo"):
        m = json.load(open(os.path.join(out, name, "metrics.json")))
        assert m["epochs_trained"] == 1 and math.isfinite(m["nll"]) and m["latent"] == 10
