"""The retrain-or-keep rule: keep a champion only while it holds its LDS and beats every baseline."""

import math

import pytest

from airrep.retrain import baseline_lds, decide


def test_keeps_a_champion_that_holds_its_lds_and_beats_the_baselines():
    decision = decide(0.40, 0.37, {"tfidf": 0.30, "encoder": 0.20}, keep_fraction=0.9, label_finetunes=120)
    assert not decision.retrain and decision.finetunes_saved == 120
    assert decision.threshold == pytest.approx(0.36)
    assert (decision.best_baseline, decision.best_baseline_lds) == ("tfidf", 0.30)
    table = decision.to_markdown()
    assert "keep the champion" in table and "| label fine-tunes saved | 120 |" in table


@pytest.mark.parametrize(("now", "baselines", "says"), [
    (0.35, {"tfidf": 0.30}, "below 0.9 × 0.4000"),        # lost more than a tenth of its LDS
    (0.38, {"tfidf": 0.39}, "below tfidf's 0.3900"),      # held its LDS, but a baseline now beats it
    (math.nan, {"tfidf": 0.1}, "unknown"),
])
def test_retrains_when_the_champion_falls_short(now, baselines, says):
    decision = decide(0.40, now, baselines, keep_fraction=0.9, label_finetunes=120)
    assert decision.retrain and decision.finetunes_saved == 0
    assert says in decision.reason


def test_no_baselines_and_unscored_baselines_leave_only_the_fraction():
    decision = decide(0.40, 0.37, {"logra": math.nan}, keep_fraction=0.9, label_finetunes=5)
    assert not decision.retrain and decision.best_baseline is None
    assert "none configured" in decision.to_markdown()


def test_baselines_are_every_row_but_airreps():
    rows = [{"method": m, "lds": v} for m, v in
            [("airrep", 0.4), ("airrep-sum", 0.3), ("airrep-dense", 0.2), ("tfidf", 0.25), ("logra-sum@384", 0.1)]]
    assert baseline_lds(rows) == {"tfidf": 0.25, "logra-sum@384": 0.1}
