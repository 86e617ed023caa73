"""Bad input: a ValueError or TypeError naming the argument, never a crash or a silent wrong number."""

import math

import pytest
import torch

import infovae_kernels as ik
from conftest import DEVICE_BACKENDS

BACKENDS = sorted({b for _, b in DEVICE_BACKENDS if _ == "cpu"})


def _xy(n=5, m=4, d=3, dtype=torch.float32):
    return torch.randn(n, d, dtype=dtype), torch.randn(m, d, dtype=dtype)


def _nan_at(t, value=math.nan):
    t = t.clone()
    t.view(-1)[1] = value
    return t


FUNCS = {
    "mmd": lambda x, y, **kw: ik.mmd(x, y, **kw),
    "kernel_sum": lambda x, y, **kw: ik.kernel_sum(x, y, **kw),
    "rbf_gram": lambda x, y, **kw: ik.rbf_gram(x, y, **kw),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("func", sorted(FUNCS))
@pytest.mark.parametrize("case,exc,match", [
    ("nan_x", ValueError, "x contains NaN"),
    ("inf_y", ValueError, "y contains NaN or Inf"),
    ("empty_x", ValueError, "x is empty"),
    ("empty_y_features", ValueError, "y is empty"),
    ("scalar_x", ValueError, "x must be 2-D"),
    ("vector_y", ValueError, "y must be 2-D"),
    ("3d_x", ValueError, "x and y must both be 2-D"),  # a batch x (B, N, d) needs a batch y
    ("feature_mismatch", ValueError, "x has 3 features but y has 2"),
    ("int_x", TypeError, "x must have a floating dtype"),
    ("bool_y", TypeError, "y must have a floating dtype"),
    ("complex_x", TypeError, "x must have a floating dtype"),
    ("mixed_dtypes", TypeError, "x is torch.float32 but y is torch.float64"),
    ("not_tensor", TypeError, "x must be a torch.Tensor"),
    ("sigma_zero", ValueError, "sigma must be a positive finite float"),
    ("sigma_negative", ValueError, "sigma must be a positive finite float"),
    ("sigma_nan", ValueError, "sigma must be a positive finite float"),
    ("sigma_empty", ValueError, "sigma is an empty sequence"),
    ("sigma_string", ValueError, "sigma must be a positive float, a sequence of them, or 'median'"),
    ("sigma_bool", TypeError, "sigma must be a positive float"),
    ("unknown_backend", ValueError, "backend must be 'auto' or one of"),
])
def test_bad_points_and_sigma(backend, func, case, exc, match):
    x, y = _xy()
    kw = {"backend": backend}
    if case == "nan_x":
        x = _nan_at(x)
    elif case == "inf_y":
        y = _nan_at(y, math.inf)
    elif case == "empty_x":
        x = x[:0]
    elif case == "empty_y_features":
        y = y[:, :0]
    elif case == "scalar_x":
        x = torch.tensor(1.0)
    elif case == "vector_y":
        y = y[:, 0]
    elif case == "3d_x":
        x = x[None]
    elif case == "feature_mismatch":
        y = y[:, :2]
    elif case == "int_x":
        x = x.long()
    elif case == "bool_y":
        y = y > 0
    elif case == "complex_x":
        x = x.to(torch.complex64)
    elif case == "mixed_dtypes":
        y = y.double()
    elif case == "not_tensor":
        x = x.tolist()
    elif case == "unknown_backend":
        kw["backend"] = "numpy"
    else:
        kw["sigma"] = {"sigma_zero": 0.0, "sigma_negative": -1.0, "sigma_nan": math.nan, "sigma_empty": [],
                       "sigma_string": "mean", "sigma_bool": True}[case]
    with pytest.raises(exc, match=match):
        FUNCS[func](x, y, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"kernel": "gauss"}, ValueError, "kernel must be one of"),
    ({"estimator": "mle"}, ValueError, "estimator must be one of"),
    ({"weights_x": -torch.ones(5)}, ValueError, "weights_x must be non-negative"),
    ({"weights_y": torch.zeros(4)}, ValueError, "weights_y are all zero"),
    ({"weights_x": torch.ones(4)}, ValueError, r"weights_x must be 1-D of length 5"),
    ({"weights_y": torch.ones(4, 1)}, ValueError, r"weights_y must be 1-D of length 4"),
    ({"weights_x": torch.ones(5, dtype=torch.long)}, TypeError, "weights_x must have a floating dtype"),
    ({"weights_y": torch.tensor([1.0, math.nan, 1.0, 1.0])}, ValueError, "weights_y contains NaN"),
    ({"weights_x": torch.tensor([0.0, 0, 1, 0, 0]), "estimator": "unbiased"}, ValueError,
     "at least 2 positive weights for x"),
])
def test_bad_mmd_options(backend, kwargs, exc, match):
    x, y = _xy()
    with pytest.raises(exc, match=match):
        ik.mmd(x, y, backend=backend, **kwargs)


@pytest.mark.parametrize("n,m,name", [(1, 4, "x"), (5, 1, "y")])
def test_unbiased_needs_two_points(n, m, name):
    x, y = _xy(n, m)
    with pytest.raises(ValueError, match=f"at least 2 points in {name}"):
        ik.mmd(x, y, estimator="unbiased")


def test_bad_values_and_score():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"v must have shape \(4,\) or \(4, p\)"):
        ik.kernel_sum(x, y, torch.ones(3))
    with pytest.raises(TypeError, match="v must have a floating dtype"):
        ik.kernel_sum(x, y, torch.ones(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="v contains NaN"):
        ik.kernel_sum(x, y, _nan_at(torch.ones(4)))
    with pytest.raises(TypeError, match="y is torch.float32 but v is torch.float64"):
        ik.kernel_sum(x, y, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="score must have the shape of x"):
        ik.svgd_direction(x, y)
    with pytest.raises(ValueError, match="score contains NaN"):
        ik.svgd_direction(x, _nan_at(x))
    with pytest.raises(ValueError, match="kernel must be one of"):
        ik.kernel_sum(x, y, kernel="laplace")


def test_named_backend_that_cannot_run_here_says_why():
    x, y = _xy()
    status = ik.backends.available()
    for name in ("cuda", "triton", "cpu"):
        if not status[name].available:
            with pytest.raises(ValueError, match=f"backend '{name}' is not available"):
                ik.mmd(x, y, backend=name)
    if status["cuda"].available or not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend 'cuda'"):
            ik.mmd(x, y, backend="cuda")
    with pytest.raises(TypeError, match="backend must be a string"):
        ik.mmd(x, y, backend=None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices (CPU and CUDA)")
def test_different_devices():
    x, y = _xy()
    with pytest.raises(ValueError, match="x is on cpu but y is on cuda"):
        ik.mmd(x, y.cuda())


def test_different_devices_meta():
    x, y = _xy()
    with pytest.raises(ValueError, match="x is on cpu but y is on meta"):
        ik.mmd(x, y.to("meta"))
