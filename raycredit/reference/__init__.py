"""The reference study as data (study.toml): its tables, verbatim, where raycredit measures each cell, and the
claims each table supports. `decide` holds the statistical tests; analysis/verify.py measures and reports."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

STUDY = Path(__file__).with_name("study.toml")
TESTS = ("greater", "less", "within", "above", "below", "order")
SELECTOR_KEYS = ("metric", "minus")  # the keys of a cell's selector that are not config knobs

SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
FLAGS = {"no": 0.0, "yes": 1.0}


@dataclass(frozen=True)
class Value:
    """A cell of the study's notes as a number: `value`, its ± `spread` where given, `approx` for "~" and "≈"."""

    value: float | None
    spread: float | None = None
    approx: bool = False

    def text(self) -> str:
        if self.value is None:
            return "–"
        s = ("~" if self.approx else "") + f"{self.value:.4g}"
        return s + (f" ± {self.spread:.2g}" if self.spread is not None else "")


def parse_value(text: str) -> Value:
    """The number a cell of the notes states: "0.615 ± 0.004", "**+0.33**", "~5×10⁸ (3 OOM larger)",
    "59.2%±0.4%", "+1.5%", "YES"; Value(None) for "—", "n/a", "baseline" and words."""
    s = re.sub(r"\([^)]*\)", "", text.replace("**", "")).strip().lower()
    if s in FLAGS:
        return Value(FLAGS[s])
    approx = s.startswith(("~", "≈"))
    s = s.lstrip("~≈ ").translate(SUPERSCRIPT).replace("+/-", "±").replace(" ", "")
    s = re.sub(r"^(\d+(?:\.\d+)?)×10(-?\d+)$", r"\1e\2", s)
    s = re.sub(r"^10(-?\d+)$", r"1e\1", s)
    m = re.fullmatch(rf"({NUMBER})(%?)(?:±({NUMBER})%?)?", s)
    if not m:
        return Value(None)
    scale = 0.01 if m.group(2) else 1.0
    spread = float(m.group(3)) * scale if m.group(3) else None
    return Value(float(m.group(1)) * scale, spread, approx)


def clean(text: str) -> str:
    return " ".join(text.replace("**", "").split())


@dataclass(frozen=True)
class Table:
    id: str
    seed: str
    index: int
    title: str
    setting: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    labels: int = 1
    stage: str = ""
    where: dict = field(default_factory=dict)
    select: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)

    def row_key(self, row: list[str]) -> str:
        return " ".join(clean(c) for c in row[:self.labels])

    def value(self, row_key: str, column: str) -> Value:
        """The study's number in a cell."""
        for row in self.rows:
            if self.row_key(row) == row_key:
                return parse_value(row[self.header.index(column)])
        raise KeyError(f"table {self.id}: no row {row_key!r}")

    def spec(self, row_key: str, column: str) -> dict | None:
        """How raycredit measures a cell: its selector (knobs, `metric`, maybe `minus`), or None."""
        if not self.stage or row_key not in self.select or column not in self.columns:
            return None
        col = self.columns[column]
        spec = {**self.where, **self.select[row_key], **({"metric": col} if isinstance(col, str) else col)}
        return spec if "metric" in spec else None

    def baseline(self, spec: dict, column: str) -> dict:
        """The selector a `minus` cell is measured against: a row of this table (in the same column, without
        the difference), or a selector of its own; with the cell's metric."""
        minus = spec["minus"]
        if isinstance(minus, dict):
            return {**self.where, **minus, "metric": spec["metric"]}
        col = {k: v for k, v in self.columns[column].items() if k != "minus"} if isinstance(
            self.columns[column], dict) else {}
        return {**self.where, **self.select[minus], **col, "metric": spec["metric"]}

    def measured(self) -> list[tuple[str, str]]:
        """(row key, column) of every cell raycredit measures, in the table's order."""
        return [(self.row_key(r), c) for r in self.rows for c in self.header[self.labels:]
                if self.spec(self.row_key(r), c) is not None]


@dataclass(frozen=True)
class Claim:
    id: str
    table: str
    says: str
    test: str
    cells: list[str]
    by: float = 0.0
    margin: float = 0.0
    value: float = 0.0
    paired: bool = False
    log: bool = False

    def cell(self, i: int) -> tuple[str, str]:
        row, _, column = self.cells[i].rpartition(" / ")
        return row, column

    def statement(self) -> str:
        """The claim in symbols, e.g. "FA > frozen > DFA" over its cells."""
        if self.test in ("above", "below"):
            return f"{self.cells[0]} {'>' if self.test == 'above' else '<'} {self.value:g}"
        if self.test == "within":
            return f"|{self.cells[0]} − {self.cells[1]}| < {self.margin:g}"
        if self.test == "order":
            return " > ".join(self.cells)
        sign = ">" if self.test == "greater" else "<"
        return f"{self.cells[0]} − {self.cells[1]} {sign} {self.by:g}"


@dataclass(frozen=True)
class Study:
    tables: dict[str, Table]
    claims: list[Claim]

    def claims_of(self, table_id: str) -> list[Claim]:
        return [c for c in self.claims if c.table == table_id]

    def stages(self) -> list[str]:
        """The stages that measure a table, in the order of their first table (the reproduction's order)."""
        return list(dict.fromkeys(t.stage for t in self.tables.values() if t.stage))


@cache
def study(path: Path = STUDY) -> Study:
    """The study file, checked: every claim names a table, a test and cells that exist and are measured."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    tables = {t["id"]: Table(**t) for t in raw["table"]}
    claims = [Claim(**c) for c in raw["claim"]]
    for c in claims:
        table = tables.get(c.table)
        if table is None or c.test not in TESTS:
            raise ValueError(f"claim {c.id}: table {c.table!r} or test {c.test!r} unknown")
        for i in range(len(c.cells)):
            row, column = c.cell(i)
            table.value(row, column)  # KeyError: no such row
            if table.spec(row, column) is None:
                raise ValueError(f"claim {c.id}: cell {c.cells[i]!r} is not measured")
    return Study(tables, claims)
