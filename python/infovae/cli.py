"""`infovae train | eval | sample | demo | reproduce` (also `python -m infovae ...`).

Bad arguments, and a missing package of the [model] extra, print `infovae: error: <why>` and exit with
status 2 (no traceback); a diverged run exits with status 1 and keeps its last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from infovae.model import PRESETS
from infovae.nets import DECODERS, ENCODERS
from infovae.data import NAMES as DATA_NAMES

DEMO_EPOCHS = 20
DEMO_MARGIN = 0.05  # accuracy above the untrained floor that counts as 'uses z' (fixed before any demo run)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same format, status 2
        self.print_usage(sys.stderr)
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _sigma(text: str):
    if text == "median":
        return text
    parts = [float(t) for t in text.split(",")]
    return parts[0] if len(parts) == 1 else parts


def _threads(n):
    import torch

    if n is not None:
        if n < 1:
            raise ValueError(f"--threads must be at least 1, got {n}")
        torch.set_num_threads(n)


def _device(a):
    from infovae.train import resolve_device

    return resolve_device(a.device)


def _add_device(p):
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="infovae", description="Train and evaluate the InfoVAE family (ELBO, beta-VAE, AAE, MMD-VAE, Stein-VAE).")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a model into a run folder")
    t.add_argument("--model", default="mmd", help=f"preset: {', '.join(PRESETS)} (default mmd)")
    t.add_argument("--data", default="mnist5k", help=f"data set: {', '.join(DATA_NAMES)} (default mnist5k)")
    t.add_argument("--data-dir", default=None, help="directory of the MNIST IDX files (data 'mnist')")
    t.add_argument("--n-train", type=int, default=None, help="keep only this many training examples")
    t.add_argument("--latent", type=int, default=5)
    t.add_argument("--encoder", default=None, help=f"{', '.join(ENCODERS)} (default: conv for conv/pixelcnn decoders, else mlp)")
    t.add_argument("--decoder", default="mlp", help=f"{', '.join(DECODERS)} (default mlp)")
    t.add_argument("--likelihood", default=None, help="bernoulli or gaussian (default: the data set's)")
    t.add_argument("--alpha", type=float, default=None, help="override the preset's alpha")
    t.add_argument("--lambda", dest="lambda_", type=float, default=None, help="override the preset's lambda")
    t.add_argument("--beta", type=float, default=4.0, help="beta of the 'beta' preset (default 4)")
    t.add_argument("--kernel", default="rbf", help="rbf or imq (mmd divergence)")
    t.add_argument("--sigma", type=_sigma, default=None, help="kernel bandwidth: float, comma list, or median (default sqrt(latent))")
    t.add_argument("--estimator", default="biased", help="biased or unbiased MMD estimator")
    t.add_argument("--backend", default="auto", help="infovae_kernels backend: auto, cpu, torch, cuda, triton")
    t.add_argument("--hidden", type=int, default=None, help="hidden width of the mlp/conv nets")
    t.add_argument("--layers", type=int, default=None, help="depth of the mlp nets / gated layers of the pixelcnn")
    t.add_argument("--encoder-std", default=None, help="sigmoid (the authors', default) or exp")
    t.add_argument("--decoder-std", default=None, help="global (default) or z (gaussian likelihood)")
    t.add_argument("--stein-sigma", type=_sigma, default=None, help="Stein bandwidth: float or median (default sqrt(latent))")
    t.add_argument("--stein-reduction", default=None, help="sum (the authors', default) or mean")
    t.add_argument("--adversary", default=None, help="wgan-gp (the authors', default) or logistic")
    t.add_argument("--force", action="store_true", help="replace a run already in --out")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly (other model options are ignored)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    t.add_argument("--no-progress", action="store_true")
    _add_device(t)

    e = sub.add_parser("eval", help="metrics.json and latent plots of a run")
    e.add_argument("run")
    e.add_argument("--iwae-k", type=int, default=100)
    e.add_argument("--n-iwae", type=int, default=500)
    e.add_argument("--n-samples", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--draws", type=int, default=10, help="label draws of the accuracy probe (default 10)")
    _add_device(e)

    s = sub.add_parser("sample", help="a PNG grid of samples from a run")
    s.add_argument("run")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--png", default=None, help="output file (default RUN/samples.png)")
    s.add_argument("--threads", type=int, default=None)
    _add_device(s)

    d = sub.add_parser("demo", help="about two minutes: MMD-VAE vs ELBO on mnist5k, the sampled-z probe beside its floor")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    d.add_argument("--latent", type=int, default=10)
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--no-progress", action="store_true")
    _add_device(d)

    r = sub.add_parser("reproduce", help="reproduce the InfoVAE paper's experiments")
    r.add_argument("--out", required=True)
    r.add_argument("--quick", action="store_true", help="toy sizes, under 2 minutes (checks the pipeline, not the paper)")
    r.add_argument("--budget", default="cpu", help="cpu (about 100-120 min on 2 cores, default) or gpu (the authors' step counts)")
    r.add_argument("--only", default=None, help="comma list of parts to run: P1, P2, P3 (default all)")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--no-progress", action="store_true")
    _add_device(r)
    return p


def cmd_train(a) -> int:
    from infovae.model import InfoVAE
    from infovae.train import load_checkpoint, train

    _threads(a.threads)
    dev = _device(a)
    if a.resume:
        if a.force:
            raise ValueError("--resume and --force contradict each other (continue the run, or replace it)")
        ck = load_checkpoint(a.out)
        tc = ck["train_config"]
        if a.threads is None and tc.get("threads"):
            import torch

            torch.set_num_threads(tc["threads"])  # restore the run's thread count: a bitwise-exact resume
        model = InfoVAE.from_config(ck["model_config"])
        hist = train(model, tc["data"], data_dir=tc.get("data_dir"), n_train=tc.get("n_train"), epochs=a.epochs,
                     batch_size=tc["batch_size"], lr=tc["lr"], seed=tc["seed"], out=a.out, resume=True,
                     progress=not a.no_progress, device=dev)
    else:
        from infovae.data import load_data

        data = load_data(a.data, data_dir=a.data_dir, n_train=a.n_train)
        kw = dict(decoder=a.decoder, encoder=a.encoder or ("conv" if a.decoder in ("conv", "pixelcnn") else "mlp"),
                  likelihood=a.likelihood or data.likelihood, kernel=a.kernel, sigma=a.sigma, estimator=a.estimator,
                  backend=a.backend, hidden=a.hidden)
        for opt, key in (("layers", "layers"), ("encoder_std", "encoder_std"), ("decoder_std", "decoder_std"),
                         ("stein_sigma", "stein_sigma"), ("stein_reduction", "stein_reduction"), ("adversary", "adversary")):
            if getattr(a, opt) is not None:
                kw[key] = getattr(a, opt)
        if a.alpha is not None:
            kw["alpha"] = a.alpha
        if a.lambda_ is not None:
            kw["lambda_"] = a.lambda_
        import torch

        torch.manual_seed(a.seed)
        model = InfoVAE.preset(a.model, data.shape, a.latent, beta=a.beta, **kw)
        hist = train(model, data, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, out=a.out,
                     progress=not a.no_progress, data_dir=a.data_dir, n_train=a.n_train, device=dev, force=a.force)
    last = hist["epochs"][-1] if hist["epochs"] else {}
    state = "stopped (checkpoint saved; continue with --resume)" if hist["stopped"] else "done"
    print(f"{state}: {a.out}  " + "  ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "epoch"))
    return 0


def evaluate_run(run: str, *, iwae_k=100, n_iwae=500, n_samples=1000, seed=0, device="auto", draws=10,
                 n_samples_autoregressive=1000) -> dict:
    """metrics.json, latent.png, qz_pz.png and samples.png in the run folder; returns the metrics."""
    import torch

    from infovae import plots
    from infovae.metrics import _binarised, encode_all, evaluate
    from infovae.train import atomic_json, load_run

    model, data, ck = load_run(run, device=device)
    m = evaluate(model, data, iwae_k=iwae_k, n_iwae=n_iwae, n_samples=n_samples, seed=seed, draws=draws,
                 n_samples_autoregressive=n_samples_autoregressive)
    m["epochs_trained"], m["steps"] = ck["epoch"], ck["step"]
    atomic_json(m, os.path.join(run, "metrics.json"))
    name = model.config.get("name")
    mu, lv = encode_all(model, _binarised(model, data.x_test, seed))
    g = torch.Generator().manual_seed(seed)
    z = mu + torch.randn(mu.shape, generator=g) * (0.5 * lv).exp()
    plots.latent_scatter(mu, data.y_test, os.path.join(run, "latent.png"), title=f"{name}: test posterior means")
    plots.qz_vs_pz(z, os.path.join(run, "qz_pz.png"), title=f"{name}: q(z) vs p(z)")
    if len(data.shape) == 3:
        auto = getattr(model.decoder, "autoregressive", False)
        plots.save_grid(model.sample(64 if auto else 100, generator=g).cpu(), os.path.join(run, "samples.png"),
                        nrow=8 if auto else 10, title=f"{name} samples")
    return m


def cmd_eval(a) -> int:
    _threads(a.threads)
    m = evaluate_run(a.run, iwae_k=a.iwae_k, n_iwae=a.n_iwae, n_samples=a.n_samples, seed=a.seed, device=_device(a),
                     draws=a.draws)
    print(json.dumps(m, indent=2))
    return 0


def cmd_sample(a) -> int:
    import torch

    from infovae import plots
    from infovae.train import load_run

    _threads(a.threads)
    if a.n < 1:
        raise ValueError(f"--n must be at least 1, got {a.n}")
    model, data, _ = load_run(a.run, device=_device(a))
    if len(data.shape) != 3:
        raise ValueError(f"data {data.name!r} is not images; sample grids need image data")
    png = a.png or os.path.join(a.run, "samples.png")
    plots.save_grid(model.sample(a.n, generator=torch.Generator().manual_seed(a.seed)).cpu(), png, nrow=10)
    print(png)
    return 0


METRIC_COLUMNS = [("mmd", "MMD(q(z),p(z))"), ("ksd", "KSD(q(z),p(z))"), ("ksd_p_value", "KSD test p"),
                  ("logdet_cov_total_test", "logdet Cov (total)"), ("nll", "NLL (nats)"),
                  ("mi", "MI(x;z)"), ("acc_1000", "acc 1000 (sampled z)"), ("acc_floor_1000", "floor (untrained)"),
                  ("acc_mean_1000", "acc 1000 (means)"), ("class_ce", "class CE"), ("class_ce_floor", "CE floor")]


def metrics_table(rows: dict) -> str:
    head = "| model | " + " | ".join(c for _, c in METRIC_COLUMNS) + " |"
    out = [head, "|" + " --- |" * (len(METRIC_COLUMNS) + 1)]
    for name, m in rows.items():
        cells = []
        for k, _ in METRIC_COLUMNS:
            v = m.get(k)
            cells.append("n/a" if v is None else f"{v:.4g}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def cmd_demo(a) -> int:
    import torch

    from infovae.data import load_data
    from infovae.model import InfoVAE
    from infovae.train import train

    _threads(a.threads)
    dev = _device(a)
    if a.epochs < 1 or a.latent < 1:
        raise ValueError("--epochs and --latent must be at least 1")
    t0 = time.time()
    data = load_data("mnist5k")
    rows, secs = {}, {}
    for name in ("mmd", "elbo"):
        run = os.path.join(a.out, name)
        torch.manual_seed(0)
        model = InfoVAE.preset(name, data.shape, a.latent, encoder="mlp", decoder="mlp")
        t = time.time()
        train(model, data, epochs=a.epochs, batch_size=100, seed=0, out=run, progress=not a.no_progress, device=dev,
              force=True)
        rows[name] = evaluate_run(run, iwae_k=20, n_iwae=200, device=dev)
        secs[name] = time.time() - t
    mm, el = rows["mmd"], rows["elbo"]
    floor = max(mm["acc_floor_1000"], el["acc_floor_1000"])
    def uses(m):
        return "above" if m["acc_1000"] > m["acc_floor_1000"] + DEMO_MARGIN else "NOT above"
    verdict = (f"MMD-VAE's sampled-z accuracy (1000 labels, mean of {mm['probe_draws']} draws) is {mm['acc_1000']:.3f}, "
               f"{uses(mm)} its untrained floor {mm['acc_floor_1000']:.3f} by more than {DEMO_MARGIN}; ELBO's is "
               f"{el['acc_1000']:.3f}, {uses(el)} its floor {el['acc_floor_1000']:.3f}. "
               + ("MMD-VAE's codes carry more class information than ELBO's in this run."
                  if mm["acc_1000"] > el["acc_1000"] else
                  "In this run MMD-VAE's codes do NOT carry more class information than ELBO's (the paper's contrast "
                  "was not reproduced here)."))
    lines = ["# infovae demo: MMD-VAE vs ELBO on mnist5k", "",
             f"mlp encoder/decoder (2 x 512), latent {a.latent}, {a.epochs} epochs of the 4,000 training digits, batch 100, "
             f"Adam 1e-3, seed 0, device {dev}; metrics on the 1,000 held-out digits (python/infovae/metrics.py says "
             f"what each is). Total {time.time() - t0:.0f} s on this machine (" +
             ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + f"; 1-minute load average {_loadavg()}). "
             f"With an mlp decoder ELBO has no reason to ignore z (the paper's ELBO collapse needs a powerful "
             f"decoder such as a PixelCNN: `infovae reproduce`, part P3).", "",
             metrics_table(rows), "",
             verdict, "",
             f"Chance (most frequent class) {mm['chance_acc']:.3f}; 'floor' is the same probe on an untrained encoder "
             f"(max of the two: {floor:.3f}). 'acc (means)' is the old probe on posterior means: it cannot see a model "
             f"that ignores z. MMD 0, KSD 0 and log det 0 mean q(z) = p(z); 'KSD test p' is the p-value of the KSD "
             f"goodness-of-fit test of the codes against N(0, I) (small: q(z) is not p(z)). class CE: KL(uniform || class frequencies of "
             f"1,000 samples), 0 = balanced; its floor is real test digits.", ""]
    for name in rows:
        lines += [f"## {name}", "", f"![samples]({name}/samples.png) ![latent]({name}/latent.png)", "",
                  f"![q(z) vs p(z)]({name}/qz_pz.png)", ""]
    path = os.path.join(a.out, "REPORT.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    print("\n".join(lines[:9]))
    print(f"report: {path}")
    return 0


def cmd_reproduce(a) -> int:
    from infovae.reproduce import reproduce

    _threads(a.threads)
    dev = _device(a)
    only = None if a.only is None else [e.strip() for e in a.only.split(",") if e.strip()]
    path = reproduce(a.out, quick=a.quick, progress=not a.no_progress, only=only, budget=a.budget, device=dev)
    print(f"report: {path}")
    return 0


def main(argv=None) -> int:
    from infovae import _extras
    from infovae.train import TrainingDiverged

    absent = _extras.missing(_extras.AT_IMPORT)
    if absent:  # `import infovae` exits the same way before main() when started as the command
        print(f"infovae: error: {_extras.message(absent)}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        return {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "demo": cmd_demo,
                "reproduce": cmd_reproduce}[a.command](a)
    except _UsageError as exc:
        print(f"infovae: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, _extras.MissingExtraError) as exc:
        print(f"infovae: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"infovae: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("infovae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
