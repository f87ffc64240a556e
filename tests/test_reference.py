"""The reference study as data: its transcription against the notes' text, its claims against the notes' own
numbers, and the verdict logic on hand-made values whose answer is known."""

import pytest
from seed_tables import SEEDS, seed_tables

from raycredit.reference import Claim, parse_value, study
from raycredit.reference.decide import CONTRADICTED, INCONCLUSIVE, REPRODUCED, decide, holds


def test_every_cell_of_the_study_file_is_the_notes_text_parsed_again():
    """Each table's header and rows equal the table parsed from its note; a table quoted from prose (index -1)
    has each of its values verbatim in that note. Every table of every note is in the file."""
    tables = study().tables.values()
    for t in tables:
        if t.index < 0:
            text = (SEEDS / t.seed).read_text()
            assert all(cell in text for row in t.rows for cell in row[t.labels:]), t.id
            continue
        header, rows = seed_tables(t.seed)[t.index]
        assert (t.header, t.rows) == (header, rows), t.id
    indexed = {(t.seed, t.index) for t in tables}
    for note in sorted(p.name for p in SEEDS.iterdir()):
        assert {(note, i) for i in range(len(seed_tables(note)))} <= indexed, note


def test_the_notes_are_the_shared_seeds_when_they_are_at_hand():
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "seeds"
    if not shared.is_dir():
        pytest.skip("../shared/seeds is not beside this checkout")
    assert {p.name: p.read_bytes() for p in shared.iterdir()} == {p.name: p.read_bytes() for p in SEEDS.iterdir()}


@pytest.mark.parametrize("text, value, spread, approx", [
    ("0.615 ± 0.004", 0.615, 0.004, False), ("**+0.33**", 0.33, None, False),
    ("~5×10⁸ (3 OOM larger)", 5e8, None, True),
    ("~10⁻⁶ (meaningful)", 1e-6, None, True), ("59.2%±0.4%", 0.592, 0.004, False), ("**+1.5%**", 0.015, None, False),
    ("0.452 +/- 0.042", 0.452, 0.042, False), ("≈ 1.0", 1.0, None, True), ("**YES**", 1.0, None, False),
    ("-0.000022", -0.000022, None, False), ("—", None, None, False), ("baseline", None, None, False)])
def test_a_cell_of_the_notes_reads_as_the_number_it_states(text, value, spread, approx):
    v = parse_value(text)
    assert v.value == pytest.approx(value) if value is not None else v.value is None
    assert (v.spread == pytest.approx(spread) if spread is not None else v.spread is None) and v.approx == approx


def test_every_claim_holds_on_the_notes_own_numbers():
    """A claim transcribed backwards (or over the wrong cells) would fail on the very table it comes from."""
    s = study()
    assert len(s.claims) >= 30
    for c in s.claims:
        t = s.tables[c.table]
        values = [t.value(*c.cell(i)).value for i in range(len(c.cells))]
        assert None not in values and holds(c, values), (c.id, values)


def claim(test, n=2, **kw):
    return Claim(id="x", table="t", says="", test=test, cells=[f"r{i} / c" for i in range(n)], **kw)


CLEAR = {0: 0.60, 1: 0.62, 2: 0.61}
LOWER = {0: 0.40, 1: 0.41, 2: 0.39}


def test_a_clear_ordering_is_reproduced_and_its_reverse_contradicted():
    assert decide(claim("greater"), [CLEAR, LOWER]).verdict == REPRODUCED
    assert decide(claim("greater"), [LOWER, CLEAR]).verdict == CONTRADICTED
    assert decide(claim("less"), [LOWER, CLEAR]).verdict == REPRODUCED
    assert decide(claim("order", 3), [CLEAR, LOWER, {0: 0.1, 1: 0.12, 2: 0.11}]).verdict == REPRODUCED
    assert decide(claim("order", 3), [CLEAR, {0: 0.1, 1: 0.12, 2: 0.11}, LOWER]).verdict == CONTRADICTED
    assert decide(claim("above", 1, value=0.5), [CLEAR]).verdict == REPRODUCED
    assert decide(claim("below", 1, value=0.5), [CLEAR]).verdict == CONTRADICTED


def test_two_seeds_of_noise_and_a_single_seed_are_inconclusive():
    noise = decide(claim("greater"), [{0: 0.50, 1: 0.58}, {0: 0.55, 1: 0.51}])
    assert noise.verdict == INCONCLUSIVE and "Welch t-test, n=2 vs 2" in noise.why
    one = decide(claim("greater"), [{0: 0.9}, {0: 0.1}])
    assert one.verdict == INCONCLUSIVE and "fewer than 2 seeds" in one.why


def test_a_margin_shifts_the_test():
    lift = {0: 0.36, 1: 0.37, 2: 0.36}
    base = {0: 0.30, 1: 0.31, 2: 0.30}
    assert decide(claim("greater", by=0.03, paired=True), [lift, base]).verdict == REPRODUCED
    assert decide(claim("greater", by=0.09, paired=True), [lift, base]).verdict == CONTRADICTED
    assert decide(claim("within", margin=0.02), [CLEAR, {0: 0.61, 1: 0.60, 2: 0.62}]).verdict == REPRODUCED
    assert decide(claim("within", margin=0.02), [CLEAR, LOWER]).verdict == CONTRADICTED


def test_pairing_by_seed_sees_a_shift_that_seed_to_seed_spread_hides():
    a = {0: 0.30, 1: 0.40, 2: 0.50, 3: 0.35}
    b = {s: v - 0.01 - 0.001 * s for s, v in a.items()}
    assert decide(claim("greater"), [a, b]).verdict == INCONCLUSIVE
    paired = decide(claim("greater", paired=True), [a, b])
    assert paired.verdict == REPRODUCED and "paired t-test by seed, n=4" in paired.why


def test_log_scale_compares_orders_of_magnitude():
    dfa, fa = {0: 5e8, 1: 2e8, 2: 9e8}, {0: 1e5, 1: 3e5, 2: 2e5}
    assert decide(claim("greater", log=True), [dfa, fa]).verdict == REPRODUCED


def test_seeds_that_agree_exactly_decide_by_the_sign():
    assert decide(claim("greater"), [{0: 1.0, 1: 1.0}, {0: 0.0, 1: 0.0}]).verdict == REPRODUCED
    assert decide(claim("greater"), [{0: 0.0, 1: 0.0}, {0: 1.0, 1: 1.0}]).verdict == CONTRADICTED


@pytest.mark.parametrize("preset", ["smoke", "mnist1d", "paper"])
def test_every_measured_cell_picks_one_configuration_per_seed_of_its_stage(preset, tmp_path):
    """The study file's selectors against the configs each stage of searches/reproduce.py runs (no training:
    one row per config, as the stage's finished runs would be): a cell matches one run per seed (two would
    mix configurations), and every cell a claim reads matches at least one (smoke's grids skip a few: their
    claims stay INCONCLUSIVE there)."""
    import pandas as pd

    from raycredit.reference.measure import measure
    from raycredit.rules import applied
    from raycredit.search import expand

    from searches_loader import load_search

    s = study()
    stages = {st.search: st for st in load_search("reproduce").PRESETS[preset].stages}
    assert set(stages) == set(s.stages())
    overrides = {"data_dir": str(tmp_path)} if preset == "paper" else {}
    for name, stage in stages.items():
        extra = dict(zip(stage.args[::2], stage.args[1::2], strict=True))
        ov = {**overrides, **({"seed": [int(x) for x in extra["--seeds"].split(",")]} if "--seeds" in extra else {})}
        configs = expand(load_search(name).PRESETS[stage.preset], ov)
        runs = pd.DataFrame([{**applied(c.flat()), "run_id": c.key()} for c in configs])  # as `results` reads them
        for metric in {spec["metric"] for t in s.tables.values() if t.stage == name
                       for spec in (t.spec(*cell) for cell in t.measured())}:
            runs[metric] = 0.5
        for t in (t for t in s.tables.values() if t.stage == name):
            claimed = {c.cell(i) for c in s.claims_of(t.id) for i in range(len(c.cells))}
            for row, column in t.measured():
                cell = measure(t, runs, row, column)  # UserError: a seed matched twice
                assert cell.values or (row, column) not in claimed or preset == "smoke", (preset, t.id, row, column)
