"""infovae: the InfoVAE family (ELBO, beta-VAE, AAE, MMD-VAE, Stein-VAE) on top of infovae_kernels.

    from infovae import InfoVAE, train, load_data, evaluate
    data = load_data("mnist5k")
    model = InfoVAE.preset("mmd", data.shape, latent=5, decoder="conv")
    train(model, data, epochs=5, out="runs/mmd")
    print(evaluate(model, data))
"""

from infovae.data import Dataset, load_data
from infovae.model import PRESETS, InfoVAE
from infovae.train import TrainingDiverged, load_run, train


def evaluate(*args, **kwargs):
    """See infovae.metrics.evaluate."""
    from infovae.metrics import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["InfoVAE", "PRESETS", "train", "evaluate", "load_data", "load_run", "Dataset", "TrainingDiverged"]
