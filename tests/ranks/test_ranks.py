"""sae_flux.distributed on two gloo processes: ranks, gather, broadcast, and one-line refusals on
every rank."""

from __future__ import annotations

import pytest
from ranks.spawn import RankFailed, run_ranks

from sae_flux import distributed


def _ranks_and_collectives() -> tuple[int, int, list[int], str]:
    with distributed.process_group() as ranks:
        every = distributed.gather(ranks.rank * 10)
        chosen = distributed.from_main(f"from rank {ranks.rank}")
        distributed.barrier()
        return ranks.rank, ranks.world_size, every, chosen


def _check_same(hook: str) -> str:
    from _sae_flux_shared.usererror import UserError

    with distributed.process_group() as ranks:
        try:
            distributed.check_same({"hook": hook if ranks.rank == 0 else "double.2.img", "seed": 0},
                                   what="cache settings")
        except UserError as error:
            return str(error)
        return "accepted"


def _one_rank_fails() -> str:
    from _sae_flux_shared.usererror import UserError

    with distributed.process_group() as ranks:
        try:
            distributed.all_ok(ranks.rank == 0, "prompts file is empty")
        except UserError as error:
            return str(error)
        return "accepted"


def test_two_gloo_ranks_see_each_other_and_rank_zeros_value():
    results = run_ranks(_ranks_and_collectives, 2)
    assert results == [(0, 2, [0, 10], "from rank 0"), (1, 2, [0, 10], "from rank 0")]


def test_ranks_started_with_other_settings_are_refused_on_every_rank_in_one_line():
    results = run_ranks(_check_same, 2, "double.1.img")
    expected = ("rank 1 was started with other cache settings than rank 0: "
                "hook: saved 'double.1.img', now 'double.2.img'")
    assert results == [expected, expected]
    assert run_ranks(_check_same, 2, "double.2.img") == ["accepted", "accepted"]


def test_a_failure_on_one_rank_stops_every_rank_with_the_same_line():
    assert run_ranks(_one_rank_fails, 2) == ["prompts file is empty (rank 1)"] * 2


def test_a_single_process_without_launcher_has_no_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group() as ranks:
        assert ranks == distributed.Ranks(0, 1, 0)
        assert not distributed.active()
        assert distributed.gather(3) == [3]


def test_inconsistent_launcher_variables_are_refused(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
        distributed.ranks()


def test_a_rank_that_raises_fails_the_run_with_its_traceback():
    with pytest.raises(RankFailed, match="rank 0: ZeroDivisionError"):
        run_ranks(_divide, 1)


def _divide() -> float:
    return 1 / 0


def test_a_bad_collective_timeout_is_refused_before_any_rank_waits(monkeypatch):
    monkeypatch.setenv("SAE_FLUX_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="SAE_FLUX_TIMEOUT_S='soon' is not a number of seconds"):
        distributed.timeout_from_env()
    monkeypatch.setenv("SAE_FLUX_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="must be a positive number"):
        distributed.timeout_from_env()
    monkeypatch.setenv("SAE_FLUX_TIMEOUT_S", "30")
    assert distributed.timeout_from_env() == 30.0


def test_a_rank_outside_the_world_is_refused_before_the_group_starts(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=3 and WORLD_SIZE=2"), distributed.process_group():
        pass
