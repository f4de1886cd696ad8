"""Retrain or keep: whether the champion still transfers to a changed base LLM.

The paper finds that an AirRep trained on one LLM's labels often still ranks training data
well for another. Checking costs only the new LLM's held-out benchmark fine-tunes; a retrain
costs every label fine-tune of the plan as well (10^4 at the paper's scale). The champion is
kept while, on the new benchmark, its LDS is at least ``keep_fraction`` of what it scored on
the old one and at or above every baseline's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    champion_lds_before: float
    champion_lds_now: float
    threshold: float
    best_baseline: str | None
    best_baseline_lds: float | None
    finetunes_saved: int
    """Label fine-tunes not run because the champion was kept (0 on a retrain)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        baseline = (f"{self.best_baseline} {100 * self.best_baseline_lds:.2f}"
                    if self.best_baseline is not None else "none configured")
        return "\n".join([
            f"**{'retrain' if self.retrain else 'keep the champion'}**: {self.reason}",
            "",
            "| figure | value |",
            "|---|---|",
            f"| champion LDS×100, old benchmark | {100 * self.champion_lds_before:.2f} |",
            f"| champion LDS×100, new benchmark | {100 * self.champion_lds_now:.2f} |",
            f"| keep threshold ×100 | {100 * self.threshold:.2f} |",
            f"| best baseline LDS×100, new benchmark | {baseline} |",
            f"| label fine-tunes saved | {self.finetunes_saved} |",
        ])


def decide(champion_lds_before: float, champion_lds_now: float, baselines: Mapping[str, float],
           keep_fraction: float, label_finetunes: int) -> RetrainDecision:
    """Keep the champion iff ``now >= keep_fraction * before`` and ``now >=`` every baseline.

    ``baselines``: LDS of the non-AirRep methods on the new benchmark. A champion whose old
    LDS is unknown (not finite) is retrained: there is nothing to compare with.
    """
    finite = {name: lds for name, lds in baselines.items() if math.isfinite(lds)}
    best = max(finite, key=finite.get) if finite else None
    best_lds = finite[best] if best is not None else None
    threshold = keep_fraction * champion_lds_before
    if not math.isfinite(champion_lds_before) or not math.isfinite(champion_lds_now):
        retrain, reason = True, "the champion's LDS before or after the change is unknown"
    elif champion_lds_now < threshold:
        retrain, reason = True, (f"its LDS {champion_lds_now:.4f} is below {keep_fraction:g} × "
                                 f"{champion_lds_before:.4f} = {threshold:.4f}")
    elif best_lds is not None and champion_lds_now < best_lds:
        retrain, reason = True, f"its LDS {champion_lds_now:.4f} is below {best}'s {best_lds:.4f}"
    else:
        retrain = False
        reason = (f"its LDS {champion_lds_now:.4f} is at least {keep_fraction:g} × {champion_lds_before:.4f}"
                  + (f" and at or above {best}'s {best_lds:.4f}" if best is not None else ""))
    return RetrainDecision(retrain, reason, champion_lds_before, champion_lds_now, threshold, best, best_lds,
                           0 if retrain else label_finetunes)


def baseline_lds(rows: list[Mapping]) -> dict[str, float]:
    """The LDS of every LDS-table row (as :meth:`LDSTable.to_dict` gives them) that is not an
    AirRep row: the methods the registry names ``airrep``, ``airrep-*`` are the model itself."""
    return {row["method"]: float(row["lds"]) for row in rows
            if row["method"] != "airrep" and not row["method"].startswith("airrep-")}
