"""`infovae reproduce [--quick] [--budget cpu|gpu] --out DIR`: the InfoVAE paper's claims, each one
confirmed, not confirmed, or undecided (budget too short), with the authors' numbers beside ours.

P1 toy      Proposition 1: two points x = -1, +1, latent 2, Gaussian encoder and decoder (3 x 200 MLPs),
            3 seeds: ELBO vs InfoVAE (alpha 0, lambda 1000) vs the authors' code setting (alpha 1,
            lambda 500). Logs gap/sd of the two posteriors, the decoder's sigma, and log p(x) of the two
            points under the model, estimated by sampling z from the prior.
P2 small    N_train 500 / 1000 / 4000 of mnist5k, latent 5, ELBO vs MMD-VAE: total log det Cov[q(z)] on
            train and test beside the authors' figure, the tail fraction of codes, the NLL gap.
P3 pixel    PixelCNN decoder (two-stack gated), latent 10: ELBO, MMD-VAE, Stein, AAE and ELBO with
            beta = 784/d (the authors' v1 effective ELBO), full-batch MMD on held-out data every
            `curve_every` steps, the sampled-z probe beside its floor, beside the authors' table.

Every gate and threshold is a constant below (THRESHOLDS), written before any run; nothing is tuned
on results. A P3 claim is "undecided (budget too short to decide)" when MMD-VAE has not left the
prior (GATE). Quick mode runs everything at toy size to check the pipeline; its verdicts are not
evidence.
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
from infovae.metrics import (_binarised, encode_all, evaluate, full_mmd, iwae_log_likelihood, logdet_cov,
                             sample_codes)
from infovae.model import PIXELS, InfoVAE
from infovae.train import atomic_json, atomic_save, resolve_device, train

PARTS = ("P1", "P2", "P3")
BUDGETS = ("cpu", "gpu")

#: Fixed before any run (issue 11). Never edit these after seeing a result.
THRESHOLDS = dict(
    toy_separated=2.0,         # ELBO: posterior means of x = -1 and +1 more than 2 posterior sd apart
    toy_overlap=1.0,           # InfoVAE: less than 1 sd apart
    toy_logvar_drop=1.0,       # ELBO's decoder log-variance at least 1 below InfoVAE's
    toy_seeds_needed=3,        # of 3 seeds
    small_logdet_gap=1.0,      # ELBO's total log det Cov[q(z)] on train exceeds MMD-VAE's by > 1 nat
    small_mmd_near=1.0,        # |MMD-VAE's total log det on train| < 1 nat (authors: about 0)
    gate_mi=0.5,               # GATE: MMD-VAE has left the prior when MI > 0.5 nats ...
    gate_margin=0.05,          # ... and its sampled-z accuracy beats its untrained floor by > 0.05
    acc_gap=0.1,               # MMD-VAE's sampled-z accuracy above ELBO's by > 0.1
    chance_margin=0.05,        # "at chance": within 0.05 of the most frequent class
    uses_z_mi=0.5,             # a model "uses z" when MI > 0.5 nats
    converge_factor=1.5,       # converged: first curve point within 1.5x (+1e-3) of the final MMD
)

#: The authors' numbers (InfoVAE paper, latent 10, full MNIST, PixelCNN decoder; and their small-data figure).
AUTHORS_P3 = dict(mmd=dict(acc=0.956, mmd=5e-4, logdet=-0.22, class_ce=0.019),
                  stein=dict(acc=0.845, mmd=1.15e-3, logdet=-1.32, class_ce=0.039),
                  aae=dict(acc=0.88, mmd=9.3e-3, logdet=-7.6, class_ce=0.035),
                  elbo=dict(acc=0.10, mmd=4.9e-5, logdet=0.0, class_ce=0.028))
AUTHORS_P2 = {500: "ELBO about 9.0 / 8.3", 1000: "ELBO about 7.7 / 6.9", 4000: "ELBO about 5.8 / 5.1 (at 5000)"}
AUTHORS_P2_INFOVAE = "InfoVAE about 0 on train, -1.5 .. -0.7 on test"

SETTINGS = {
    "quick": dict(
        P1=dict(seeds=[0], n=128, steps=300, batch=64, sample_k=2000),
        P2=dict(data="digits", n_trains=[200], latent=5, steps=60, batch=50, iwae_k=5, n_iwae=100),
        P3=dict(data="digits", n_train=256, latent=10, layers=2, steps=20, batch=64, curve_every=10, iwae_k=5,
                n_iwae=50, n_samples_ar=50, draws=10),
    ),
    "cpu": dict(  # about 100-120 minutes on 2 cores; each part run separately (P3: 30 min idle), see docs/REPRODUCTION.md
        P1=dict(seeds=[0, 1, 2], n=512, steps=3000, batch=64, sample_k=100000),
        P2=dict(data="mnist5k", n_trains=[500, 1000, 4000], latent=5, steps=3000, batch=100, iwae_k=50, n_iwae=500),
        # P3 sized from measured CPU time (1 thread, docs/REPRODUCTION.md): a 4-layer two-stack PixelCNN training
        # step at batch 100 costs 1.39 CPU-s; one decoder pass over 100 images 0.69 CPU-s. Fixed before any P3 run,
        # except n_samples_ar: 100 in the first P3 run, when sampling was one full pass per pixel (784 passes, 9
        # CPU-min per 100 samples); 1000 since the row-cached sampler replaced it (1,000 samples about 13 CPU-s).
        P3=dict(data="mnist5k", n_train=None, latent=10, layers=4, steps=600, batch=100, curve_every=100, iwae_k=20,
                n_iwae=200, n_samples_ar=1000, draws=10),
    ),
    "gpu": dict(  # the authors' step counts (40k-67k PixelCNN steps); needs a GPU
        P1=dict(seeds=[0, 1, 2], n=512, steps=10000, batch=64, sample_k=100000),
        P2=dict(data="mnist5k", n_trains=[500, 1000, 4000], latent=5, steps=20000, batch=100, iwae_k=100, n_iwae=1000),
        P3=dict(data="mnist5k", n_train=None, latent=10, layers=12, steps=50000, batch=100, curve_every=100,
                iwae_k=100, n_iwae=1000, n_samples_ar=1000, draws=10),
    ),
}
P3_MODELS = ("elbo", "mmd", "stein", "aae", "elbo_beta")


def _epochs(steps, n, batch):
    return max(1, math.ceil(steps / max(1, n // min(batch, n))))


def _save_run(run_dir, model, hist, metrics, extra=None):
    os.makedirs(run_dir, exist_ok=True)
    atomic_json(dict(model=model.config, **(extra or {})), os.path.join(run_dir, "config.json"))
    atomic_json(metrics, os.path.join(run_dir, "metrics.json"))
    atomic_json(hist, os.path.join(run_dir, "history.json"))


# ---- P1: the toy of Proposition 1 -------------------------------------------------------------------------

TOY_MODELS = {"elbo": dict(alpha=0.0, lambda_=1.0), "infovae": dict(alpha=0.0, lambda_=1000.0),
              "authors_a1_l500": dict(alpha=1.0, lambda_=500.0)}


@torch.no_grad()
def _prior_loglik(model, x, k, seed):
    """log p(x) = log mean_k p(x|z_k), z_k ~ p(z) (exact as k grows; latent 2)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, model.latent, generator=g).to(model.device)
    out = []
    for xi in x:
        lp = model.log_px_given_z(xi.expand(k, *xi.shape).to(model.device), z)
        out.append(float(torch.logsumexp(lp, 0) - math.log(k)))
    return sum(out) / len(out)


def part1(out, s, progress, device):
    data = load_data("twopoint", n_train=s["n"])
    res, zs = {}, {}
    for seed in s["seeds"]:
        for label, kw in TOY_MODELS.items():
            torch.manual_seed(seed)
            model = InfoVAE((1,), 2, divergence="mmd", encoder="mlp", decoder="mlp", likelihood="gaussian",
                            hidden=200, layers=3, name=label, **kw)
            hist = train(model, data, epochs=_epochs(s["steps"], s["n"], s["batch"]), batch_size=s["batch"], seed=seed,
                         progress=progress, desc=f"P1 {label} s{seed}", device=device)
            with torch.no_grad():
                x = torch.tensor([[-1.0], [1.0]], device=model.device)
                mu, lv = model.encode(x)
                sd = float((0.5 * lv).exp().mean())
                gap = float((mu[1] - mu[0]).norm())
                mua, lva = encode_all(model, data.x_train)
                m = dict(seed=seed, posterior_std=sd, posterior_mean_gap=gap, gap_over_sd=gap / sd,
                         decoder_logvar=float(model.logvar_x.mean()), decoder_sigma=float((0.5 * model.logvar_x.mean()).exp()),
                         loglik_prior_sampled=_prior_loglik(model, x, s["sample_k"], seed),
                         loglik_at_posterior_mean=float(model.log_px_given_z(x, mu).mean()),
                         final_loss=hist["epochs"][-1]["loss"], steps=len(hist["steps"]))
            res[f"{label}_s{seed}"] = m
            if seed == s["seeds"][0]:
                zs[label] = sample_codes(mua, lva, seed)
            _save_run(os.path.join(out, "P1", f"{label}_s{seed}"), model, hist, m, dict(settings=s))
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


# ---- P2: small data ----------------------------------------------------------------------------------------

def part2(out, s, progress, device):
    res = {}
    for n_train in s["n_trains"]:
        data = load_data(s["data"], n_train=n_train)
        n = data.x_train.shape[0]
        for name in ("elbo", "mmd"):
            torch.manual_seed(0)
            model = InfoVAE.preset(name, data.shape, s["latent"])
            hist = train(model, data, epochs=_epochs(s["steps"], n, s["batch"]), batch_size=s["batch"], seed=0,
                         progress=progress, desc=f"P2 {name} N{n}", device=device)
            m = evaluate(model, data, iwae_k=s["iwae_k"], n_iwae=s["n_iwae"], seed=0, floor=False, draws=3)
            with torch.no_grad():
                torch.manual_seed(0)
                xtr = _binarised(model, data.x_train, 1)
                m["nll_train"] = float(-iwae_log_likelihood(model, xtr[:s["n_iwae"]], s["iwae_k"]).mean())
            m["nll_gap"] = m["nll"] - m["nll_train"]
            m["steps"], m["n_train"] = len(hist["steps"]), n
            res[f"{name}_N{n}"] = m
            _save_run(os.path.join(out, "P2", f"{name}_N{n}"), model, hist, m, dict(settings=s))
            if n_train == s["n_trains"][0]:
                mu, lv = encode_all(model, _binarised(model, data.x_test, 0))
                plots.qz_vs_pz(sample_codes(mu, lv, 0), os.path.join(out, f"small_{name}_qz.png"),
                               title=f"{name}, {n} training images: q(z) vs p(z)")
    return res


# ---- P3: PixelCNN decoder, latent 10 ------------------------------------------------------------------------

def part3(out, s, progress, device):
    data = load_data(s["data"], n_train=s["n_train"])
    probe = _binarised_test(data)
    n = data.x_train.shape[0]
    res, curves = {}, {}
    d = s["latent"]
    for name in P3_MODELS:
        torch.manual_seed(0)
        kw = dict(decoder="pixelcnn", encoder="conv", layers=s["layers"])
        model = (InfoVAE.preset("beta", data.shape, d, beta=PIXELS / d, **kw) if name == "elbo_beta"
                 else InfoVAE.preset(name, data.shape, d, **kw))
        model.config["name"] = name
        curve = []

        def track(step, vals, model=model, curve=curve):
            if step % s["curve_every"] == 0:
                with torch.no_grad():
                    mu, lv = encode_all(model, probe)
                    z = sample_codes(mu, lv, 0)
                    prior = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
                    curve.append((step, full_mmd(z, prior, math.sqrt(d))[0]))
                model.train()

        t = time.time()
        hist = train(model, data, epochs=_epochs(s["steps"], n, s["batch"]), batch_size=s["batch"], seed=0,
                     progress=progress, callback=track, desc=f"P3 {name}", device=device)
        train_s = time.time() - t
        run_dir = os.path.join(out, "P3", name)
        os.makedirs(run_dir, exist_ok=True)  # the weights before the metrics: they can be recomputed from model.pt
        atomic_save(dict(model_config=model.config, model=model.state_dict()), os.path.join(run_dir, "model.pt"))
        m = evaluate(model, data, iwae_k=s["iwae_k"], n_iwae=s["n_iwae"], n_samples_autoregressive=s["n_samples_ar"],
                     seed=0, draws=s["draws"])
        m.update(train_seconds=train_s, steps=len(hist["steps"]), mmd_curve=curve, converged_step=_converged_step(curve))
        res[name] = m
        curves[name] = curve
        _save_run(run_dir, model, hist, m, dict(settings=s))
    plots.curves({k: ([c[0] for c in v], [max(c[1], 1e-6) for c in v]) for k, v in curves.items()},
                 os.path.join(out, "pixel_mmd_curve.png"), "full-batch MMD(q(z), p(z)) (held-out images)",
                 title=f"PixelCNN decoder, latent {d}", logy=True)
    return res


def _binarised_test(data):
    return torch.bernoulli(data.x_test, generator=torch.Generator().manual_seed(0))


def _converged_step(curve):
    """First step whose MMD is within 1.5x (+0.001) of the run's final MMD (None without a curve)."""
    if not curve:
        return None
    final = curve[-1][1]
    for step, v in curve:
        if v <= THRESHOLDS["converge_factor"] * final + 1e-3:
            return step
    return curve[-1][0]


# ---- verdicts ------------------------------------------------------------------------------------------------

CONFIRMED, NOT_CONFIRMED, UNDECIDED = "confirmed", "not confirmed", "undecided (budget too short to decide)"


def p1_claims(r, seeds):
    T = THRESHOLDS
    need = min(T["toy_seeds_needed"], len(seeds))
    c1 = [r[f"elbo_s{s}"]["gap_over_sd"] > T["toy_separated"] and r[f"infovae_s{s}"]["gap_over_sd"] < T["toy_overlap"]
          for s in seeds]
    c2 = [r[f"elbo_s{s}"]["decoder_logvar"] < r[f"infovae_s{s}"]["decoder_logvar"] - T["toy_logvar_drop"]
          and r[f"elbo_s{s}"]["loglik_prior_sampled"] > r[f"infovae_s{s}"]["loglik_prior_sampled"] for s in seeds]
    c3 = [r[f"authors_a1_l500_s{s}"]["gap_over_sd"] < T["toy_overlap"] for s in seeds]
    f = lambda key, lab: "; ".join(f"s{s} {r[f'{lab}_s{s}'][key]:.3g}" for s in seeds)
    return [
        ("P1.1 ELBO separates the posteriors of x = -1 and +1 (gap/sd > 2) while InfoVAE (alpha 0, lambda 1000) "
         "keeps them overlapping (gap/sd < 1)", sum(c1) >= need,
         f"{sum(c1)}/{len(seeds)} seeds; gap/sd ELBO {f('gap_over_sd', 'elbo')}; InfoVAE {f('gap_over_sd', 'infovae')}"),
        ("P1.2 ELBO's decoder variance shrinks (log-var > 1 below InfoVAE's) and its model log p(x) (prior-sampled) "
         "exceeds InfoVAE's: it over-fits the two points", sum(c2) >= need,
         f"{sum(c2)}/{len(seeds)} seeds; decoder log-var ELBO {f('decoder_logvar', 'elbo')}; InfoVAE "
         f"{f('decoder_logvar', 'infovae')}; log p(x) ELBO {f('loglik_prior_sampled', 'elbo')}; InfoVAE "
         f"{f('loglik_prior_sampled', 'infovae')}"),
        ("P1.3 the authors' code setting (alpha 1, lambda 500) also keeps the posteriors overlapping (gap/sd < 1)",
         sum(c3) >= need, f"{sum(c3)}/{len(seeds)} seeds; gap/sd {f('gap_over_sd', 'authors_a1_l500')}"),
    ]


def p2_claims(r, ns):
    T = THRESHOLDS
    e = lambda n: r[f"elbo_N{n}"]
    m = lambda n: r[f"mmd_N{n}"]
    c1 = all(e(n)["logdet_cov_total_train"] > m(n)["logdet_cov_total_train"] + T["small_logdet_gap"]
             and abs(m(n)["logdet_cov_total_train"]) < T["small_mmd_near"] for n in ns)
    c2 = all(e(n)["tail_fraction"] > m(n)["tail_fraction"] for n in ns)
    c3 = e(ns[0])["nll_gap"] > m(ns[0])["nll_gap"]
    return [
        ("P2.1 ELBO's q(z) spreads beyond p(z) (total log det Cov on train > MMD-VAE's + 1 nat) while MMD-VAE's "
         "stays near p(z) (|total log det| < 1 nat), at every N", c1,
         "; ".join(f"N {n}: ELBO {e(n)['logdet_cov_total_train']:.3g}/{e(n)['logdet_cov_total_test']:.3g}, MMD-VAE "
                   f"{m(n)['logdet_cov_total_train']:.3g}/{m(n)['logdet_cov_total_test']:.3g} (train/test)" for n in ns)),
        ("P2.2 ELBO puts more codes in the tails of p(z) (tail fraction, 0.01 under p(z)), at every N", c2,
         "; ".join(f"N {n}: ELBO {e(n)['tail_fraction']:.3g} vs MMD-VAE {m(n)['tail_fraction']:.3g}" for n in ns)),
        (f"P2.3 ELBO over-fits more at N {ns[0]} (test NLL minus train NLL)", c3,
         f"ELBO {e(ns[0])['nll_gap']:.3g} vs MMD-VAE {m(ns[0])['nll_gap']:.3g} nats"),
    ]


def p3_gate(r):
    T = THRESHOLDS
    mm = r["mmd"]
    left = mm["mi"] > T["gate_mi"] and mm["acc_1000"] > mm["acc_floor_1000"] + T["gate_margin"]
    return left, (f"MMD-VAE MI {mm['mi']:.3g} nats (gate > {T['gate_mi']}), sampled-z accuracy {mm['acc_1000']:.3g} "
                  f"vs untrained floor {mm['acc_floor_1000']:.3g} (gate: > floor + {T['gate_margin']})")


def p3_claims(r):
    T = THRESHOLDS
    el, mm, eb = r["elbo"], r["mmd"], r["elbo_beta"]
    main = ("elbo", "mmd", "stein", "aae")
    users = {n: r[n] for n in main if r[n]["mi"] > T["uses_z_mi"]}
    best = min(users, key=lambda n: users[n]["mmd"]) if users else None
    ces = sorted((r[n]["class_ce"], n) for n in main)
    conv = {n: r[n]["converged_step"] for n in main}
    return [
        (f"P3.1 MMD-VAE's codes carry class information ELBO's do not (sampled-z accuracy, 1000 labels, higher by "
         f"> {T['acc_gap']})", mm["acc_1000"] > el["acc_1000"] + T["acc_gap"],
         f"MMD-VAE {mm['acc_1000']:.3g} (floor {mm['acc_floor_1000']:.3g}) vs ELBO {el['acc_1000']:.3g} "
         f"(floor {el['acc_floor_1000']:.3g}); authors .956 vs .10"),
        (f"P3.2 ELBO with beta = 784/d (the authors' effective v1 ELBO) ignores z: accuracy within "
         f"{T['chance_margin']} of chance", abs(eb["acc_1000"] - eb["chance_acc"]) < T["chance_margin"],
         f"{eb['acc_1000']:.3g} vs chance {eb['chance_acc']:.3g}; MI {eb['mi']:.3g} nats"),
        ("P3.3 among the models that use z (MI > 0.5 nats), MMD-VAE matches p(z) best (full-batch MMD)", best == "mmd",
         ", ".join(f"{n} {u['mmd']:.3g}" for n, u in users.items()) or "no model used z"),
        ("P3.4 MMD-VAE has the lowest class CE, by more than the metric's noise floor", ces[0][1] == "mmd"
         and ces[1][0] - ces[0][0] > mm["class_ce_floor"],
         ", ".join(f"{n} {v:.3g}" for v, n in ces) + f" (floor {mm['class_ce_floor']:.3g}); authors .019/.039/.035/.028"),
        ("P3.5 AAE converges slowest (steps to within 1.5x of its final full-batch MMD)",
         conv["aae"] is not None and conv["aae"] >= max(v for v in conv.values() if v is not None),
         ", ".join(f"{n} {v}" for n, v in conv.items())),
    ]


def claims(p1, p2, p3, s):
    out = []
    if p1 is not None:
        out += [(c, CONFIRMED if ok else NOT_CONFIRMED, n) for c, ok, n in p1_claims(p1, s["P1"]["seeds"])]
    if p2 is not None:
        ns = sorted({m["n_train"] for m in p2.values()})
        out += [(c, CONFIRMED if ok else NOT_CONFIRMED, n) for c, ok, n in p2_claims(p2, ns)]
    if p3 is not None:
        left, why = p3_gate(p3)
        for c, ok, n in p3_claims(p3):
            out.append((c, (CONFIRMED if ok else NOT_CONFIRMED) if left else UNDECIDED, n + ("" if left else f"; gate: {why}")))
    return out


# ---- the report ---------------------------------------------------------------------------------------------

def _table(rows, cols):
    lines = ["| run | " + " | ".join(c for c, _ in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for name, m in rows.items():
        cells = []
        for _, k in cols:
            v = m.get(k)
            cells.append("n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOT_RUN = "Not run in this invocation; no numbers are reported for it."


def write_report(out, mode, settings, p1, p2, p3, seconds, device="cpu"):
    s = settings
    cl = claims(p1, p2, p3, s)
    ran = [n for n, r in zip(PARTS, (p1, p2, p3)) if r is not None]
    cmd = "infovae reproduce" + (" --quick" if mode == "quick" else f" --budget {mode}") + \
        ("" if len(ran) == 3 else f" --only {','.join(ran)}") + f" --out {out}"
    L = [f"# Reproducing InfoVAE (Zhao, Song & Ermon) with infovae ({mode})", "",
         f"Produced by `{cmd}` in {seconds / 60:.1f} minutes on {platform.machine()} ({device}) with torch "
         f"{torch.__version__} ({torch.get_num_threads()} threads). Gates and thresholds (THRESHOLDS in "
         f"python/infovae/reproduce.py) were fixed before any run: {json.dumps(THRESHOLDS)}."
         + (" QUICK MODE: every part at toy size to check the pipeline; its verdicts are not evidence." if mode == "quick" else ""),
         "", "## Claims", "", "| claim | verdict | numbers |", "| --- | --- | --- |"]
    L += [f"| {c} | **{v}** | {n} |" for c, v, n in cl]
    L += ["", "## P1. Proposition 1 toy", ""]
    if p1 is None:
        L += [NOT_RUN, ""]
    else:
        L += [_table(p1, [(k, k) for k in ("gap_over_sd", "posterior_std", "decoder_sigma", "decoder_logvar",
                                             "loglik_prior_sampled", "loglik_at_posterior_mean", "steps")]), "",
              "![toy q(z)](toy_qz.png)", ""]
    L += ["## P2. Small data", ""]
    if p2 is None:
        L += [NOT_RUN, ""]
    else:
        L += [_table(p2, [("logdet total train", "logdet_cov_total_train"), ("logdet total test", "logdet_cov_total_test"),
                          ("tail fraction", "tail_fraction"), ("MMD", "mmd"), ("KSD", "ksd"), ("NLL train", "nll_train"),
                          ("NLL test", "nll"), ("NLL gap", "nll_gap"), ("MI", "mi"), ("steps", "steps")]), "",
              "Authors (total log det Cov[q(z)] train / test): " + "; ".join(f"N {k}: {v}" for k, v in AUTHORS_P2.items())
              + f"; {AUTHORS_P2_INFOVAE}.", "",
              "| | ELBO | MMD-VAE |", "| --- | --- | --- |", "| q(z) vs p(z) | ![](small_elbo_qz.png) | ![](small_mmd_qz.png) |", ""]
    L += ["## P3. PixelCNN decoder, latent 10", ""]
    if p3 is None:
        L += [NOT_RUN, ""]
    else:
        left, why = p3_gate(p3)
        L += [f"Gate: {'passed' if left else 'NOT passed (claims undecided)'}: {why}.", "",
              _table(p3, [("acc 1000 (sampled z)", "acc_1000"), ("floor", "acc_floor_1000"), ("acc (means)", "acc_mean_1000"),
                          ("MMD", "mmd"), ("KSD", "ksd"), ("KSD test p", "ksd_p_value"),
                          ("logdet/dim", "logdet_cov_test"), ("class CE", "class_ce"),
                          ("CE floor", "class_ce_floor"), ("NLL", "nll"), ("MI", "mi"), ("converged", "converged_step"),
                          ("steps", "steps"), ("train s", "train_seconds")]), "",
              "Authors (latent 10, full MNIST, 12-layer PixelCNN): " + "; ".join(
                  f"{k}: acc {v['acc']}, MMD {v['mmd']}, log det {v['logdet']}, class CE {v['class_ce']}"
                  for k, v in AUTHORS_P3.items()) + ".", "",
              "![MMD vs steps](pixel_mmd_curve.png)", ""]
    path = os.path.join(out, "REPRODUCTION.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(L) + "\n")
    os.replace(path + ".tmp", path)
    atomic_json(dict(mode=mode, seconds=seconds, parts=ran, settings=s, thresholds=THRESHOLDS, P1=p1, P2=p2, P3=p3,
                     claims=[dict(claim=c, verdict=v, numbers=n) for c, v, n in cl]), os.path.join(out, "results.json"))
    return path


def reproduce(out: str, quick: bool = False, progress: bool = True, only=None, budget: str = "cpu",
              device="auto") -> str:
    """Run the parts (all, or the names in `only`: P1, P2, P3) into out; returns the path of REPRODUCTION.md."""
    if not isinstance(out, str) or not out:
        raise ValueError("reproduce needs an output folder (out)")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    only = list(PARTS) if only is None else [str(p).upper() for p in only]
    bad = [p for p in only if p not in PARTS]
    if bad or not only:
        raise ValueError(f"unknown part(s) {bad} in only; choose from {', '.join(PARTS)}")
    dev = resolve_device(device)
    if budget == "gpu" and not quick and dev.type != "cuda":
        raise ValueError(f"budget 'gpu' runs the authors' step counts (P3: 50,000 PixelCNN steps) and needs a CUDA "
                         f"device, got {str(dev)!r}; use --budget cpu here")
    os.makedirs(out, exist_ok=True)
    mode = "quick" if quick else budget
    s = SETTINGS[mode]
    t0 = time.time()
    p1 = part1(out, s["P1"], progress, dev) if "P1" in only else None
    p2 = part2(out, s["P2"], progress, dev) if "P2" in only else None
    p3 = part3(out, s["P3"], progress, dev) if "P3" in only else None
    return write_report(out, mode, s, p1, p2, p3, time.time() - t0, str(dev))
