"""The paper-ordering check reads point estimates and interval separation correctly."""

import pytest

from runtime.analysis.ordering import compare, ordering_markdown, paper_ordering
from runtime.analysis.stats import wilson_interval


def cell(successes: int, episodes: int) -> dict:
    return {"success": successes / episodes, "ci95": list(wilson_interval(successes, episodes)),
            "episodes": episodes}  # fmt: skip


def test_verdicts_need_apart_intervals_to_be_separated():
    assert compare(cell(72, 100), cell(46, 100), ">") == "agrees, separated"  # 63-80 vs 37-56
    assert compare(cell(36, 50), cell(23, 50), ">") == "agrees"  # 72 % vs 46 %: 50 each overlap
    assert compare(cell(26, 50), cell(30, 50), ">") == "disagrees"
    assert compare(cell(10, 50), cell(40, 50), ">") == "disagrees, separated"
    assert compare(cell(25, 50), cell(25, 50), ">=") == "agrees"  # a tie satisfies >=
    assert compare(cell(25, 50), cell(25, 50), ">") == "disagrees"  # not >
    with pytest.raises(ValueError, match="relation"):
        compare(cell(1, 2), cell(1, 2), "<")


def test_rows_cover_the_claims_and_delays_the_table_holds():
    table = {
        "rtc": {"0": cell(34, 50), "8": cell(72, 100)},
        "naive": {"0": cell(35, 50), "8": cell(46, 100)},
        "sync": {"0": cell(30, 50)},
    }  # no bid, no ensemble: only "rtc > naive" can be checked
    rows = paper_ordering(table)
    assert [(r["claim"], r["delay"]) for r in rows] == [("rtc > naive", 0), ("rtc > naive", 8)]
    assert [r["verdict"] for r in rows] == ["disagrees", "agrees, separated"]
    text = ordering_markdown(rows)
    assert "| rtc > naive | disagrees (68 % vs 70 %) | agrees, separated (72 % vs 46 %) |" in text
    assert "no pair" in ordering_markdown([])
