"""The benchmark's reference implementations agree with the fast paths they time."""

from __future__ import annotations

from benchmarks.speed import bench_lds


def test_lds_benchmark_fast_path_equals_the_loop():
    result = bench_lds(n_test=40, n_pool=300, n_subsets=12, size=30)
    assert result["equal_to_1e-9"], result
