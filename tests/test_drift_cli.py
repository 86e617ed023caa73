"""`infovae-kernels drift`: the offline test and the online stream from files, JSON and the plot."""

import json
import subprocess
import sys

import numpy as np
import pytest

from infovae_kernels import drift


def run(*args):
    return subprocess.run([sys.executable, "-m", "infovae_kernels", "drift", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture()
def files(tmp_path):
    g = np.random.default_rng(0)
    ref = g.standard_normal((400, 4)).astype(np.float32)
    same = g.standard_normal((300, 4)).astype(np.float32)
    stream = np.concatenate([g.standard_normal((150, 4)), g.standard_normal((150, 4)) + 1.0]).astype(np.float32)
    paths = {}
    for name, a in (("ref", ref), ("same", same), ("stream", stream), ("wide", g.standard_normal((50, 5)))):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], a)
    return paths


def test_offline_matches_the_detector_and_writes_json(files, tmp_path):
    out = run(files["ref"], files["stream"], "--json", tmp_path / "r.json", "--quiet")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MMD drift: DRIFT at level 0.05")
    got = json.loads((tmp_path / "r.json").read_text())
    want = drift.MMDDrift(np.load(files["ref"]), n_permutations=100).predict(np.load(files["stream"])).to_dict()
    assert {k: got[k] for k in want} == want
    quiet = run(files["ref"], files["same"], "--quiet")
    assert quiet.returncode == 0 and quiet.stdout.startswith("MMD drift: no drift"), quiet.stdout + quiet.stderr


def test_online_stream_json_and_plot(files, tmp_path):
    out = run(files["ref"], files["stream"], "--online", "--ert", 50, "--window", 8, "--json", tmp_path / "o.json",
              "--plot", tmp_path / "o.png", "--quiet")
    assert out.returncode == 0, out.stderr
    got = json.loads((tmp_path / "o.json").read_text())
    assert len(got["test_stats"]) == 300 and len(got["thresholds"]) == 8
    assert got["first_detection"] is not None and got["n_detections"] == len(got["detections"])
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same stream through the class, instance by instance
    det = drift.MMDDriftOnline(np.load(files["ref"]), ert=50, window_size=8, progress=False)
    stats = [det.predict(row).test_stat for row in np.load(files["stream"])]
    assert stats == got["test_stats"]


@pytest.mark.parametrize("args,message", [
    (["wide"], "has 5 features but"),
    (["stream", "--plot", "p.png"], "--plot draws the online statistic"),
    (["stream", "--online", "--ert", "0"], "ert"),
    (["stream", "--online", "--window", "0"], "window_size"),
    (["stream", "--p-val", "2"], "p_val"),
    (["stream", "--sigma", "-1"], "--sigma"),
    (["missing"], "no such file"),
])
def test_bad_arguments_exit_2_with_a_message(files, tmp_path, args, message):
    x = files.get(args[0], tmp_path / "missing.npy")
    out = run(files["ref"], x, *args[1:], "--quiet")
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
