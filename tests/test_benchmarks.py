"""The benchmark harness cannot rot: ``benchmarks/run.py --quick --json -`` runs every row and
each produces a number. Timings are reported by the harness, never asserted here (noisy
machines); only the counts that are correctness, not speed, are checked."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leaks import summary
from services import need_binary

pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
ROWS = "abcdefghijkl"


def test_every_row_of_the_quick_run_has_a_number(request: pytest.FixtureRequest) -> None:
    need_binary("redis-server")  # row (i) starts one; wrk is optional (an httpx loop stands in)
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    rows = document["rows"]

    assert {row["id"] for row in rows} == set(ROWS)
    missing = [row for row in rows if not isinstance(row["value"], int | float)]
    assert missing == [], missing
    assert all(math.isfinite(row["value"]) and row["value"] >= 0 for row in rows)
    by_id = {row["id"]: row for row in rows if not row["measure"].startswith(" ")}
    # (f) is a count of Clerk calls, not a timing: one per tenant, whatever the machine.
    assert by_id["f"]["value"] == document["plan"]["f_tenants"]
    got, sent = re.search(r"(\d+)/(\d+) got a token", by_id["e"]["detail"]).groups()  # type: ignore[union-attr]
    assert got == sent  # every cold request of the burst got its tenant's token
    summary(request.config).add(
        "benchmarks/run.py --quick (harness check; figures not stable)",
        "; ".join(f"({row['id']}) {row['value']:.3g}{row['unit']}" for row in by_id.values()),
    )
