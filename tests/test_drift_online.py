"""MMDDriftOnline (infovae_kernels/drift/online.py): the running-sum statistic against ik.mmd after every step,
the calibration's bootstrap statistics against a direct computation and its thresholds against sequential
type-7 quantiles, the mean run length under no change against ert, detection after a change, the
thresholds after the horizon, reset_state, save / load, every input form, and every bad input."""

import math

import numpy as np
import pytest
import torch

import infovae_kernels as ik
from infovae_kernels import drift, kernels
from infovae_kernels.bandwidth import median_distance
from infovae_kernels.drift.online import MMDDriftOnline, _draw_streams
from infovae_kernels.scale.planning import _NoBar


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run thousands of small calibrations and updates: on one thread they cost the same CPU time
    and do not stall when another process holds the second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def normal(n, d=3, shift=0.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + shift).to(dtype)


def window_now(det, stream, t):
    """The window's features at time t: the starting held-out points, then the stream, the last W."""
    start = det.x_ref[det._held_idx[det._start_idx]]
    return torch.cat([start, stream[:t]])[-det.window_size:]


def state(det):
    return (det.t, det._pos, det._q, det._ring.clone(), det._ring_s.clone(), det.test_stats.clone(),
            det._gen.get_state().clone())


def same_state(a, b):
    return all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(a, b))


KERNELS = [("rbf", None), ("rbf", [0.5, 2.0]), ("imq", 1.5), ("laplacian", 2.0), ("energy", None),
           ("polynomial", None), ("linear", None)]


@pytest.mark.parametrize("kernel,sigma", KERNELS)
def test_statistic_is_the_unbiased_mmd2_after_every_step(kernel, sigma):
    x_ref = normal(80, seed=1)
    w = 5
    det = MMDDriftOnline(x_ref, ert=20, window_size=w, kernel=kernel, sigma=sigma, n_bootstraps=300, progress=False)
    sub_ref = x_ref[det._ref_idx]
    stream = normal(3 * w, shift=0.4, seed=2)
    want0 = float(ik.mmd(sub_ref, window_now(det, stream, 0), kernel=kernel, sigma=det.sigma, estimator="unbiased"))
    assert det._statistic(det._q, float(det._ring_s.sum())) == pytest.approx(want0, rel=1e-10, abs=1e-10)
    for t in range(1, 3 * w + 1):  # before and after t = W
        r = det.predict(stream[t - 1])
        want = float(ik.mmd(sub_ref, window_now(det, stream, t), kernel=kernel, sigma=det.sigma, estimator="unbiased"))
        assert r.test_stat == pytest.approx(want, rel=1e-10, abs=1e-10), (t, r.test_stat, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_statistic_in_lower_precision(dtype):
    # float16 / bfloat16 features compute in float32 (kernels.compute_dtype), as every op of the package
    x_ref = normal(120, d=4, seed=3, dtype=dtype)
    det = MMDDriftOnline(x_ref, ert=20, window_size=4, n_bootstraps=300, progress=False)
    sub_ref = x_ref[det._ref_idx].double()
    stream = normal(12, d=4, shift=0.3, seed=4, dtype=dtype)
    for t in range(1, 13):
        r = det.predict(stream[t - 1])
        want = float(ik.mmd(sub_ref, window_now(det, stream, t).double(), sigma=det.sigma, estimator="unbiased"))
        assert abs(r.test_stat - want) < 1e-5, (t, r.test_stat, want)


@pytest.mark.parametrize("kernel,sigma", [("rbf", None), ("laplacian", 2.0), ("polynomial", None)])
def test_bootstrap_statistics_equal_a_direct_computation(kernel, sigma):
    x_ref = normal(40, seed=5)
    w, seed = 3, 7
    det = MMDDriftOnline(x_ref, ert=10, window_size=w, kernel=kernel, sigma=sigma, n_bootstraps=200, seed=seed,
                         progress=False)
    det._gen.manual_seed(seed)  # the constructor's first draws are the streams: redo them, keeping them
    z = det._prepare(det.x_ref)
    r, total = det._reference_row_sums(_NoBar())
    thresholds, survivors, streams, stats = det._calibrate(z, r, total, keep_streams=True)
    assert thresholds == det.thresholds.tolist() and survivors == det.survivors
    n, k = x_ref.shape[0], 2 * w - 1
    assert streams.shape == (200, k) and stats.shape == (200, w)
    assert all(len(set(row.tolist())) == k for row in streams) and int(streams.min()) >= 0 and int(streams.max()) < n
    for b in range(0, 200, 9):
        held = streams[b]
        keep = torch.ones(n, dtype=torch.bool)
        keep[held] = False
        for step in range(w):
            want = ik.mmd(x_ref[keep], x_ref[held[step:step + w]], kernel=kernel, sigma=det.sigma,
                          estimator="unbiased")
            assert float(stats[b, step]) == pytest.approx(float(want), rel=1e-10, abs=1e-10), (b, step)


def test_thresholds_are_sequential_type7_quantiles_of_the_survivors():
    det = MMDDriftOnline(normal(60, seed=8), ert=15, window_size=4, n_bootstraps=500, seed=3, progress=False)
    det._gen.manual_seed(3)
    z = det._prepare(det.x_ref)
    r, total = det._reference_row_sums(_NoBar())
    _, survivors, _, stats = det._calibrate(z, r, total, keep_streams=True)
    stats = stats.numpy()
    alive = np.ones(len(stats), bool)
    for w in range(4):
        assert survivors[w] == alive.sum()
        b = np.quantile(stats[alive, w], 1 - 1 / 15)  # numpy's default 'linear' is type 7
        assert float(det.thresholds[w]) == pytest.approx(b, rel=1e-13, abs=1e-15)
        alive &= stats[:, w] < b  # a stream at or above b_w drops out
    assert survivors[4] == alive.sum()
    assert survivors[0] - survivors[4] >= 4 * 500 / 15 * 0.5  # about q of the survivors drop per step


def test_streams_are_uniform_without_replacement():
    g = torch.Generator().manual_seed(0)
    e = _draw_streams(g, 20000, 6, 3)
    assert all(len(set(row)) == 3 for row in e.tolist())
    counts = torch.bincount(e[:, 0] * 6 + e[:, 1], minlength=36).reshape(6, 6)  # ordered pairs: 30 cells
    assert torch.all(counts.diagonal() == 0)
    off = counts[~torch.eye(6, dtype=torch.bool)].double()
    assert float(((off - 20000 / 30) ** 2 / (20000 / 30)).sum()) < 70  # chi^2, 29 dof: p ~ 1e-4 at 70


def test_mean_run_length_without_change_is_ert():
    # 160 reference sets x 12 runs (each run after reset_state), ert 20, W 4; the standard error is over
    # reference sets (runs on one set share its split and thresholds). Tolerance fixed before running: 4 SE.
    ert, w = 20, 4
    means = []
    for rep in range(160):
        det = MMDDriftOnline(normal(250, d=2, seed=1000 + rep), ert=ert, window_size=w, n_bootstraps=4000, seed=rep,
                             progress=False)
        g = torch.Generator().manual_seed(5000 + rep)
        runs = []
        for _ in range(12):
            det.reset_state()
            t = 0
            while True:
                t += 1
                assert t < 60 * ert
                if det.predict(torch.randn(2, generator=g, dtype=torch.float64)).is_drift:
                    break
            runs.append(t)
        means.append(np.mean(runs))
    mean, se = float(np.mean(means)), float(np.std(means, ddof=1) / math.sqrt(len(means)))
    assert abs(mean - ert) < 4 * se, (mean, se)


def test_detects_a_mean_shift_well_before_ert():
    ert, w = 200, 10
    det = MMDDriftOnline(normal(500, d=2, seed=11), ert=ert, window_size=w, progress=False)
    assert det.n_bootstraps == int(10 * ert / (1 - 1 / ert) ** w)
    g = torch.Generator().manual_seed(12)
    times = []
    for _ in range(10):
        det.reset_state()
        for t in range(1, ert + 1):
            if det.predict(torch.randn(2, generator=g, dtype=torch.float64) + 1.0).is_drift:
                times.append(t)
                break
    assert len(times) == 10 and float(np.median(times)) <= ert / 10, times


def test_thresholds_after_the_horizon_are_the_last_one():
    w = 5
    det = MMDDriftOnline(normal(100, seed=13), ert=30, window_size=w, progress=False)
    assert det.thresholds.shape == (w,) and det.thresholds.dtype == torch.float64
    stream = normal(4 * w, seed=14)
    stats = []
    for t in range(1, 4 * w + 1):
        r = det.predict(stream[t - 1])
        stats.append(r.test_stat)
        assert r.time == t == det.t
        assert r.threshold == float(det.thresholds[min(t, w - 1)])
        assert r.is_drift == (r.test_stat > r.threshold)
        assert r.ert == 30.0
    assert det.test_stats.dtype == torch.float64 and det.test_stats.tolist() == stats
    assert set(r.to_dict()) == {"is_drift", "distance", "p_val", "threshold", "time", "ert", "test_stat"}


def test_reset_state_redraws_the_starting_window_and_keeps_the_thresholds():
    w = 4
    det = MMDDriftOnline(normal(90, seed=15), ert=25, window_size=w, progress=False)
    thresholds = det.thresholds.clone()
    for x in normal(7, seed=16):
        det.predict(x)
    starts = set()
    for _ in range(12):
        det.reset_state()
        assert det.t == 0 and det.test_stats.numel() == 0
        assert torch.equal(det.thresholds, thresholds)
        idx = det._start_idx.tolist()
        assert len(set(idx)) == w and all(0 <= i < 2 * w - 1 for i in idx)
        assert det._statistic(det._q, float(det._ring_s.sum())) < float(thresholds[0])
        starts.add(tuple(idx))
    assert len(starts) > 6  # redrawn, not reused


def test_default_bandwidth_and_bootstraps():
    x_ref = normal(150, seed=17, dtype=torch.float32)
    det = MMDDriftOnline(x_ref, ert=50, window_size=6, progress=False)
    assert det.sigma == [float(median_distance(x_ref))]
    assert det.n_bootstraps == int(10 * 50 / (1 - 1 / 50) ** 6)
    assert len(det.survivors) == 7 and det.survivors[0] == det.n_bootstraps
    assert det.survivors[-1] >= 8 * 50  # about 10 ert reach the end


def test_save_load_continues_bitwise(tmp_path):
    w = 5
    det = MMDDriftOnline(normal(120, seed=18, dtype=torch.float32), ert=40, window_size=w, kernel="imq",
                         progress=False)
    stream = normal(40, seed=19, dtype=torch.float32, shift=0.2)
    for x in stream[:7]:
        det.predict(x)
    det.save(tmp_path / "d.pt")
    other = drift.load(tmp_path / "d.pt")
    assert isinstance(other, MMDDriftOnline) and same_state(state(det), state(other))
    assert torch.equal(det.thresholds, other.thresholds) and other.sigma == det.sigma and other.t == 7
    for x in stream[7:20]:
        assert det.predict(x) == other.predict(x)
    det.reset_state()
    other.reset_state()  # the generator's state was saved: the same new starting window
    assert torch.equal(det._start_idx, other._start_idx)
    for x in stream[20:]:
        assert det.predict(x) == other.predict(x)
    assert torch.equal(det.test_stats, other.test_stats)


def test_save_load_memmap_reference_and_preprocess(tmp_path):
    ref = normal(100, d=6, seed=20).numpy().astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    det = MMDDriftOnline(np.load(tmp_path / "ref.npy", mmap_mode="r"), ert=20, window_size=4, progress=False)
    det.save(tmp_path / "m.pt")
    assert "x_ref" not in torch.load(tmp_path / "m.pt", weights_only=True)["state"]  # a reference to the file
    other = drift.load(tmp_path / "m.pt")
    x = torch.from_numpy(normal(1, d=6, seed=21).numpy().astype(np.float32))[0]
    assert det.predict(x) == other.predict(x)

    proj = torch.nn.Linear(6, 2).double()
    pre = MMDDriftOnline(torch.from_numpy(ref).double(), ert=20, window_size=4, preprocess_fn=proj, progress=False)
    pre.save(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="preprocess_fn"):
        drift.load(tmp_path / "p.pt")
    back = drift.load(tmp_path / "p.pt", preprocess_fn=proj)
    y = torch.from_numpy(ref[0]).double()
    assert pre.predict(y) == back.predict(y)


def test_every_input_form_of_x_ref_gives_the_same_detector(tmp_path):
    ref = normal(130, d=4, seed=22, dtype=torch.float32)
    np.save(tmp_path / "ref.npy", ref.numpy())
    forms = [ref, ref.numpy(), np.load(tmp_path / "ref.npy", mmap_mode="r"), [ref[:50], ref[50:]],
             lambda: iter([ref[:70].numpy(), ref[70:].numpy()])]
    stream = normal(12, d=4, seed=23, dtype=torch.float32)
    results = []
    for form in forms:
        det = MMDDriftOnline(form, ert=30, window_size=5, batch_size=32, progress=False)
        results.append((det.thresholds.tolist(), [det.predict(x) for x in stream]))
    assert all(r == results[0] for r in results[1:])


def test_preprocess_fn_runs_one_raw_instance():
    raw = normal(100, d=12, seed=24).reshape(100, 3, 4)
    proj = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double()
    det = MMDDriftOnline(raw, ert=20, window_size=4, preprocess_fn=proj, progress=False)
    with torch.no_grad():
        feats = proj(raw)
    plain = MMDDriftOnline(feats, ert=20, window_size=4, progress=False)
    stream = normal(8, d=12, seed=25).reshape(8, 3, 4)
    for x in stream:
        a = det.predict(x)
        with torch.no_grad():
            b = plain.predict(proj(x[None])[0])
        assert a.test_stat == pytest.approx(b.test_stat, rel=1e-9, abs=1e-12) and a.threshold == b.threshold

    def broken(x):
        raise RuntimeError("boom")
    det.preprocess_fn = broken
    before = state(det)
    with pytest.raises(ValueError, match="preprocess_fn failed.*x_t"):
        det.predict(stream[0])
    assert same_state(before, state(det))


def test_progress_bar(capsys):
    MMDDriftOnline(normal(60, seed=26), ert=10, window_size=3, progress=False)
    assert capsys.readouterr().err == ""
    pytest.importorskip("tqdm")
    MMDDriftOnline(normal(60, seed=26), ert=10, window_size=3, progress=True)
    assert "pair" in capsys.readouterr().err


def test_bad_arguments():
    x_ref = normal(41, seed=27)
    for ert in (0, -3, 1, 1.0, 0.5, math.nan, math.inf, True, "500"):
        with pytest.raises(ValueError, match="ert"):
            MMDDriftOnline(x_ref, ert=ert, window_size=4, progress=False)
    for w in (0, 1, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="window_size"):
            MMDDriftOnline(x_ref, ert=20, window_size=w, progress=False)
    MMDDriftOnline(x_ref, ert=5, window_size=20, n_bootstraps=400, progress=False)  # (41 - 1) / 2: n_r = 2
    with pytest.raises(ValueError, match=r"window_size=21 .* at most \(N - 1\) / 2 = 20"):
        MMDDriftOnline(x_ref, ert=5, window_size=21, n_bootstraps=400, progress=False)
    for b in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_bootstraps"):
            MMDDriftOnline(x_ref, ert=20, window_size=4, n_bootstraps=b, progress=False)
    need = math.ceil(20 / (1 - 1 / 20) ** 3)
    MMDDriftOnline(x_ref, ert=20, window_size=4, n_bootstraps=need, progress=False)
    with pytest.raises(ValueError, match=f"n_bootstraps={need - 1} is too small.*n_bootstraps >= {need}"):
        MMDDriftOnline(x_ref, ert=20, window_size=4, n_bootstraps=need - 1, progress=False)
    with pytest.raises(TypeError, match="seed"):
        MMDDriftOnline(x_ref, ert=20, window_size=4, seed="a", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        MMDDriftOnline(x_ref, ert=20, window_size=4, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="progress"):
        MMDDriftOnline(x_ref, ert=20, window_size=4, progress="yes")
    bad = x_ref.clone()
    bad[7, 1] = math.nan
    with pytest.raises(ValueError, match="x_ref contains NaN or Inf at row 7"):
        MMDDriftOnline(bad, ert=20, window_size=4, progress=False)
    with pytest.raises(ValueError, match="sigma"):
        MMDDriftOnline(x_ref, ert=20, window_size=4, kernel="energy", sigma=1.0, progress=False)


def test_bad_instances_are_refused_and_change_nothing():
    x_ref = normal(80, d=3, seed=28, dtype=torch.float32)
    det = MMDDriftOnline(x_ref, ert=20, window_size=4, progress=False)
    twin = MMDDriftOnline(x_ref, ert=20, window_size=4, progress=False)
    stream = normal(10, d=3, seed=29, dtype=torch.float32)
    for x in stream[:3]:
        det.predict(x)
        twin.predict(x)
    nan, inf = stream[3].clone(), stream[3].clone()
    nan[0], inf[2] = math.nan, -math.inf
    cases = [(torch.zeros(4), ValueError, "x_t has 4 features but x_ref has 3"),
             (torch.zeros(3, dtype=torch.float64), TypeError, "x_t is torch.float64 but x_ref is torch.float32"),
             (torch.zeros(3, dtype=torch.int64), TypeError, "x_t must be floating point"),
             (nan, ValueError, "x_t contains NaN or Inf"), (inf, ValueError, "x_t contains NaN or Inf"),
             (stream[:2], ValueError, "a batch of 2 instances"), (torch.zeros(1, 1, 3), ValueError, "one instance"),
             (torch.tensor(1.0), ValueError, "one instance"), ([0.0, 0.0, 0.0], TypeError, "x_t must be one instance"),
             (np.zeros(5, np.float32), ValueError, "x_t has 5 features")]
    for x, exc, msg in cases:
        before = state(det)
        with pytest.raises(exc, match=msg):
            det.predict(x)
        assert same_state(before, state(det)), x
    for x in stream[3:]:
        assert det.predict(x) == twin.predict(x)
    assert det.predict(stream[0].numpy()) == twin.predict(stream[0][None])  # numpy and (1, d) are fine


def test_an_instance_whose_kernel_values_overflow_is_refused():
    x_ref = normal(60, d=3, seed=30, dtype=torch.float32)
    det = MMDDriftOnline(x_ref, ert=10, window_size=3, kernel=ik.Polynomial(degree=16), progress=False)
    before = state(det)
    with pytest.raises(ValueError, match="non-finite statistic"):
        det.predict(torch.full((3,), 1e6))  # (x.y / 3 + 1)^16 beyond float32
    assert same_state(before, state(det))
    det.predict(x_ref[0])
