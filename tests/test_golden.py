"""Golden graphs: the optimized dump of each fixture in tests/golden/cases.txt is unchanged.

A deliberate placement change shows up here; regenerate with ``make golden`` and review the
text diff of tests/golden/*.txt.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

from regenerate import read_cases, render  # noqa: E402

CASES = read_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.golden.name for c in CASES])
def test_golden_dump(case):
    if not case.fixture.exists():
        pytest.fail(f"fixture missing: {case.fixture}")
    assert case.golden.exists(), f"no golden file {case.golden.name}: run `make golden`"
    expected = case.golden.read_text()
    actual = render(case)
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    expected.splitlines(True), actual.splitlines(True), "golden", "now", n=1
                )
            )[:60]
        )
        pytest.fail(f"{case.golden.name} changed (run `make golden` if intended):\n{diff}")


def test_optimizing_twice_gives_the_same_dump():
    """Idempotence on the golden fixtures: a second run changes nothing."""
    from qdq_optimizer import optimize
    from qdq_optimizer.dump import dump_model

    for case in CASES[:2]:
        once, _ = optimize(case.fixture, case.rules)
        twice, report = optimize(once, case.rules)
        assert dump_model(twice) == dump_model(once), case.golden.name
