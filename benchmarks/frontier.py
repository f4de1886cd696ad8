"""LDS against cost: storage per training example and attribution seconds per query.

The paper's claim is a cost claim: AirRep matches gradient attribution while storing a small
fraction of the numbers and attributing faster. The LDS table alone cannot show it, because
its methods keep different amounts per example. This module reads the rows the bench already
measured (each row carries ``dim``, ``bytes`` and ``seconds_per_query``; the gradient methods
run at several storage budgets, ``evaluate.frontier``) and draws the frontier from them.
Nothing here measures anything.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

# The rows on the frontier: AirRep and its dense term, the untrained encoder and TF-IDF as
# points; every gradient row (its main budget and each ``@N``) as a curve per method.
POINTS = ("airrep", "airrep-dense", "encoder", "tfidf")
CURVES = ("logra-sum", "trak-sum", "tracin-sum")


def family(method: str) -> str | None:
    """The frontier series a row belongs to (``logra-sum@384`` -> ``logra-sum``), or None."""
    base = method.partition("@")[0]
    return base if base in POINTS or base in CURVES else None


def frontier_points(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one LDS table that belong on the frontier and were measured, cheapest first."""
    rows = [r for r in table["rows"] if family(r["method"]) and r.get("bytes") and r["lds"] is not None
            and np.isfinite(r["lds"])]
    return sorted(rows, key=lambda r: (family(r["method"]), r["bytes"]))


def storage_to_match(points: list[dict[str, Any]], curve: str, target: dict[str, Any]) -> str:
    """Where ``curve`` (e.g. LoGra) reaches ``target``'s LDS, in multiples of its bytes per
    example, interpolated linearly in log-bytes between measured budgets; a sentence."""
    series = sorted((r for r in points if family(r["method"]) == curve), key=lambda r: r["bytes"])
    if not series:
        return f"{curve} was not measured."
    ratio = [r["bytes"] / target["bytes"] for r in series]
    lds = [r["lds"] for r in series]
    goal = target["lds"]
    if lds[0] >= goal:
        return (f"{curve} is at or above {target['method']} already at its smallest budget, "
                f"{series[0]['dim']} numbers ({ratio[0]:.2g}× {target['method']}'s bytes).")
    for (r0, l0), (r1, l1) in itertools.pairwise(zip(ratio, lds, strict=True)):
        if l0 < goal <= l1:
            k = math.exp(math.log(r0) + (goal - l0) / (l1 - l0) * (math.log(r1) - math.log(r0)))
            return f"{curve} needs about {k:.2g}× {target['method']}'s bytes per example to match it."
    return (f"{curve} stays below {target['method']} up to its largest budget, {series[-1]['dim']} numbers "
            f"({ratio[-1]:.2g}× {target['method']}'s bytes; LDS×100 {100 * lds[-1]:.2f} against "
            f"{100 * goal:.2f}).")


def has_frontier(results: dict[str, Any]) -> bool:
    """Whether some dataset has a gradient method at two budgets or more: a frontier to draw."""
    return any(sum(family(r["method"]) in CURVES for r in frontier_points(d["table"])) > 1
               for d in results["datasets"].values())


def frontier_markdown(results: dict[str, Any]) -> list[str]:
    """The frontier section of RESULTS.md: one table per dataset and the storage sentence."""
    if not has_frontier(results):
        return []
    datasets = {name: frontier_points(d["table"]) for name, d in results["datasets"].items()}
    lines = ["", "## LDS against cost (the frontier)", "",
             "Each method's LDS against what it keeps per training example and what it costs per query, all "
             "measured in this run. Bytes: fp32 for dense vectors (an embedding, a projected gradient); TF-IDF rows "
             "as stored, sparse (values, column indices, row pointers); AirRep keeps both. Seconds per query: "
             "scoring the whole benchmark test set against its pool, indexing the pool included, over the number of "
             "test examples. The gradient methods run at several storage budgets (`evaluate.frontier`; LoGra's is "
             "the largest per-layer square within the budget).", ""]
    for name, points in datasets.items():
        lines += [f"**{name}**", "", "| method | numbers per example | bytes per example | s per query | LDS×100 |",
                  "|---|---|---|---|---|"]
        for r in points:
            spq = "-" if r.get("seconds_per_query") is None else f"{r['seconds_per_query']:.2g}"
            lines.append(f"| {r['method']} | {r['dim']} | {r['bytes']:,.0f} | {spq} | {100 * r['lds']:.2f} |")
        airrep = next((r for r in points if r["method"] == "airrep"), None)
        if airrep:
            lines += ["", *(f"- {storage_to_match(points, c, airrep)}" for c in CURVES
                            if any(family(r["method"]) == c for r in points))]
        lines.append("")
    lines += ["![LDS against storage and query time](results/quality-frontier.png)"]
    return lines


def plot_frontier(results: dict[str, Any], path: Path) -> None:
    """LDS×100 against bytes per example (top) and seconds per query (bottom), log scale, one
    column per dataset: the gradient methods as lines over their budgets, the rest as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 7.5), squeeze=False)
    styles = {"airrep": ("tab:red", "*", 14), "airrep-dense": ("tab:pink", "o", 8), "encoder": ("tab:gray", "s", 8),
              "tfidf": ("tab:olive", "D", 8)}
    colors = {"logra-sum": "tab:blue", "trak-sum": "tab:green", "tracin-sum": "tab:purple"}
    for column, name in enumerate(names):
        points = frontier_points(results["datasets"][name]["table"])
        for row, (key, label) in enumerate((("bytes", "bytes stored per training example"),
                                            ("seconds_per_query", "attribution seconds per query"))):
            ax = axes[row][column]
            for series in dict.fromkeys(family(r["method"]) for r in points):
                chosen = [r for r in points if family(r["method"]) == series and r.get(key)]
                chosen.sort(key=lambda r: r["bytes"])
                x, y = [r[key] for r in chosen], [100 * r["lds"] for r in chosen]
                if series in CURVES:
                    ax.plot(x, y, "-o", color=colors[series], label=series)
                    for r, xi, yi in zip(chosen, x, y, strict=True):
                        ax.annotate(str(r["dim"]), (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7)
                else:
                    color, marker, size = styles[series]
                    ax.plot(x, y, marker, color=color, ms=size, ls="none", label=series)
            ax.set_xscale("log")
            ax.set(xlabel=label, ylabel="LDS × 100")
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(f"{name} (labels: numbers kept)", fontsize=10)
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
