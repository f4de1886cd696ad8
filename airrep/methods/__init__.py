"""The registry of attribution methods that the LDS table compares.

Each module of this package declares its methods in a module-level ``METHODS`` list of
:class:`Method`; the registry imports every module here and collects them, so adding a
method means adding one file (README, "Adding an attribution method"). Modules keep heavy
imports (torch, dattri) inside their functions: the config validates ``evaluate.methods``
against :func:`row_names` without loading any model code.

A method scores ``(n_test, n_pool)`` pairs; the evaluator pools those scores over each
subset (attention, and/or sum: the row ``name-sum``) so that methods differ only in their
pair scores. It also says what it keeps per pool example (:class:`Stored`), so the LDS
table can be read against storage: a method that takes a storage budget (``sized``, the
gradient methods) is run once per budget in ``evaluate.frontier`` as the row ``name@N``.
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


@dataclass(frozen=True)
class Stored:
    """What a method keeps per pool example to attribute against it: ``numbers``, the count
    the paper compares (an embedding's dimensions; TF-IDF: its vocabulary, as a dense row),
    and ``bytes``, as it is actually stored (fp32 for dense vectors; a sparse TF-IDF row's
    CSR values, column indices and row pointer)."""

    numbers: int
    bytes: float

    @classmethod
    def dense(cls, numbers: int) -> Stored:
        return cls(int(numbers), 4.0 * numbers)

    def __add__(self, other: Stored) -> Stored:
        return Stored(self.numbers + other.numbers, self.bytes + other.bytes)


# What a method's scorer is: (test, pool) -> ((n_test, n_pool) pair scores, what it keeps per pool example).
ScoreFn = Callable[[Sequence["Record"], Sequence["Record"]], tuple["np.ndarray", Stored]]


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to build its scorer: the run's config, the trained AirRep and
    the base LM's local path (for gradient methods)."""

    config: PipelineConfig
    trained: AirRep | None = None
    llm_path: str | None = None


@dataclass(frozen=True)
class Method:
    """``build(context)`` returns the scorer ``(test, pool) -> (scores, Stored)``, or
    ``None`` where the method does not apply (then its rows are skipped, with a log line).
    ``poolings``: the rows it can have (``attention``: ``name``; ``sum``: ``name-sum``); a
    method with only ``sum`` is selected by either name. ``sized``: ``build`` also takes
    ``numbers=N``, a budget of numbers kept per pool example (``evaluate.frontier``)."""

    name: str
    build: Callable[..., ScoreFn | None]
    poolings: tuple[Pooling, ...] = ("attention", "sum")
    summary: str = ""
    sized: bool = False

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


def check_frontier(frontier: dict[str, Sequence[int]]) -> None:
    """Raise ``ValueError`` for a ``evaluate.frontier`` entry that is not a sized method."""
    sized = sorted(name for name, method in registry().items() if method.sized)
    wrong = [name for name in frontier if name not in sized]
    if wrong:
        raise ValueError(f"evaluate.frontier: {wrong} take no storage budget; methods that do: {', '.join(sized)}")


def row_name(entry: str, pooling: Pooling) -> str:
    """The LDS table's row for a :func:`build_methods` entry (``name`` or ``name@N``) and a pooling."""
    name, at, size = entry.partition("@")
    return (name if pooling == "attention" else f"{name}-sum") + at + size


def build_methods(config: PipelineConfig, trained: AirRep | None = None,
                  llm_path: str | None = None) -> dict[str, tuple[ScoreFn, tuple[Pooling, ...]]]:
    """The LDS table's methods, in the order ``config.evaluate.methods`` first names them, then
    each ``evaluate.frontier`` budget (entry ``name@N``): ``{entry: (scorer, poolings)}``, the
    shape :func:`airrep.evaluate.evaluate_methods` takes."""
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
    for name, budgets in config.evaluate.frontier.items():  # checked when the config was validated
        for numbers in budgets:
            scorer = methods[name].build(context, numbers=numbers)
            if scorer is not None:
                out[f"{name}@{numbers}"] = (scorer, methods[name].poolings)
    return out
