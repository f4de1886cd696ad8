"""The registry of attribution methods that the LDS table compares.

Each module of this package declares its methods in a module-level ``METHODS`` list of
:class:`Method`; the registry imports every module here and collects them, so adding a
method means adding one file (README, "Adding an attribution method"). Modules keep heavy
imports (torch, dattri) inside their functions: the config validates ``evaluate.methods``
against :func:`row_names` without loading any model code.

A method scores ``(n_test, n_pool)`` pairs; the evaluator pools those scores over each
subset (attention, and/or sum: the row ``name-sum``) so that methods differ only in their
pair scores.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from airrep.config import PipelineConfig
    from airrep.data import Record
    from airrep.model import AirRep, Pooling

# What a method's scorer is: (test, pool) -> ((n_test, n_pool) pair scores, numbers kept per pool example).
ScoreFn = Callable[[Sequence["Record"], Sequence["Record"]], tuple["np.ndarray", int]]


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to build its scorer: the run's config, the trained AirRep and
    the base LM's local path (for gradient methods)."""

    config: PipelineConfig
    trained: AirRep | None = None
    llm_path: str | None = None


@dataclass(frozen=True)
class Method:
    """``build(context)`` returns the scorer ``(test, pool) -> (scores, numbers stored per
    pool example)``, or ``None`` where the method does not apply (then its rows are skipped,
    with a log line). ``poolings``: the rows it can have (``attention``: ``name``; ``sum``:
    ``name-sum``); a method with only ``sum`` is selected by either name."""

    name: str
    build: Callable[[MethodContext], ScoreFn | None]
    poolings: tuple[Pooling, ...] = ("attention", "sum")
    summary: str = ""

    def rows(self) -> list[str]:
        return [self.name if p == "attention" else f"{self.name}-sum" for p in self.poolings]

    def selected(self, wanted: set[str]) -> tuple[Pooling, ...]:
        """The poolings whose rows ``wanted`` asks for."""
        if self.poolings == ("sum",):
            return ("sum",) if {self.name, f"{self.name}-sum"} & wanted else ()
        return tuple(p for p, row in zip(self.poolings, self.rows(), strict=True) if row in wanted)


def registry() -> dict[str, Method]:
    """Every method of this package's modules, by name; a name declared twice is an error."""
    methods: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for method in getattr(module, "METHODS", []):
            if method.name in methods:
                raise ValueError(f"attribution method {method.name!r} is declared twice (in {info.name})")
            methods[method.name] = method
    return methods


def row_names() -> list[str]:
    """Every name ``evaluate.methods`` accepts."""
    names: list[str] = []
    for method in registry().values():
        names += method.rows()
        if method.poolings == ("sum",):
            names.append(method.name)
    return sorted(set(names))


def check_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming every unknown entry and listing the valid ones."""
    valid = set(row_names())
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; valid: {', '.join(sorted(valid))}")


def build_methods(config: PipelineConfig, trained: AirRep | None = None,
                  llm_path: str | None = None) -> dict[str, tuple[ScoreFn, tuple[Pooling, ...]]]:
    """The LDS table's methods, in the order ``config.evaluate.methods`` first names them:
    ``{name: (scorer, poolings)}``, the shape :func:`airrep.evaluate.evaluate_methods` takes."""
    import logging

    wanted = list(config.evaluate.methods)
    check_names(wanted)
    methods = registry()
    order = {m: min(i for i, row in enumerate(wanted) if row in (m, f"{m}-sum"))
             for m in methods if methods[m].selected(set(wanted))}
    context = MethodContext(config, trained, llm_path)
    out: dict[str, Any] = {}
    for name in sorted(order, key=order.get):
        scorer = methods[name].build(context)
        if scorer is None:
            logging.getLogger(__name__).info("method %s does not apply to this run; its rows are left out", name)
            continue
        out[name] = (scorer, methods[name].selected(set(wanted)))
    return out
