"""The markdown tables of the reference study's notes (tests/data/seeds, copied verbatim), parsed from their
text: what the transcription in raycredit/reference/study.toml is checked against."""

from __future__ import annotations

import re
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "data" / "seeds"
SEPARATOR = re.compile(r"\|(?:\s*:?-{3,}:?\s*\|)+")


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every table of `text` as (header cells, rows of cells). The notes were saved with their lines joined
    (a row's closing pipe is followed by the next row's opening pipe on one line), so rows are read by count:
    a table of n columns has n + 1 pipes per row."""
    flat = re.sub(r"\s*\n\s*", " ", text)
    flat = re.sub(r"(?<=\s)\+(?=\s*\|)", "", flat)  # a table inside a diff: its lines start with "+"
    out = []
    for sep in SEPARATOR.finditer(flat):
        n = len(re.findall(r"-+:?\s*\|", sep.group(0)))
        before = flat[:sep.start()].rstrip()
        pipes = [m.start() for m in re.finditer(r"\|", before)]
        if len(pipes) < n + 1:
            continue
        header = cells(before[pipes[-(n + 1)]:])
        rows, p = [], sep.end()
        while True:
            m = re.compile(r"\s*\|").match(flat, p)
            if not m:
                break
            q, seen = m.end(), 0
            while seen < n:
                q = flat.find("|", q)
                if q < 0:
                    break
                q, seen = q + 1, seen + 1
            if q < 0 or seen < n:
                break
            row = cells(flat[m.end() - 1:q])
            if any(len(c) > 160 for c in row):
                break
            rows.append(row)
            p = q
        out.append((header, rows))
    return out


def seed_tables(seed: str) -> list[tuple[list[str], list[list[str]]]]:
    return tables((SEEDS / seed).read_text())
