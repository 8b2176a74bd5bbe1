"""benchmarks/layer_cost_by_text.py: the additive score of a plan and the agreement of two sources."""

import pytest
from benchmark_scripts import BENCHMARKS, benchmark_module


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports quality.py beside it
    with benchmark_module("layer_cost_by_text") as module:
        yield module


def test_a_plan_is_scored_by_its_lowered_layers_alone(script):
    rows = {(0, 1): 0.5, (0, 2): 0.2, (1, 1): 0.4, (1, 2): 0.1}
    assert script.additive(rows, [2, 3], base=[3, 3]) == pytest.approx(0.2)
    assert script.additive(rows, [1, 2], base=[3, 3]) == pytest.approx(0.6)
    assert script.additive(rows, [3, 3], base=[3, 3]) == 0


def test_agreement_is_rank_correlation_overall_and_per_k(script):
    a = {(0, 1): 3.0, (1, 1): 2.0, (2, 1): 1.0, (0, 2): 0.3, (1, 2): 0.2, (2, 2): 0.1}
    reversed_at_2 = {**a, (0, 2): 0.1, (2, 2): 0.3}
    same = script.agreement(a, a)
    assert same["all_pairs"] == pytest.approx(1.0)
    assert same["across_layers_at_k"] == {"1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    other = script.agreement(a, reversed_at_2)
    assert other["across_layers_at_k"]["1"] == pytest.approx(1.0)
    assert other["across_layers_at_k"]["2"] == pytest.approx(-1.0)
    assert other["all_pairs"] < 1.0
