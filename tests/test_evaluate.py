"""airrep.evaluate: the noise ceiling over the subsets that were fine-tuned twice."""

import numpy as np

from airrep.evaluate import BenchmarkData, evaluate_methods
from airrep.metrics import lds


def test_noise_ceiling_uses_the_first_subsets_when_only_they_were_repeated():
    rng = np.random.default_rng(0)
    losses = rng.normal(size=(10, 6))
    repeat = losses[:4] + rng.normal(scale=0.5, size=(4, 6))
    bench = BenchmarkData(test=[], pool=[], subsets=np.zeros((10, 2), dtype=int), losses=losses,
                          losses_repeat=repeat)
    table = evaluate_methods(bench, {})
    assert table.noise_ceiling == lds(-repeat.T, losses[:4].T)
    full = evaluate_methods(BenchmarkData([], [], np.zeros((10, 2), dtype=int), losses, losses), {})
    assert full.noise_ceiling == 1.0
