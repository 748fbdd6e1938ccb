"""Probe strategies, objectives and memory safety."""

from __future__ import annotations

import pytest

from pipetune.errors import ConfigError, NotSupportedError
from pipetune.probing import (
    GridProbe,
    Measurement,
    Objective,
    OneAtATimeProbe,
    ProbeState,
    SuccessiveHalvingProbe,
    make_strategy,
    memory_floor_mb,
    resource_share,
    safe_candidates,
    spread,
)
from pipetune.types import SystemConfig, SystemSpace


def run(strategy, cost):
    """Drive a strategy to the end; return the configs in the order probed."""
    probed = []
    while (cfg := strategy.next()) is not None:
        probed.append(cfg)
        strategy.observe(cfg, cost(cfg))
        assert len(probed) < 100
    assert strategy.state is ProbeState.DONE
    return probed


def C(c, m=None):
    return SystemConfig(c, m)


def test_grid_probes_each_candidate_once_and_picks_the_lowest():
    g = GridProbe([C(1), C(2), C(3)])
    assert g.slots_needed() == 3
    assert run(g, lambda c: {1: 3.0, 2: 1.0, 3: 2.0}[c.cores]) == [C(1), C(2), C(3)]
    assert g.best() == (C(2), 1.0) and g.slots_needed() == 0


def test_ties_go_to_the_smaller_config_and_infeasible_is_never_chosen():
    g = GridProbe([C(2), C(1), C(3)])
    g.observe(C(2), 1.0)
    g.observe(C(1), 1.0)
    g.infeasible(C(3), "OOM")
    assert g.next() is None and g.best() == (C(1), 1.0) and "OOM" in g.rejected[C(3)]
    g2 = GridProbe([C(1), C(2)])
    g2.observe(C(1), float("nan"))
    assert C(1) in g2.rejected


def test_grid_shortens_keeping_the_default_and_the_ends():
    cands = [C(i) for i in range(1, 9)]
    g = GridProbe(cands, keep=C(5))
    assert g.shorten(3) and g.slots_needed() == 3
    assert C(5) in g.candidates and C(1) in g.candidates
    assert not GridProbe(cands).shorten(0)
    assert spread(cands, 2) == [C(1), C(8)]


def test_one_at_a_time_is_coordinate_descent():
    space = SystemSpace(cores=(1, 2, 4), memory_mb=(1024, 2048, 4096))
    cost = {1: 3.0, 2: 1.0, 4: 2.0}
    s = OneAtATimeProbe(space, start=C(4, 4096))
    assert s.slots_needed() == 3 + 2
    probed = run(s, lambda c: cost[c.cores] * (1.5 if c.memory_mb == 1024 else 1.0))
    # cores first (memory at the start value), then memory at the best cores
    assert probed[:3] == [C(1, 4096), C(2, 4096), C(4, 4096)]
    assert probed[3:] == [C(2, 1024), C(2, 2048)]
    assert s.best() == (C(2, 2048), 1.0)  # tie with 4096 -> the smaller


def test_one_at_a_time_respects_allowed_and_shortens():
    space = SystemSpace(cores=(1, 2, 3, 4, 5, 6), memory_mb=(1024, 4096))
    s = OneAtATimeProbe(space, start=C(6, 4096), allowed=lambda c: c.memory_mb != 1024)
    assert run(s, lambda c: float(c.cores)) == [C(i, 4096) for i in range(1, 7)]
    s2 = OneAtATimeProbe(space, start=C(6, 4096))
    assert s2.shorten(4) and s2.slots_needed() <= 4
    probed = run(s2, lambda c: float(c.cores))
    assert len(probed) <= 4 and C(6, 4096) in probed


def test_successive_halving_keeps_the_better_half_with_longer_windows():
    cands = [C(i) for i in range(1, 9)]
    s = SuccessiveHalvingProbe(cands, eta=2, min_windows=1)
    assert s.slots_needed() == 8 * 1 + 4 * 2 + 2 * 4
    windows, probed = [], []
    while (cfg := s.next()) is not None:
        windows.append(s.slot_windows())
        probed.append(cfg)
        s.observe(cfg, abs(cfg.cores - 3) + 0.5)
    assert windows == [1] * 8 + [2] * 4 + [4] * 2
    assert probed[8:12] == [C(3), C(2), C(4), C(1)] or set(probed[8:12]) == {C(2), C(3), C(4),
                                                                              C(1)}
    assert s.best()[0] == C(3)


def test_successive_halving_shortens_by_dropping_candidates():
    s = SuccessiveHalvingProbe([C(i) for i in range(1, 9)], keep=C(8))
    assert s.shorten(12) and s.slots_needed() <= 12 and C(8) in s.survivors
    assert not SuccessiveHalvingProbe([C(1), C(2)]).shorten(1)
    with pytest.raises(ConfigError):
        SuccessiveHalvingProbe([C(1)], eta=1)


def test_make_strategy_by_name():
    space = SystemSpace(cores=(1, 2))
    assert make_strategy("grid", space, space.configs()).name == "grid"
    assert make_strategy("one_at_a_time", space, space.configs()).name == "one_at_a_time"
    assert make_strategy("halving", space, space.configs()).name == "halving"
    with pytest.raises(ConfigError, match="must be one of"):
        make_strategy("bayes", space, space.configs())
    with pytest.raises(ConfigError, match="no candidate"):
        GridProbe([])


def test_objectives():
    space = SystemSpace(cores=(1, 2, 4), memory_mb=(1024, 4096))
    m = Measurement(C(2, 1024), seconds=10.0, steps=5, energy_j=100.0)
    assert Objective.RUNTIME.cost(m, space) == pytest.approx(2.0)
    assert Objective.ENERGY.cost(m, space) == pytest.approx(20.0)
    assert Objective.EDP.cost(m, space) == pytest.approx(40.0)
    # half the cores, a quarter of the memory -> share 0.375
    assert resource_share(C(2, 1024), space) == pytest.approx(0.375)
    assert Objective.RESOURCE_TIME.cost(m, space) == pytest.approx(0.75)
    # resource-time: the smaller config that is not slower wins
    small = Measurement(C(1, 1024), 10.0, 5)
    big = Measurement(C(4, 4096), 10.0, 5)
    assert Objective.RESOURCE_TIME.cost(small, space) < Objective.RESOURCE_TIME.cost(big, space)
    assert resource_share(C(4, None), SystemSpace(cores=(1, 4), memory_mb=(1024, None))) == 1.0
    with pytest.raises(NotSupportedError, match="needs energy"):
        Objective.ENERGY.cost(Measurement(C(1), 1.0, 1), space)
    with pytest.raises(ConfigError, match="must be one of"):
        Objective.parse("speed")
    assert Objective.parse("edp") is Objective.EDP and Objective.EDP.needs_energy


def test_memory_safety():
    assert memory_floor_mb(1000, 0.25) == pytest.approx(1250)
    assert memory_floor_mb(None) == 0.0
    safe, unsafe = safe_candidates([C(1, 1024), C(1, 2048), C(1, None)], peak_mb=1000)
    assert safe == [C(1, 2048), C(1, None)] and unsafe == [C(1, 1024)]
    assert safe_candidates([C(1, 512)], peak_mb=None)[0] == [C(1, 512)]
