"""Why the Stein-VAE collapses to the prior in P3 (issue 21, item 5). Written, with its decision rules,
before the runs.

Setting: P3's CPU budget (docs/REPRODUCTION.md): mnist5k, conv encoder, 4-layer PixelCNN decoder, latent 10,
batch 100, 600 steps, Adam 1e-3, seed 0, the "stein" preset as the authors ran it (surrogate
-sum_i stop_grad(phi_i) . z_i summed over the batch, weight 784 on a per-image NLL averaged over the
batch, fixed bandwidth sigma = sqrt(d)).

Hypotheses, and the measurements that decide them:
- H1, scale (the batch-sum convention). Per code z_i the surrogate's gradient is 784 phi_i, the
  reconstruction's is dNLL_i/dz_i / B. R = median_i |784 phi_i| / median_i |dNLL_i/dz_i / B| on a fixed
  batch of 100 training images, every 50 steps. If R > 10 at every logged step, the encoder follows phi
  whatever x is and q(z|x) becomes the prior: MI -> 0.
- H2, bandwidth. sigma = sqrt(d) against the median pair distance of the codes (reported beside it); a
  bandwidth far from the codes' scale would make phi's repulsion vanish or dominate. Reported, not decided.
- H3, what the collapse looks like. KSD^2(q(z), N(0, I)) of the held-out codes (ik.ksd, imq Stein kernel,
  sigma = sqrt(d), unbiased) and MI(x; z) every 50 steps: a collapse is KSD near 0 with MI near 0.

One variant, fixed before running and not tuned: stein_reduction="mean" (the surrogate averaged over the
batch: per code 784 phi_i / B, the reconstruction's own 1/B). Decision rule: a run "does not collapse"
iff MI > 0.5 nats (P3.3's "uses z") and its sampled-z probe accuracy (1,000 labels) exceeds its untrained
floor by more than 0.1. H1 is supported iff R > 10 at every logged step of the authors' setting and the
variant does not collapse; refuted if the variant collapses too.

    python docs/reproduction/stein_diagnosis.py --out docs/reproduction/stein_diagnosis.json

Follow-up (written after the two runs above refuted H1, before this run): the batch-mean variant still had
R = 41-140 (median 61.5 over its 12 logged steps). One more run, fixed by that number and not tuned:
stein_reduction="mean" with the Stein weight lambda = 784 / 61.5 = 12.75 instead of 784, so that the Stein
push and the reconstruction pull per code are of one size at the median. Same decision rule. If it does
not collapse, the collapse is a matter of the Stein term's weight (the authors' lambda with a per-code
surrogate is ~60x too strong for this decoder), and the P3 table gets this run beside the authors' setting.

    python docs/reproduction/stein_diagnosis.py --follow-up --out docs/reproduction/stein_diagnosis.json
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import infovae_kernels as ik  # noqa: E402
from infovae import InfoVAE, evaluate, load_data, train  # noqa: E402
from infovae.metrics import _binarised, encode_all, mutual_information, sample_codes  # noqa: E402
from infovae.train import atomic_json  # noqa: E402

VARIANTS = {"authors (batch sum)": "sum", "variant (batch mean)": "mean"}
#: The follow-up run: (reduction, lambda), lambda = PIXELS / the batch-mean run's median R (61.5).
FOLLOW_UP = {"follow-up (batch mean, lambda 12.75)": ("mean", 784 / 61.5)}


def gradient_ratio(model, x, seed):
    """(R, median |784 phi_i|, median |dNLL_i/dz_i / B|, median pair distance of z) on the batch x."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.randn(mu.shape, generator=g) * (0.5 * logvar).exp()
    zr = z.clone().requires_grad_()
    nll = -model.log_px_given_z(x, zr)
    g_rec = torch.autograd.grad(nll.mean(), zr)[0]
    phi = ik.svgd_direction(z, -z, sigma=model.stein_sigma)
    g_div = model.div_weight * phi / (x.shape[0] if model.stein_reduction == "mean" else 1)
    div = g_div.norm(dim=1).median().item()
    rec = g_rec.norm(dim=1).median().item()
    return div / rec, div, rec, torch.pdist(z).median().item()


def run(name, reduction, data, steps, batch, log_every, lambda_=None):
    torch.manual_seed(0)
    weight = {} if lambda_ is None else dict(lambda_=lambda_)
    model = InfoVAE.preset("stein", data.shape, 10, decoder="pixelcnn", encoder="conv", layers=4,
                           stein_reduction=reduction, **weight)
    model.config["name"] = name
    probe_x = _binarised(model, data.x_train[:100], 7)
    test_x = _binarised(model, data.x_test, 0)
    sigma = math.sqrt(model.latent)
    trace = []

    def track(step, vals):
        if step % log_every == 0:
            r, div, rec, med = gradient_ratio(model, probe_x, step)
            with torch.no_grad():
                mu, lv = encode_all(model, test_x)
                z = sample_codes(mu, lv, 0).double()
                ksd = float(ik.ksd(z, -z, sigma=sigma))
                mi = mutual_information(mu, lv)
            trace.append(dict(step=step, ratio=r, stein_grad=div, recon_grad=rec, median_pair_distance=med,
                              bandwidth=model.stein_sigma, ksd=ksd, mi=mi))
            print(f"{name} step {step}: R {r:.3g} (stein {div:.3g}, recon {rec:.3g}), median |z_i - z_j| {med:.3g} "
                  f"vs sigma {model.stein_sigma:.3g}, KSD {ksd:.3g}, MI {mi:.3g}", flush=True)
            model.train()

    n = data.x_train.shape[0]
    epochs = max(1, math.ceil(steps / (n // batch)))
    t = time.time()
    train(model, data, epochs=epochs, batch_size=batch, seed=0, progress=False, callback=track)
    seconds = time.time() - t
    m = evaluate(model, data, iwae_k=20, n_iwae=200, n_samples_autoregressive=1000, seed=0, draws=10)
    m.update(train_seconds=seconds, trace=trace)
    return m


def verdict(m):
    """The decision rule: the run uses z iff MI > 0.5 nats and sampled-z accuracy > its floor + 0.1."""
    uses_z = m["mi"] > 0.5 and m["acc_1000"] > m["acc_floor_1000"] + 0.1
    return "does not collapse" if uses_z else "collapses"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", default="docs/reproduction/stein_diagnosis.json")
    p.add_argument("--follow-up", action="store_true", help="run FOLLOW_UP and add it to --out's results")
    a = p.parse_args()
    data = load_data("mnist5k")
    if a.follow_up:
        with open(a.out) as f:
            out = json.load(f)
        for name, (reduction, lambda_) in FOLLOW_UP.items():
            m = run(name, reduction, data, a.steps, a.batch, a.log_every, lambda_)
            out["results"][name] = m
            out["verdicts"][name] = verdict(m)
        atomic_json(out, a.out)
        print(json.dumps(dict(verdicts=out["verdicts"]), indent=1))
        plot(out["results"], os.path.splitext(a.out)[0] + ".png")
        return
    results = {}
    for name, reduction in VARIANTS.items():
        results[name] = run(name, reduction, data, a.steps, a.batch, a.log_every)
    verdicts = {}
    for name, m in results.items():
        verdicts[name] = verdict(m)
    authors, variant = list(VARIANTS)
    ratios = [t["ratio"] for t in results[authors]["trace"]]
    h1 = ("supported" if min(ratios) > 10 and verdicts[variant] == "does not collapse"
          else "refuted" if verdicts[variant] == "collapses" else "not decided (R <= 10 at some step)")
    out = dict(settings=vars(a), results=results, verdicts=verdicts, h1=h1, min_ratio_authors=min(ratios))
    atomic_json(out, a.out)
    print(json.dumps(dict(verdicts=verdicts, h1=h1, min_ratio_authors=min(ratios)), indent=1))
    plot(results, os.path.splitext(a.out)[0] + ".png")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, m in results.items():
        steps = [t["step"] for t in m["trace"]]
        axes[0].semilogy(steps, [t["ratio"] for t in m["trace"]], marker="o", label=name)
        axes[1].plot(steps, [t["ksd"] for t in m["trace"]], marker="o", label=name)
        axes[2].plot(steps, [t["mi"] for t in m["trace"]], marker="o", label=name)
    axes[0].axhline(10, ls="--", c="gray")
    axes[0].set_title("R = |Stein grad| / |recon grad| per code")
    axes[1].set_title("KSD^2(q(z), N(0, I)), held-out codes")
    axes[2].set_title("MI(x; z), nats")
    axes[2].axhline(0.5, ls="--", c="gray")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
