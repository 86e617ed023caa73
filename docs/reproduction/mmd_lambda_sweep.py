"""Re-decide the "mmd" preset's lambda under the sigmoid encoder std (issue 11, item 1), on a VALIDATION
split only: mnist5k's 4,000 training images split 3,000 fit / 1,000 validation (the 1,000 test images
are not touched). conv encoder + conv decoder, latent 10, batch 100, Adam 1e-3, `--steps` steps, seed 0.

Decision rule, fixed before running: among lambda in {100, 1000, 10000}, take the one with the highest
validation sampled-z probe accuracy (1000 labels, 10 draws) whose validation full-set MMD is at most 2x
the smallest MMD of the three; ties go to the paper's 1000.

    python docs/reproduction/mmd_lambda_sweep.py --steps 600 --out docs/reproduction/mmd_lambda_sweep.json
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
from infovae import InfoVAE, load_data, train  # noqa: E402
from infovae.data import Dataset  # noqa: E402
from infovae.metrics import _binarised, encode_all, mutual_information, probe_accuracy, sample_codes  # noqa: E402
from infovae.train import atomic_json  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lambdas", default="100,1000,10000")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    d = load_data("mnist5k")
    val = Dataset("mnist5k-val", d.x_train[:3000], d.y_train[:3000], d.x_train[3000:], d.y_train[3000:], "bernoulli", 10)
    epochs = max(1, round(a.steps / 30))
    rows = {}
    for lam in [float(v) for v in a.lambdas.split(",")] + [None]:
        name = "elbo" if lam is None else f"mmd_{lam:g}"
        torch.manual_seed(0)
        kw = {} if lam is None else dict(lambda_=lam)
        m = InfoVAE.preset("elbo" if lam is None else "mmd", d.shape, 10, encoder="conv", decoder="conv",
                           backend="torch", **kw)
        t = time.time()
        h = train(m, val, epochs=epochs, batch_size=100, seed=0, progress=False, device="cpu")
        with torch.no_grad():
            xtr, xva = _binarised(m, val.x_train, 1), _binarised(m, val.x_test, 0)
            mu_tr, lv_tr = encode_all(m, xtr)
            mu_va, lv_va = encode_all(m, xva)
            z_tr, z_va = sample_codes(mu_tr, lv_tr, 3), sample_codes(mu_va, lv_va, 2)
            prior = torch.randn(z_va.shape, generator=torch.Generator().manual_seed(4))
            mmd = float(ik.mmd(z_va.double(), prior.double(), sigma=math.sqrt(10), estimator="unbiased", backend="torch"))
        acc = probe_accuracy(z_tr.numpy(), val.y_train.numpy(), z_va.numpy(), val.y_test.numpy(), 1000, draws=10)
        rows[name] = dict(lambda_=lam, steps=len(h["steps"]), seconds=time.time() - t, val_probe_1000=acc["mean"],
                          val_mmd=mmd, val_mi=mutual_information(mu_va, lv_va), recon=h["epochs"][-1]["recon"],
                          median_std=float((0.5 * lv_va).exp().median()))
        print(name, rows[name], flush=True)
    cand = {k: v for k, v in rows.items() if v["lambda_"] is not None}
    best_mmd = min(v["val_mmd"] for v in cand.values())
    ok = {k: v for k, v in cand.items() if v["val_mmd"] <= 2 * max(best_mmd, 1e-4)}
    top = max(v["val_probe_1000"] for v in ok.values())
    chosen = [v["lambda_"] for v in ok.values() if v["val_probe_1000"] == top]
    decision = 1000.0 if 1000.0 in chosen else chosen[0]
    out = dict(rule=__doc__.split("Decision rule")[1].split("\n\n")[0], rows=rows, decision=decision)
    print("decision: lambda", decision)
    if a.out:
        atomic_json(out, a.out)


if __name__ == "__main__":
    main()
