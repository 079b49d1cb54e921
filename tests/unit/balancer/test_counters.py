"""Per-worker counters: rows follow the membership, totals only for the members in force."""

from __future__ import annotations

from ringlb_balancer import counters
from ringlb_balancer.counters import Counters


def test_members_that_left_drop_out_of_rows_and_totals(tmp_path):
    mine = Counters(tmp_path, pid=1)
    for name in ("a", "b", "c"):
        mine.answered(mine.row(name), 200, 0.001)
    mine.retain(["a", "c"])
    assert sorted(mine.members) == ["a", "c"]
    exited = Counters(tmp_path, pid=2)  # a worker that exited with "b" still in its file
    exited.answered(exited.row("b"), 500, 0.001)
    mine.flush()
    exited.flush()
    assert sorted(counters.totals(tmp_path)["members"]) == ["a", "b", "c"]
    assert sorted(counters.totals(tmp_path, ["a", "c"])["members"]) == ["a", "c"]


def test_many_short_lived_names_keep_rows_bounded(tmp_path):
    mine = Counters(tmp_path, pid=1)
    for revision in range(500):
        names = [f"pod-{revision}-{i}" for i in range(3)]
        for name in names:
            mine.answered(mine.row(name), 200, 0.001)
        mine.retain(names)
    assert len(mine.members) == 3


def test_hot_keys_of_every_process_are_summed_hottest_first(tmp_path):
    one, two = Counters(tmp_path, pid=1), Counters(tmp_path, pid=2)
    one.hot = [("a", 10.0, 1.0), ("b", 5.0, 0.0)]
    two.hot = [("b", 8.0, 2.0), ("c", 1.0, 0.0)]
    one.flush()
    two.flush()
    assert counters.totals(tmp_path)["hot"] == [("b", 13.0, 2.0), ("a", 10.0, 1.0), ("c", 1.0, 0.0)]
