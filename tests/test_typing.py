"""Type hints of the public API, which the package ships to type checkers (py.typed).

Every public callable — the names in ik.__all__, the public classes and functions of ik.metrics and
ik.nn, and ik.backends.available / runnable / resolve — must have annotations that resolve
(typing.get_type_hints evaluates the string annotations `from __future__ import annotations` leaves, so
a typo or an undefined name fails here rather than in a user's type checker) and that cover every
parameter (self / cls aside) and the return value. For a class that means its public methods and
__init__ (inherited ones from this package included: metrics.MMD.update lives on a private base) and
the fields of a NamedTuple or dataclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import typing
from typing import Any, Callable, Iterator, Optional

import pytest

import infovae_kernels as ik
from infovae_kernels import backends, metrics
from infovae_kernels import nn as ik_nn


def _own_members(module: Any) -> list[tuple[str, Any]]:
    """Public functions and classes defined in `module` itself (not imported into it)."""
    return [(name, obj) for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__]


def _methods(cls: type) -> Iterator[tuple[str, Callable[..., Any]]]:
    """__init__ and the public methods of cls, including those inherited from classes of this package
    (not torch's nn.Module or tuple's); a dataclass's generated __init__ counts, a NamedTuple's
    generated __new__ and _make / _replace do not (their fields are checked instead)."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("infovae_kernels"):
            continue
        for name, attr in vars(klass).items():
            if name in seen or (name.startswith("_") and name != "__init__"):
                continue
            seen.add(name)
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            elif isinstance(attr, property):
                attr = attr.fget
            if inspect.isfunction(attr):
                yield name, attr


def _public_api() -> dict[str, Any]:
    """Qualified name -> public function or class."""
    api: dict[str, Any] = {}
    for name in ik.__all__:
        obj = getattr(ik, name)
        if not inspect.ismodule(obj):  # backends and metrics: their own public names below
            api[f"ik.{name}"] = obj
    for name in ("available", "runnable", "resolve"):
        api[f"ik.backends.{name}"] = getattr(backends, name)
    for module, prefix in ((metrics, "ik.metrics"), (ik_nn, "ik.nn")):
        for name, obj in _own_members(module):
            api[f"{prefix}.{name}"] = obj
    return api


def _callables() -> dict[str, Callable[..., Any]]:
    """Qualified name -> every function to check (classes expanded into their methods)."""
    out: dict[str, Callable[..., Any]] = {}
    for qualname, obj in _public_api().items():
        if inspect.isclass(obj):
            for name, method in _methods(obj):
                out[f"{qualname}.{name}"] = method
        else:
            out[qualname] = obj
    return out


def unannotated(fn: Callable[..., Any]) -> list[str]:
    """Names of fn's parameters without an annotation (self and cls aside; *args and **kwargs are
    checked too), and "return" when the return value has none. typing.get_type_hints raises if an
    annotation does not resolve."""
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    missing = [p.name for p in params if p.name not in hints]
    return missing + ([] if "return" in hints else ["return"])


CALLABLES = _callables()
CLASSES = {name: obj for name, obj in _public_api().items() if inspect.isclass(obj)}


def test_the_api_list_covers_what_the_brief_names():
    """Guards the collection itself: a broken walk that finds nothing would pass every check below."""
    want = {"ik.mmd", "ik.kernel_sum", "ik.rbf_gram", "ik.svgd_direction", "ik.mmd_full", "ik.mmd_test",
            "ik.mmd_agg", "ik.mmd_power", "ik.kid", "ik.backends.available", "ik.backends.runnable",
            "ik.backends.resolve", "ik.MMDLoss.__init__", "ik.MMDLoss.forward", "ik.RBFKernel.forward",
            "ik.Polynomial.__init__", "ik.metrics.MMD.__init__", "ik.metrics.MMD.update",
            "ik.metrics.MMD.compute", "ik.metrics.MMD.reset", "ik.metrics.KID.__init__",
            "ik.metrics.KID.update", "ik.metrics.KID.compute", "ik.metrics.KID.reset",
            "ik.nn.MMDLoss.forward", "ik.nn.RBFKernel.__init__"}
    assert want <= set(CALLABLES), sorted(want - set(CALLABLES))
    assert {"ik.MMDTestResult", "ik.MMDAggResult", "ik.KIDResult", "ik.MMDPower", "ik.Polynomial"} <= set(CLASSES)


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_callable_is_fully_annotated(name):
    assert unannotated(CALLABLES[name]) == [], f"{name}: parameters / return without a type annotation"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_class_fields_are_annotated(name):
    cls = CLASSES[name]
    hints = typing.get_type_hints(cls)  # resolves every field annotation
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls)]
    else:
        fields = list(getattr(cls, "_fields", ()))  # a NamedTuple's; other classes have none to check
    assert [f for f in fields if f not in hints] == []


def test_the_checker_catches_a_missing_or_broken_annotation():
    def missing_param(x: int, y, *, z: Optional[int] = None) -> int:
        return x

    def missing_return(x: int, **kwargs):
        return x

    def broken(x: NoSuchType) -> int:  # noqa: F821 - the undefined name is the point
        return 0

    assert unannotated(missing_param) == ["y"]
    assert unannotated(missing_return) == ["kwargs", "return"]
    with pytest.raises(NameError):
        unannotated(broken)


def test_py_typed_marker_ships_with_the_package():
    assert (pathlib.Path(ik.__file__).parent / "py.typed").is_file()
