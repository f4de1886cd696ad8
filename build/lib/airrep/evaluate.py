"""LDS evaluation of attribution methods on a held-out benchmark (paper §4.1).

Every method yields per-example scores ``(n_test, n_pool)``; one shared pooling function
turns them into group scores of the held-out subsets, and ``lds`` compares those with the
true losses of the base LLM fine-tuned on each subset. The noise ceiling is the LDS of
predicting with a second, independently seeded fine-tune of the same subsets: no method
can be expected to beat it, so it is the honest scale for every number in the table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from airrep.data import Record
from airrep.methods import ScoreFn, row_name
from airrep.metrics import lds
from airrep.model import Pooling, pool_groups_shared

log = logging.getLogger(__name__)


@dataclass
class BenchmarkData:
    """Test set, pool, held-out subsets and the true test losses after each fine-tune."""

    test: list[Record]
    pool: list[Record]
    subsets: np.ndarray  # (n_subsets, subset_size) indices into pool
    losses: np.ndarray  # (n_subsets, n_test)
    losses_repeat: np.ndarray | None = None  # a second seed's losses, for the noise ceiling


@dataclass
class MethodResult:
    """One row. ``dim``: numbers kept per pool example, as the paper counts them; ``bytes``:
    bytes kept per pool example, as stored; ``seconds``: scoring the whole test set against
    the pool (indexing the pool included); ``seconds_per_query``: that over the test set."""

    method: str
    lds: float
    dim: int | None
    seconds: float
    note: str = ""
    bytes: float | None = None
    seconds_per_query: float | None = None


@dataclass
class LDSTable:
    rows: list[MethodResult] = field(default_factory=list)
    noise_ceiling: float | None = None

    def to_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "noise_ceiling": self.noise_ceiling}

    def to_markdown(self) -> str:
        lines = ["| method | LDS×100 | dim | bytes per example | seconds |", "|---|---|---|---|---|"]
        for r in self.rows:
            dim = "-" if r.dim is None else str(r.dim)
            size = "-" if r.bytes is None else f"{r.bytes:,.0f}"
            lines.append(f"| {r.method} | {100 * r.lds:.2f} | {dim} | {size} | {r.seconds:.1f} |")
        if self.noise_ceiling is not None:
            lines.append(f"| *noise ceiling (second seed)* | {100 * self.noise_ceiling:.2f} | - | - | - |")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "lds_table.json", "markdown": out / "lds_table.md", "plot": out / "lds.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        paths["markdown"].write_text(self.to_markdown() + "\n")
        plot_table(self, paths["plot"])
        return paths


def group_lds(sims: np.ndarray, bench: BenchmarkData, pooling: Pooling) -> float:
    """LDS of per-example scores ``(n_test, n_pool)`` pooled over the benchmark's subsets."""
    scores = pool_groups_shared(torch.as_tensor(sims, dtype=torch.float32),
                                torch.as_tensor(bench.subsets, dtype=torch.long), pooling)
    return lds(scores.numpy(), bench.losses.T)


def evaluate_methods(
    bench: BenchmarkData,
    methods: dict[str, tuple[ScoreFn, tuple[Pooling, ...]]],
) -> LDSTable:
    """One row per (method, pooling): ``methods[name] = (score_fn, poolings)``.

    Row names are ``name`` for attention pooling and ``name-sum`` for sum pooling (the
    ablation), with a storage budget's ``@N`` after them. ``seconds`` is the time to score
    the test set against the pool.
    """
    table = LDSTable()
    if bench.losses_repeat is not None:  # over the subsets fine-tuned twice (all, or the first n)
        repeats = len(bench.losses_repeat)
        table.noise_ceiling = lds(-bench.losses_repeat.T, bench.losses[:repeats].T)
    for name, (score_fn, poolings) in methods.items():
        start = time.perf_counter()
        try:
            sims, stored = score_fn(bench.test, bench.pool)
        except Exception as exc:  # one failing baseline must not hide the others' results
            log.exception("method %s failed", name)
            table.rows.append(MethodResult(name, float("nan"), None, 0.0, f"failed: {exc}"))
            continue
        seconds = time.perf_counter() - start
        for pooling in poolings:
            row = row_name(name, pooling)
            table.rows.append(MethodResult(row, group_lds(sims, bench, pooling), stored.numbers, seconds,
                                           bytes=stored.bytes, seconds_per_query=seconds / len(bench.test)))
            log.info("%s: LDS×100 %.2f", row, 100 * table.rows[-1].lds)
    return table


def plot_table(table: LDSTable, path: str | Path) -> Path:
    """A bar chart of LDS×100 per method, with the noise ceiling as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.rows if np.isfinite(r.lds)]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 3.6))
    colors = ["tab:red" if r.method.startswith("airrep") else "tab:gray" for r in rows]
    ax.bar([r.method for r in rows], [100 * r.lds for r in rows], color=colors)
    if table.noise_ceiling is not None:
        ax.axhline(100 * table.noise_ceiling, ls="--", color="black", lw=1, label="noise ceiling")
        ax.legend(loc="upper right")
    ax.set_ylabel("LDS × 100")
    ax.set_title("Attribution quality on held-out subsets")
    ax.axhline(0, color="black", lw=0.5)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
