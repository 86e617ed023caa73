"""Run safety and devices of the model layer (issue 11, items 3 and 7): divergence stops with the step
named before any kernel check, run folders are not silently overwritten, damaged checkpoints are clear
errors, thread counts are saved, and device choices fail clearly."""

import os
import sys
import warnings

import pytest
import torch

try:
    import infovae  # noqa: F401
except ImportError:  # the editable install predates python/infovae: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from infovae import InfoVAE, TrainingDiverged, load_data, train
from infovae.cli import main
from infovae.train import CHECKPOINT, load_checkpoint, load_run, resolve_device

torch.set_num_threads(1)
NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", n_train=256)


def tiny(name, latent=3, **kw):
    torch.manual_seed(0)
    kw.setdefault("hidden", 32)
    return InfoVAE.preset(name, (1, 8, 8), latent, **kw)


# ---- divergence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mmd", "stein"])
def test_non_finite_z_stops_before_the_kernel_check(name, digits, tmp_path):
    """Before: 'x contains NaN or Inf' from the kernels' input check (blaming the data, exit 2). Now the
    model's own guard names z and the step, and the last good checkpoint stays."""
    m = tiny(name)
    run = str(tmp_path / "run")

    def blow_up(step, vals):
        if step == 6:  # epoch 2, after the epoch-1 checkpoint
            with torch.no_grad():
                m.encoder.head.weight.fill_(float("inf"))

    with pytest.raises(TrainingDiverged, match=r"z became NaN/inf at epoch 2, step 7.*last good checkpoint"):
        train(m, digits, epochs=3, batch_size=64, progress=False, out=run, callback=blow_up, device="cpu")
    ck = load_checkpoint(run)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_non_finite_gradient_is_caught(digits):
    m = tiny("elbo")

    def hook(grad):
        return grad * float("nan")

    m.decoder.net[0].weight.register_hook(hook)
    with pytest.raises(TrainingDiverged, match=r"gradient became NaN/inf at epoch 1, step 1"):
        train(m, digits, epochs=1, batch_size=64, progress=False, device="cpu")


def test_cli_divergence_exits_1(tmp_path, capsys, monkeypatch):
    T = sys.modules["infovae.train"]

    real = T.train

    def poisoned(model, *a, **kw):
        def cb(step, vals):
            if step == 2:
                with torch.no_grad():
                    model.encoder.head.weight.fill_(float("nan"))
        return real(model, *a, callback=cb, **kw)

    monkeypatch.setattr(T, "train", poisoned)
    code = main(["train", "--model", "mmd", "--data", "digits", "--latent", "2", "--epochs", "2", "--hidden", "16",
                 "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "step 3" in err and "contains NaN" not in err and "Traceback" not in err


# ---- run folders ----------------------------------------------------------------------------------

def test_train_refuses_a_folder_holding_a_run(digits, tmp_path):
    run = str(tmp_path / "run")
    train(tiny("elbo"), digits, epochs=1, batch_size=64, progress=False, out=run, device="cpu")
    before = open(os.path.join(run, "config.json")).read()
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--force"):
        train(tiny("mmd"), digits, epochs=1, batch_size=64, progress=False, out=run, device="cpu")
    assert open(os.path.join(run, "config.json")).read() == before  # nothing was touched
    for f in ("metrics.json", "latent.png"):  # the old run's evaluation
        open(os.path.join(run, f), "w").write("old")
    train(tiny("mmd"), digits, epochs=1, batch_size=64, progress=False, out=run, device="cpu", force=True)
    assert not os.path.exists(os.path.join(run, "metrics.json")) and not os.path.exists(os.path.join(run, "latent.png"))
    assert load_checkpoint(run)["model_config"]["name"] == "mmd"


def test_cli_train_refuses_then_forces(tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["train", "--data", "digits", "--latent", "2", "--epochs", "1", "--hidden", "16", "--out", run,
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert main(["train", "--resume", "--force", "--out", run]) == 2


# ---- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["random", "truncated", "foreign"])
def test_damaged_checkpoint_is_a_clear_error(damage, digits, tmp_path, capsys):
    run = str(tmp_path / "run")
    train(tiny("elbo"), digits, epochs=1, batch_size=64, progress=False, out=run, device="cpu")
    path = os.path.join(run, CHECKPOINT)
    if damage == "random":
        open(path, "wb").write(os.urandom(4096))
    elif damage == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.pt"):
        load_run(run)
    assert main(["eval", run, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "Traceback" not in err


def test_thread_count_saved_and_resume_with_another_warns(digits, tmp_path):
    run = str(tmp_path / "run")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        m = tiny("elbo")
        train(m, digits, epochs=1, batch_size=64, progress=False, out=run, device="cpu")
        assert load_checkpoint(run)["train_config"]["threads"] == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # same count: no warning
            train(tiny("elbo"), digits, epochs=2, batch_size=64, progress=False, out=run, resume=True, device="cpu")
        torch.set_num_threads(2)
        with pytest.warns(RuntimeWarning, match="trained with 1"):
            train(tiny("elbo"), digits, epochs=3, batch_size=64, progress=False, out=run, resume=True, device="cpu")
    finally:
        torch.set_num_threads(old)


# ---- devices --------------------------------------------------------------------------------------

def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(TypeError, match="device must be"):
        resolve_device(3)


@pytest.mark.skipif(not NO_GPU, reason="a GPU is visible: nothing to refuse")
@pytest.mark.parametrize("cmd", [["train", "--data", "digits", "--out", "{tmp}/r"], ["eval", "{tmp}/r"],
                                 ["sample", "{tmp}/r"], ["demo", "--out", "{tmp}/d"], ["reproduce", "--out", "{tmp}/p"]])
def test_device_cuda_without_gpu_is_a_clear_error(cmd, tmp_path, capsys):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert main([c.replace("{tmp}", str(tmp_path)) for c in cmd] + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err and "AssertionError" not in err


def test_every_tensor_follows_the_model(digits):
    """dtype stands in for device on a CPU-only machine: a float64 model makes float64 noise, samples,
    losses and metrics, so nothing is created with a hard-coded default."""
    from infovae.metrics import iwae_log_likelihood

    for dec in ("mlp", "pixelcnn"):
        m = tiny("aae", decoder=dec, encoder="conv", layers=2).double()
        x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.3)).double()
        out = m(x)
        assert out["loss"].dtype == torch.float64 and out["z"].dtype == torch.float64
        assert m.sample(2, generator=torch.Generator().manual_seed(0)).dtype == torch.float64
        assert iwae_log_likelihood(m, x, k=3).dtype == torch.float64


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["mmd", "stein", "aae"])
def test_train_and_evaluate_on_cuda(name, digits, tmp_path):
    from infovae.metrics import evaluate

    m = tiny(name)
    h = train(m, digits, epochs=2, batch_size=64, progress=False, device="cuda", out=str(tmp_path / "r"))
    assert m.device.type == "cuda" and h["steps"][-1]["loss"] == h["steps"][-1]["loss"]
    res = evaluate(m, digits, iwae_k=3, n_iwae=20, n_samples=100, draws=10)
    assert res["acc_1000"] == res["acc_1000"]
    m2, _, _ = load_run(str(tmp_path / "r"), device="cuda")
    assert m2.device.type == "cuda"


def test_a_previous_version_config_keeps_its_parameterisations():
    """A run saved before issue 11 has no encoder_std in its config: it must be rebuilt with the exp
    std, the batch-mean Stein term and the logistic adversary it was trained with, not today's defaults."""
    old = dict(shape=[1, 8, 8], latent=3, alpha=1.0, lambda_=1.0, divergence="adversarial", encoder="mlp",
               decoder="mlp", likelihood="bernoulli", kernel="rbf", sigma=1.7, estimator="biased", stein_sigma="median",
               backend="auto", hidden=16, layers=None, name="aae")
    m = InfoVAE.from_config(old)
    assert (m.encoder_std, m.stein_reduction, m.adversary) == ("exp", "mean", "logistic")
    assert InfoVAE.from_config(m.config).config == m.config  # a new config round-trips as it is
    with pytest.raises(ValueError, match="not an InfoVAE config"):
        InfoVAE.from_config({"latent": 3})
