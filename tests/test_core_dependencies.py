"""The core (infovae_kernels) needs torch and numpy alone: in a process where every optional package is
unimportable, it imports, runs every public op once, and its command line answers `info`; an optional
package it can use (tqdm) degrades with one clear message.

Everything runs in a subprocess, because the blocking must happen before the first import."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Packages the core must never need. The extras ([model], [triton], [dev]) and what tests and
# benchmarks use; `infovae` is the model layer, which sits on the core and not the other way round.
NON_CORE = ["tqdm", "matplotlib", "mlxtend", "sklearn", "scipy", "triton", "hypothesis", "pytest", "_pytest",
            "pytest_benchmark", "pandas", "PIL", "torchmetrics", "geomloss", "lightning_utilities", "infovae"]

SCRIPT = r'''
import importlib.metadata as md
import io, json, runpy, sys, warnings
from contextlib import redirect_stdout

BLOCKED = json.loads(sys.argv[1])
for name in BLOCKED:
    sys.modules[name] = None          # `import name` raises ImportError, find_spec(name) is None
before = set(sys.modules)

import torch
import infovae_kernels as ik

out = {}
g = torch.Generator().manual_seed(0)
x = torch.randn(12, 3, generator=g, dtype=torch.float64)
y = torch.randn(10, 3, generator=g, dtype=torch.float64) + 0.5

out["mmd"] = float(ik.mmd(x, y, sigma=1.0))
xg = x.clone().requires_grad_()
ik.mmd(xg, y, sigma=[0.5, 2.0], estimator="unbiased").backward()
out["mmd_grad_finite"] = bool(torch.isfinite(xg.grad).all())
out["kernel_sum"] = list(ik.kernel_sum(x, y, sigma=1.0).shape)
out["rbf_gram"] = list(ik.rbf_gram(x, y, sigma=1.0).shape)
out["svgd_direction"] = list(ik.svgd_direction(x, -x).shape)
out["mmd_full"] = float(ik.mmd_full(x, y, sigma=1.0, block_size=5))
out["mmd_test"] = float(ik.mmd_test(x, y, permutations=19, sigma=1.0).p_value)
out["mmd_agg"] = bool(ik.mmd_agg(x, y, permutations=(20, 20)).reject) in (True, False)
out["mmd_power"] = float(ik.mmd_power(x[:10], y, sigma=1.0).criterion)
out["kid"] = float(ik.kid(x, y).value)
metric = ik.metrics.MMD(sigma=1.0)
metric.update(real=x, fake=y)
out["metrics.MMD"] = float(metric.compute())
kid_metric = ik.metrics.KID()
kid_metric.update(real=x, fake=y)
out["metrics.KID"] = float(kid_metric.compute()[0])
out["MMDLoss"] = float(ik.MMDLoss(sigma=1.0)(x, y))
out["mmd_matches_mmd_full"] = abs(out["mmd"] - out["mmd_full"]) < 1e-10

# progress bars: tqdm is optional. The default shows nothing and says nothing; progress=True warns once.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ik.mmd_full(x, y, sigma=1.0, block_size=5)
    ik.kid(x, y, progress=None)
    out["default_progress_warnings"] = [str(w.message) for w in caught]
    caught.clear()
    ik.mmd_full(x, y, sigma=1.0, block_size=5, progress=True)
    ik.mmd_test(x, y, permutations=5, sigma=1.0, progress=True)
    out["progress_true_warnings"] = [(str(w.message), w.filename) for w in caught]

# the demo's data loader names what provides the data
from infovae_kernels import demo
try:
    demo.load_mnist5k()
    out["demo_error"] = None
except ImportError as exc:
    out["demo_error"] = str(exc)

# python -m infovae_kernels info
sys.argv = ["infovae_kernels", "info"]
buf = io.StringIO()
try:
    with redirect_stdout(buf):
        runpy.run_module("infovae_kernels", run_name="__main__", alter_sys=True)
    out["info_exit"] = 0
except SystemExit as exc:
    out["info_exit"] = exc.code
out["info"] = buf.getvalue()

# what got imported, besides the standard library: torch, numpy, torch's own requirements
new = {m.split(".")[0] for m in set(sys.modules) - before if sys.modules.get(m) is not None}
owners = md.packages_distributions()
allowed, todo = set(), ["torch", "numpy"]
while todo:
    dist = todo.pop().lower().replace("_", "-")
    if dist in allowed:
        continue
    allowed.add(dist)
    try:
        reqs = md.requires(dist) or []
    except md.PackageNotFoundError:
        continue
    for req in reqs:
        if "extra ==" not in req:
            todo.append(req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0]
                        .split("!")[0].split("~")[0].strip())
allowed |= {"infovae-kernels"}
out["foreign"] = sorted(m for m in new
                        if owners.get(m) and not {d.lower().replace("_", "-") for d in owners[m]} & allowed)
print("RESULT " + json.dumps(out))
'''


def _run(blocked):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(blocked)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, f"the core failed without {', '.join(blocked)}:\n{proc.stderr[-4000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def bare():
    return _run(NON_CORE)


def test_every_public_op_runs_with_torch_and_numpy_alone(bare):
    assert bare["mmd_grad_finite"] and bare["mmd_matches_mmd_full"]
    assert bare["kernel_sum"] == [12] and bare["rbf_gram"] == [12, 10] and bare["svgd_direction"] == [12, 3]
    assert 0 < bare["mmd_test"] <= 1 and bare["mmd_agg"]
    for name in ("mmd", "mmd_full", "mmd_power", "kid", "metrics.MMD", "metrics.KID", "MMDLoss"):
        assert bare[name] == bare[name], name  # a number, not NaN
    assert bare["foreign"] == [], f"the core imported packages outside torch and numpy: {bare['foreign']}"


def test_cli_info_runs_with_torch_and_numpy_alone(bare):
    assert bare["info_exit"] in (0, None), bare["info"]
    assert "backends:" in bare["info"] and "triton" in bare["info"]


def test_progress_without_tqdm(bare):
    assert bare["default_progress_warnings"] == []
    warned = bare["progress_true_warnings"]
    assert len(warned) == 1, warned  # once per process, however many bars were asked for
    message, filename = warned[0]
    assert "tqdm" in message and "pip install tqdm" in message
    assert "infovae_kernels" not in filename  # points at the caller's line


def test_demo_names_the_extra(bare):
    assert "mlxtend" in bare["demo_error"] and "[model]" in bare["demo_error"]
