"""MMDDrift (infovae_kernels/drift/offline.py) and what the detectors share (drift/_base.py): the distance
against the float64 textbook formula, the null false-positive rate and power, every input form,
preprocess_fn, saving and loading, and every bad input."""

import math

import numpy as np
import pytest
import torch

import infovae_kernels as ik
import oracle
from infovae_kernels import drift
from infovae_kernels.bandwidth import median_distance
from infovae_kernels.drift.offline import distance_threshold


def blobs(n, d=5, shift=0.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + shift).to(dtype)


@pytest.mark.parametrize("kernel,sigma", [("rbf", None), ("rbf", [0.5, 2.0]), ("imq", 1.5), ("laplacian", 2.0),
                                          ("energy", None), ("polynomial", None), ("linear", None)])
def test_distance_is_the_unbiased_mmd2(kernel, sigma):
    x_ref, x = blobs(60, seed=1, dtype=torch.float64), blobs(45, shift=0.3, seed=2, dtype=torch.float64)
    det = drift.MMDDrift(x_ref, kernel=kernel, sigma=sigma, n_permutations=20)
    r = det.predict(x)
    sig = det.sigma or [1.0]
    want = oracle.mmd(x_ref, x, sig, kernel if kernel != "polynomial" else ik.Polynomial(), unbiased=True)
    if kernel == "linear":
        want = oracle.mmd(x_ref, x, sig, ik.Polynomial(1, 1.0, 0.0), unbiased=True)
    assert r.distance == pytest.approx(float(want), rel=1e-10, abs=1e-12)
    assert r.distance == pytest.approx(float(ik.mmd(x_ref, x, kernel=kernel, sigma=det.sigma, estimator="unbiased")),
                                       rel=1e-12, abs=1e-14)


def test_default_bandwidth_is_the_median_of_the_reference_set_once():
    x_ref = blobs(300, seed=3)
    det = drift.MMDDrift(x_ref)
    assert det.sigma == [float(median_distance(x_ref))]
    before = list(det.sigma)
    det.predict(blobs(100, shift=5.0, seed=4))
    assert det.sigma == before


def test_null_false_positive_rate_is_the_level():
    # 200 independent null problems at level 0.05: the count of detections is Binomial(200, <= 0.05)
    # (the permutation test is valid, slightly conservative); bounds fixed before running: 2..19
    # (mean 10, sd 3.1: 19 is about 3 sd above)
    detections = 0
    for rep in range(200):
        det = drift.MMDDrift(blobs(60, seed=10_000 + rep), n_permutations=50, seed=rep)
        detections += det.predict(blobs(60, seed=20_000 + rep)).is_drift
    assert 2 <= detections <= 19, detections


def test_power_on_a_mean_shift():
    hits = 0
    for rep in range(20):
        det = drift.MMDDrift(blobs(200, seed=30_000 + rep), n_permutations=100, seed=rep)
        hits += det.predict(blobs(200, shift=0.5, seed=40_000 + rep)).is_drift
    assert hits >= 18, hits


def test_is_drift_agrees_with_the_distance_threshold():
    for rep in range(30):
        det = drift.MMDDrift(blobs(80, seed=50_000 + rep), n_permutations=60, seed=rep)
        r = det.predict(blobs(80, shift=0.15 * (rep % 4), seed=60_000 + rep))
        assert r.is_drift == (r.distance > r.distance_threshold), r
        assert r.is_drift == (r.p_val < 0.05)
    assert distance_threshold(torch.arange(10.0), 0.05) == math.inf  # 10 permutations cannot reach 0.05


def test_result_has_alibi_detects_keys():
    r = drift.MMDDrift(blobs(50, seed=5), n_permutations=20).predict(blobs(50, seed=6, shift=3.0))
    d = r.to_dict()
    assert set(d) == {"is_drift", "p_val", "threshold", "distance", "distance_threshold"}
    assert d["is_drift"] == 1 and d["threshold"] == 0.05
    r2 = drift.MMDDrift(blobs(50, seed=5), n_permutations=20).predict(blobs(50, seed=6), return_p_val=False,
                                                                          return_distance=False)
    assert r2.p_val is None and r2.distance is None and r2.distance_threshold is None


def test_every_input_form_gives_the_same_answer(tmp_path):
    ref, x = blobs(130, seed=7), blobs(90, shift=0.2, seed=8)
    np.save(tmp_path / "ref.npy", ref.numpy())
    np.save(tmp_path / "x.npy", x.numpy())
    forms = {
        "tensor": (ref, x),
        "numpy": (ref.numpy(), x.numpy()),
        "memmap": (np.load(tmp_path / "ref.npy", mmap_mode="r"), np.load(tmp_path / "x.npy", mmap_mode="r")),
        "chunks": ([ref[:50], ref[50:]], [x[:33].numpy(), x[33:]]),
        "callable": (lambda: iter([ref[:7], ref[7:]]), lambda: iter([x])),
    }
    results = {k: drift.MMDDrift(a, n_permutations=40).predict(b) for k, (a, b) in forms.items()}
    first = results["tensor"]
    for k, r in results.items():
        assert r == first, k
    with pytest.raises(TypeError, match="one-shot iterator"):
        drift.MMDDrift(iter([ref]))


def test_preprocess_fn_runs_in_batches_without_grad_on_the_reference_once():
    proj = torch.nn.Linear(5, 3)
    calls = []

    def fn(batch):
        calls.append(batch.shape[0])
        assert not torch.is_grad_enabled()
        return proj(batch)

    ref, x = blobs(250, seed=9), blobs(70, shift=0.4, seed=10)
    det = drift.MMDDrift(ref, preprocess_fn=fn, batch_size=100, n_permutations=30)
    assert calls == [100, 100, 50] and not det.x_ref.requires_grad
    r = det.predict(x)
    assert calls[3:] == [70]
    with torch.no_grad():
        plain = drift.MMDDrift(proj(ref), n_permutations=30).predict(proj(x))
    assert r == plain
    # images through a module: rows of any shape, integer rows too
    imgs = torch.randint(0, 255, (40, 1, 4, 4), dtype=torch.uint8)
    conv = drift.MMDDrift(imgs, preprocess_fn=lambda b: b.float().flatten(1) / 255, n_permutations=20)
    assert conv.x_ref.shape == (40, 16)


def test_save_and_load_give_bitwise_the_same_predictions(tmp_path):
    ref, x = blobs(120, seed=11), blobs(80, shift=0.25, seed=12)
    det = drift.MMDDrift(ref, kernel="imq", sigma=[0.7, 2.0], n_permutations=60, seed=3)
    det.save(tmp_path / "d.pt")
    again = drift.load(tmp_path / "d.pt")
    assert type(again) is drift.MMDDrift and again.predict(x) == det.predict(x)
    # a preprocess_fn is passed again at load
    proj = torch.nn.Linear(5, 2)
    det = drift.MMDDrift(ref, preprocess_fn=proj, n_permutations=30)
    det.save(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="pass it again, load\\(path, preprocess_fn=...\\)"):
        drift.load(tmp_path / "p.pt")
    assert drift.load(tmp_path / "p.pt", preprocess_fn=proj).predict(x) == det.predict(x)
    with pytest.raises(TypeError, match="unexpected arguments"):
        drift.load(tmp_path / "d.pt", kernel=1)


def test_a_memory_mapped_reference_is_saved_as_its_file(tmp_path):
    ref, x = blobs(100, seed=13), blobs(100, seed=14, shift=0.3)
    np.save(tmp_path / "ref.npy", ref.numpy())
    det = drift.MMDDrift(np.load(tmp_path / "ref.npy", mmap_mode="r"), n_permutations=30)
    det.save(tmp_path / "d.pt")
    assert (tmp_path / "d.pt").stat().st_size < ref.numel() * 4  # the data are not in the detector file
    assert drift.load(tmp_path / "d.pt").predict(x) == det.predict(x)
    arr = np.load(tmp_path / "ref.npy")
    arr[3, 1] += 1.0
    np.save(tmp_path / "ref.npy", arr)
    with pytest.raises(ValueError, match="changed since the detector was saved"):
        drift.load(tmp_path / "d.pt")


def test_damaged_and_foreign_files_are_clear_errors(tmp_path):
    det = drift.MMDDrift(blobs(40, seed=15), n_permutations=20)
    det.save(tmp_path / "d.pt")
    data = (tmp_path / "d.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable drift detector file"):
        drift.load(tmp_path / "cut.pt")
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an infovae-kernels drift detector file"):
        drift.load(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable drift detector file"):
        drift.load(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError):
        drift.load(tmp_path / "missing.pt")
    # an interrupted save leaves the previous file whole
    class Boom(drift.MMDDrift):
        def _payload(self):
            raise KeyboardInterrupt

    bad = Boom.__new__(Boom)
    with pytest.raises(KeyboardInterrupt):
        bad.save(tmp_path / "d.pt")
    assert (tmp_path / "d.pt").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_bad_input_names_the_argument_and_changes_nothing():
    ref = blobs(50, seed=16)
    det = drift.MMDDrift(ref, n_permutations=20)
    before = (det.x_ref.clone(), list(det.sigma))
    bad_x = blobs(30, seed=17)
    bad_x[7, 2] = float("nan")
    cases = [
        (lambda: det.predict(blobs(30, d=4, seed=18)), ValueError, "x has 4 features but x_ref has 5"),
        (lambda: det.predict(blobs(30, seed=18, dtype=torch.float64)), TypeError, "x is torch.float64 but x_ref"),
        (lambda: det.predict(bad_x), ValueError, "x contains NaN or Inf at row 7"),
        (lambda: det.predict(blobs(0, seed=18)), ValueError, "x has no rows"),
        (lambda: det.predict(blobs(1, seed=18)), ValueError, "x needs at least 2 rows"),
        (lambda: det.predict(torch.randn(3, 2, 2)), ValueError, "x must be 2-D"),
        (lambda: det.predict("x.npy"), TypeError, "x must be a tensor, a numpy array or chunks"),
        (lambda: drift.MMDDrift(ref, p_val=0.0), ValueError, "p_val must be a float in \\(0, 1\\)"),
        (lambda: drift.MMDDrift(ref, p_val=1.5), ValueError, "p_val must be a float in \\(0, 1\\)"),
        (lambda: drift.MMDDrift(ref, n_permutations=0), ValueError, "n_permutations must be a positive int"),
        (lambda: drift.MMDDrift(ref, sigma=-1.0), ValueError, "sigma"),
        (lambda: drift.MMDDrift(ref, kernel="energy", sigma=1.0), ValueError, "sigma"),
        (lambda: drift.MMDDrift(ref, kernel="gaussian"), ValueError, "kernel"),
        (lambda: drift.MMDDrift(blobs(1, seed=1)), ValueError, "x_ref needs at least 2 rows"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert torch.equal(det.x_ref, before[0]) and det.sigma == before[1]


def test_a_failing_or_misshapen_preprocess_fn_is_named():
    ref = blobs(30, seed=19)

    def boom(batch):
        raise RuntimeError("out of memory")

    with pytest.raises(ValueError, match="preprocess_fn failed on rows 0:30 of x_ref: RuntimeError: out of memory"):
        drift.MMDDrift(ref, preprocess_fn=boom)
    det = drift.MMDDrift(ref, preprocess_fn=lambda b: b[:, :3])
    with pytest.raises(ValueError, match="x has 2 features but x_ref has 3"):
        det.predict(blobs(20, seed=20)[:, :2].contiguous())
    with pytest.raises(ValueError, match="preprocess_fn must return \\(30, d\\) features"):
        drift.MMDDrift(ref, preprocess_fn=lambda b: b[:5])
    with pytest.raises(TypeError, match="preprocess_fn must return a tensor or a numpy array"):
        drift.MMDDrift(ref, preprocess_fn=lambda b: b.tolist())
    with pytest.raises(ValueError, match="x_ref after preprocess_fn contains NaN or Inf at row 0"):
        drift.MMDDrift(ref, preprocess_fn=lambda b: b / 0.0)
