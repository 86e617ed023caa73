"""The infovae-kernels command line: end to end on .npy/.pt/.csv files, JSON output, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import infovae_kernels as ik
from infovae_kernels import cli, scale


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(33, 3)) + 0.5
    np.save(tmp_path / "x.npy", x)
    torch.save(torch.from_numpy(y), tmp_path / "y.pt")
    np.savetxt(tmp_path / "y.csv", y, delimiter=",", header="a,b,c", comments="")
    return tmp_path, x, y


@pytest.mark.parametrize("yname", ["y.pt", "y.csv"])
def test_mmd_end_to_end(files, yname, capsys):
    tmp, x, y = files
    out = tmp / "res" / "out.json"
    rc = cli.main(["mmd", str(tmp / "x.npy"), str(tmp / yname), "--sigma", "0.5,2", "--estimator", "unbiased",
                   "--block-size", "9", "--backend", "torch", "--json", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "MMD^2" in printed and "x.npy" in printed
    res = json.loads(out.read_text())
    ref = float(ik.mmd(torch.from_numpy(x), torch.from_numpy(y), sigma=[0.5, 2.0], estimator="unbiased",
                       backend="torch"))
    assert res["mmd2"] == pytest.approx(ref, abs=1e-13)
    assert res["sigmas"] == [0.5, 2.0] and res["n_x"] == 40 and res["n_y"] == 33
    assert sorted(os.listdir(tmp / "res")) == ["out.json"]  # no temporary file left behind


def test_permutations_json(files):
    tmp, x, y = files
    out = tmp / "perm.json"
    rc = cli.main(["mmd", str(tmp / "x.npy"), str(tmp / "y.pt"), "--sigma", "median", "--permutations", "19",
                   "--seed", "4", "--json", str(out), "-q"])
    assert rc == 0
    res = json.loads(out.read_text())
    direct = scale.mmd_test(torch.from_numpy(x), torch.from_numpy(y), permutations=19, seed=4, sigma="median")
    assert res["p_value"] == pytest.approx(direct.p_value)
    assert len(res["permutation_statistics"]) == 19
    assert 0 < res["p_value"] <= 1


def _err(capsys, argv):
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def test_bad_files(files, capsys):
    tmp, x, y = files
    xn = str(tmp / "x.npy")
    rc, err = _err(capsys, ["mmd", xn, str(tmp / "missing.npy")])
    assert rc == 2 and "missing.npy: no such file" in err and "Traceback" not in err
    (tmp / "junk.npy").write_bytes(b"not a numpy file")
    rc, err = _err(capsys, ["mmd", xn, str(tmp / "junk.npy")])
    assert rc == 2 and "junk.npy: cannot read" in err
    (tmp / "d.txt").write_text("1,2,3\n")
    rc, err = _err(capsys, ["mmd", xn, str(tmp / "d.txt")])
    assert rc == 2 and "unsupported file type" in err
    (tmp / "ragged.csv").write_text("1,2,3\n4,5\n")
    rc, err = _err(capsys, ["mmd", xn, str(tmp / "ragged.csv")])
    assert rc == 2 and "ragged.csv" in err
    (tmp / "nan.csv").write_text("a,b,c\n1,2,3\n4,,6\n")
    rc, err = _err(capsys, ["mmd", xn, str(tmp / "nan.csv")])
    assert rc == 2 and "nan.csv: row 1 (line 3)" in err
    bad = x.copy()
    bad[17, 1] = np.nan
    np.save(tmp / "nan.npy", bad)
    rc, err = _err(capsys, ["mmd", str(tmp / "nan.npy"), xn, "--block-size", "5"])
    assert rc == 2 and "nan.npy contains NaN or Inf at row 17" in err
    np.save(tmp / "wide.npy", np.ones((5, 4)))
    rc, err = _err(capsys, ["mmd", xn, str(tmp / "wide.npy")])
    assert rc == 2 and "3 features" in err and "wide.npy has 4" in err
    torch.save({"a": 1, "b": 2}, tmp / "obj.pt")
    rc, err = _err(capsys, ["mmd", xn, str(tmp / "obj.pt")])
    assert rc == 2 and "obj.pt" in err
    rc, err = _err(capsys, ["mmd", xn, xn, "--sigma", "-1"])
    assert rc == 2 and "--sigma" in err
    rc, err = _err(capsys, ["mmd", xn, xn, "--max-memory", "lots"])
    assert rc == 2 and "lots" in err
    rc, err = _err(capsys, ["mmd", xn, xn, "--backend", "nope"])
    assert rc == 2 and "backend" in err


def test_ctrl_c(files, capsys, monkeypatch):
    tmp, _, _ = files

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ik, "mmd_full", interrupted)
    out = tmp / "never.json"
    rc, err = _err(capsys, ["mmd", str(tmp / "x.npy"), str(tmp / "y.pt"), "--json", str(out)])
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert not out.exists()


def test_info_and_bench(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "backends:" in text and "devices:" in text
    assert cli.main(["bench", "--builtin", "--quick"]) == 0
    assert "pairs/s" in capsys.readouterr().out


def test_python_dash_m(files):
    tmp, _, _ = files
    proc = subprocess.run([sys.executable, "-m", "infovae_kernels", "mmd", str(tmp / "x.npy"),
                           str(tmp / "y.csv"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MMD^2" in proc.stdout


def test_torchrun_two_ranks_equal_one_process(files):
    tmp, x, y = files
    argv = ["mmd", str(tmp / "x.npy"), str(tmp / "y.pt"), "--sigma", "0.7", "--block-size", "8", "--backend", "cpu"]
    alone = tmp / "alone.json"
    assert cli.main(argv + ["--json", str(alone), "-q"]) == 0
    shared = tmp / "shared.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "infovae_kernels"] + argv + ["--json", str(shared)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("MMD^2") == 1  # only rank 0 reports
    a, b = json.loads(alone.read_text()), json.loads(shared.read_text())
    assert b["mmd2"] == a["mmd2"]  # bitwise: the per-pair partials are summed exactly in a fixed order
    assert b["tile_pairs"] == a["tile_pairs"] > 2
    assert (a["world_size"], b["world_size"]) == (1, 2)


def _mmd_argv(tmp, out):
    return ["mmd", str(tmp / "x.npy"), str(tmp / "y.pt"), "--backend", "torch", "--json", str(out), "-q"]


def test_json_keeps_mode_and_writes_through_symlinks(files):
    tmp, _, _ = files
    real = tmp / "real.json"
    real.write_text("{}")
    os.chmod(real, 0o644)
    link = tmp / "link.json"
    link.symlink_to(real)
    assert cli.main(_mmd_argv(tmp, link)) == 0
    assert link.is_symlink() and "mmd2" in json.loads(real.read_text())
    assert (real.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_json_refuses_special_files_before_computing(files, capsys, monkeypatch, kind):
    tmp, _, _ = files
    target = tmp / "special"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    computed = []
    monkeypatch.setattr(ik, "mmd_full", lambda *a, **k: computed.append(1))
    rc, err = _err(capsys, _mmd_argv(tmp, target))
    assert rc == 2 and "not a regular file" in err and not computed
    assert target.exists() and not target.is_file()  # left as it was


def test_json_unwritable_fails_before_computing(files, capsys, monkeypatch):
    tmp, _, _ = files
    ro = tmp / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    real_access = os.access  # root passes any permission check: make os.access answer as for a user
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    computed = []
    monkeypatch.setattr(ik, "mmd_full", lambda *a, **k: computed.append(1))
    rc, err = _err(capsys, _mmd_argv(tmp, ro / "out.json"))
    assert rc == 2 and "not writable" in err and not computed


def test_non_finite_result_is_an_error_not_a_number(files, capsys, monkeypatch):
    tmp, _, _ = files

    def nan_run(*args, report=None, **kwargs):
        report.update(value=float("nan"))
        return float("nan")

    monkeypatch.setattr(ik, "mmd_full", nan_run)
    rc, err = _err(capsys, ["mmd", str(tmp / "x.npy"), str(tmp / "y.pt")])
    assert rc != 0 and "not finite" in err
