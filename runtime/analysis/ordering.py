"""Where a success-vs-delay table agrees with the RTC paper's ordering of executors.

Black, Galliker, Levine 2025 ("Real-Time Execution of Action Chunking Flow Policies") report
on their Kinetix tasks, under inference delay: RTC >= BID > naive asynchronous execution and
temporal ensembling. ``paper_ordering`` checks each of those comparisons at each delay of a
table (executor -> str(delay) -> {"success", "ci95", ...}, as ``rtvla sweep`` writes it) and
says how strongly the table speaks: a comparison *agrees* or *disagrees* in its point
estimates, and is *separated* only when the two 95 % Wilson intervals do not overlap.
"""

from __future__ import annotations

from collections.abc import Mapping

# (left, relation, right): the paper's claim is left `relation` right
PAPER_CLAIMS = (
    ("rtc", ">=", "bid"),
    ("bid", ">", "naive"),
    ("bid", ">", "ensemble"),
    ("rtc", ">", "naive"),
    ("rtc", ">", "ensemble"),
)
VERDICTS = ("agrees, separated", "agrees", "disagrees", "disagrees, separated")


def compare(left: Mapping, right: Mapping, relation: str) -> str:
    """One of VERDICTS for the claim ``left relation right`` on two table cells."""
    if relation not in (">", ">="):
        raise ValueError(f"relation must be '>' or '>=', not {relation!r}")
    p, q = left["success"], right["success"]
    (lo_l, hi_l), (lo_r, hi_r) = left["ci95"], right["ci95"]
    agrees = p > q or (relation == ">=" and p == q)
    if agrees:
        return VERDICTS[0] if lo_l > hi_r else VERDICTS[1]
    return VERDICTS[3] if lo_r > hi_l else VERDICTS[2]


def paper_ordering(table: Mapping[str, Mapping[str, Mapping]]) -> list[dict]:
    """One row per claim and delay that the table holds both sides of.

    Each row: claim ("rtc >= bid"), delay (int), left / right success, verdict (VERDICTS).
    """
    rows = []
    for left, relation, right in PAPER_CLAIMS:
        if left not in table or right not in table:
            continue
        for d in sorted(set(table[left]) & set(table[right]), key=int):
            a, b = table[left][d], table[right][d]
            rows.append({
                "claim": f"{left} {relation} {right}",
                "delay": int(d),
                "left": a["success"],
                "right": b["success"],
                "verdict": compare(a, b, relation),
            })  # fmt: skip
    return rows


def ordering_markdown(rows: list[dict]) -> str:
    """The rows as a markdown table: one line per claim, one column per delay."""
    if not rows:
        return "(the table holds no pair of executors the paper compares)"
    delays = sorted({r["delay"] for r in rows})
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    cell = {(r["claim"], r["delay"]): r for r in rows}
    rows_out = {
        claim: [
            "-" if (r := cell.get((claim, d))) is None
            else f"{r['verdict']} ({r['left']:.0%} vs {r['right']:.0%})"
            for d in delays
        ]
        for claim in claims
    }  # fmt: skip
    return delay_table("paper's claim", delays, rows_out)


def delay_table(corner: str, delays: list[int], rows: Mapping[str, list[str]]) -> str:
    """A markdown table with one column per delay ("d = 4") and one line per row name; every
    "%" written as " %"."""
    lines = [
        f"| {corner} | " + " | ".join(f"d = {d}" for d in delays) + " |",
        "|---" * (len(delays) + 1) + "|",
        *(f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()),
    ]
    return "\n".join(lines).replace("%", " %")
