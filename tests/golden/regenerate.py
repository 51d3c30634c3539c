"""Regenerate the golden dumps: ``python -m tests.golden.regenerate`` (or ``make golden``).

Each line of ``cases.txt`` names a fixture and a rule set; the fixture is optimized and its
canonical dump (with original names as comments) is written to ``<fixture-stem>.<rules>.txt``.
Reviewers then see any placement change as a plain text diff of these files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CASES = HERE / "cases.txt"
PRECISION = 6


@dataclass(frozen=True)
class Case:
    fixture: Path
    rules: str

    @property
    def golden(self) -> Path:
        return HERE / f"{self.fixture.stem}.{Path(self.rules).stem}.txt"


def read_cases(path: Path = CASES) -> list[Case]:
    cases = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'fixture_path rules_name', got {line!r}")
        cases.append(Case(ROOT / parts[0], parts[1]))
    return cases


def render(case: Case) -> str:
    """The golden text of one case: a header naming the case, then the canonical dump."""
    from qdq_optimizer import optimize
    from qdq_optimizer.dump import dump_model

    model, _ = optimize(case.fixture, case.rules)
    rel = case.fixture.relative_to(ROOT)
    header = f"# golden: qdqopt optimize {rel} --rules {case.rules}\n"
    return header + dump_model(model, precision=PRECISION, names=True)


def main() -> int:
    from qdq_optimizer.fileio import write_text_atomic

    for case in read_cases():
        text = render(case)
        old = case.golden.read_text() if case.golden.exists() else None
        if text != old:
            write_text_atomic(case.golden, text)
        state = "unchanged" if text == old else ("new" if old is None else "UPDATED")
        print(f"{state:9} {case.golden.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
