"""Score-marking tokens: each marking type at its bar and position, the plain variant, bad markings, old configs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from instruct_museformer.tokens import specials
from instruct_museformer.tokens.markings import MARKING_KINDS, MARKING_TOKENS, classify_words
from instruct_museformer.tokens.remi import decode_ids
from instruct_museformer.tokens.score import encode_score, load_score, score_grid, tokenize_score
from instruct_museformer.tokens.tokenizer import Vocab, build_tokenizer, load_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MARKED = FIXTURES / "markings" / "all_markings.musicxml"
NOTES_ONLY_V1 = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tokenizers" / "notes_only_v1.json"
MARKED_BARS = {1, 2, 3, 5, 6}  # bars 4, 7 and 8 of the fixture hold notes only

# (bar, position, token) for every marking the fixture holds; 48 positions per quarter
EXPECTED = [
    (1, 0, "TempoWord_allegro"), (1, 0, "Dyn_p"), (1, 0, "PedalMark_Start"), (1, 0, "Artic_staccato"),
    (1, 0, "Slur_Start"), (1, 0, "Staff_2"), (1, 48, "Artic_accent"), (1, 96, "Artic_tenuto"),
    (1, 144, "Artic_strong-accent"), (1, 144, "Slur_End"),
    (2, 0, "Cresc_Start"), (2, 0, "Orn_trill"), (2, 0, "Grace_acciaccatura"), (2, 0, "Artic_staccatissimo"),
    (2, 48, "Orn_mordent"), (2, 96, "Dyn_sf"), (2, 96, "Orn_turn"), (2, 144, "Cresc_End"),
    (2, 144, "PedalMark_End"), (2, 144, "Arpeggio_None"),
    (3, 0, "Dim_Start"), (3, 0, "Dyn_mf"), (3, 96, "TempoChange_rit"), (3, 96, "Break_breath"),
    (3, 144, "Fermata_Note"),
    (5, 0, "TempoChange_atempo"), (5, 0, "Expr_dolce"), (5, 96, "Break_caesura"),
    (6, 0, "TempoChange_tempo1"), (6, 0, "TempoWord_andante"), (6, 0, "Fermata_Barline"),
]


def located_names(ids: list[int], tokenizer) -> list[tuple[int, int, str]]:
    """(bar from 1, position, token name) of every token but Bar."""
    names, out, bar, pos = Vocab(tokenizer).tokens, [], 1, 0
    for token_id in ids:
        name = names[token_id]
        if token_id == specials.BAR:
            bar, pos = bar + 1, 0
            continue
        if name.startswith("Position_"):
            pos = int(name.split("_")[1])
        out.append((bar, pos, name))
    return out


def bars_of(ids: list[int]) -> list[list[int]]:
    bars, current = [], []
    for token_id in ids:
        current.append(token_id)
        if token_id == specials.BAR:
            bars.append(current)
            current = []
    return bars


def test_every_marking_type_reaches_its_bar_and_position(tokenizer):
    located = located_names(tokenize_score(MARKED, tokenizer), tokenizer)
    missing = [item for item in EXPECTED if item not in located]
    assert not missing
    tempo_marks = [(bar, pos, name) for bar, pos, name in located if name.startswith("Tempo_")]
    assert len(tempo_marks) == 1 and abs(float(tempo_marks[0][2].split("_")[1]) / 96 - 1) < 0.02  # quarter = 96
    assert {name for _, _, name in located} >= {"Arpeggio_None"} and sum(
        name == "Arpeggio_None" for _, _, name in located) == 3  # each note of the arpeggiated chord
    every_expected_kind = {name.partition("_")[0] for _, _, name in EXPECTED}
    assert every_expected_kind == MARKING_KINDS


def test_tokens_differ_from_the_plain_variant_exactly_at_the_marked_bars(tokenizer, tmp_path):
    from lxml import etree

    tree = etree.parse(str(MARKED))
    for element in tree.xpath("//direction | //notations | //barline/fermata"):
        element.getparent().remove(element)
    plain = tmp_path / "plain.musicxml"
    tree.write(str(plain))
    marked_bars, plain_bars = bars_of(tokenize_score(MARKED, tokenizer)), bars_of(tokenize_score(plain, tokenizer))
    assert len(marked_bars) == len(plain_bars) == 8
    differing = {k for k, (a, b) in enumerate(zip(marked_bars, plain_bars, strict=True), start=1) if a != b}
    assert differing == MARKED_BARS
    # what stays in the plain variant belongs to its notes: their staff and their grace type
    kept = {tokenizer["Staff_2"], tokenizer["Grace_acciaccatura"]}
    marking_ids = {tokenizer[token] for token in MARKING_TOKENS} - kept
    assert all(not set(bar) & marking_ids for bar in plain_bars)


def test_bad_markings_are_counted_not_lost(tokenizer):
    """A hairpin and a slur that never stop (partitura drops both), a tempo word without a number."""
    data = load_score(MARKED)
    tokenized: Counter = Counter()
    ids = encode_score(data, score_grid(data, Vocab(tokenizer)), tokenized)
    parsed = data.markings.parsed
    dropped_hairpin = "hairpin without a stop (dropped by partitura)"
    assert parsed[dropped_hairpin] == 1 and tokenized[dropped_hairpin] == 0
    assert parsed["slur without a stop (dropped by partitura)"] == 1
    assert parsed["slur"] == tokenized["slur"] == 1 and parsed["slur end"] == tokenized["slur end"] == 1
    bar6 = [name for bar, _, name in located_names(ids, tokenizer) if bar == 6]
    assert "TempoWord_andante" in bar6 and not any(name.startswith("Tempo_") for name in bar6)
    assert all(tokenized[kind] == parsed[kind] for kind in parsed if "dropped" not in kind)


def test_marking_ids_come_after_the_remi_vocabulary(tokenizer, tmp_path):
    old = build_tokenizer(score_markings=False)
    first_shipped = load_tokenizer(NOTES_ONLY_V1)  # checkpoints trained before the markings keep their ids
    assert first_shipped.vocab == old.vocab and not Vocab(first_shipped).score_markings
    assert all(tokenizer.vocab[token] == token_id for token, token_id in old.vocab.items())
    assert sorted(tokenizer.vocab[token] for token in MARKING_TOKENS) == list(range(len(old), len(tokenizer)))
    from instruct_museformer.tokens.tokenizer import save_tokenizer

    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json").vocab == tokenizer.vocab


def test_a_configuration_without_the_option_ignores_the_markings(tokenizer):
    old = build_tokenizer(score_markings=False)
    data = load_score(MARKED)
    ids = encode_score(data, score_grid(data, Vocab(old)))
    assert max(ids) < len(old)
    data.markings, markings = None, data.markings
    try:
        assert encode_score(data, score_grid(data, Vocab(old))) == ids
    finally:
        data.markings = markings


def test_decoding_skips_markings(tokenizer):
    """The decoder plays the same notes from the marked score as from its notes-only tokens."""
    old = build_tokenizer(score_markings=False)

    def notes(ids, tok):
        return sorted((n.time, n.pitch, n.duration, n.velocity) for t in decode_ids(ids, Vocab(tok)).tracks
                      for n in t.notes)

    assert notes(tokenize_score(MARKED, tokenizer), tokenizer) == notes(tokenize_score(MARKED, old), old)


@pytest.mark.parametrize(("text", "expected"), [
    ("poco a poco cresc.", ["Cresc_Start"]), ("Allegro moderato", ["TempoWord_allegro"]),
    ("p dolce", ["Expr_dolce", "Dyn_p"]), ("rit.", ["TempoChange_rit"]), ("Tempo I", ["TempoChange_tempo1"]),
    ("a tempo", ["TempoChange_atempo"]), ("più mosso", ["TempoChange_piu"]), ("sempre f", ["Dyn_f"]),
    ("1", []), ("Kreisleriana", []),
])
def test_words(text, expected):
    assert [token for token, _ in classify_words(text)] == expected


@pytest.mark.parametrize(("name", "read", "unread"), [
    ("marked.krn", {"slur": 1, "slur end": 1, "staff:2": 2},
     {"dynamic": 3, "staccato": 1, "accent": 1, "tenuto": 1, "fermata": 1, "trill": 1}),
    ("marked.mei", {"staff:2": 2}, {"dynamic": 2, "hairpin": 1, "articulation": 2, "fermata": 1, "slur": 1}),
])
def test_mei_and_kern_markings_are_tokenized_or_counted(tokenizer, name, read, unread):
    """What partitura reads from MEI/kern becomes tokens; what it skips is counted, by type, with no token."""
    data = load_score(FIXTURES / "markings" / name)
    tokenized: Counter = Counter()
    encode_score(data, score_grid(data, Vocab(tokenizer)), tokenized)
    prefix = "kern" if name.endswith(".krn") else "MEI"
    for kind, n in read.items():
        assert data.markings.parsed[kind] == tokenized[kind] == n, kind
    assert {kind: n for kind, n in data.markings.parsed.items() if "not read" in kind} == {
        f"{prefix} {kind} (not read by partitura)": n for kind, n in unread.items()}


def test_show_prints_bars_and_counts_and_fails_in_one_line(capsys, tmp_path):
    from instruct_museformer.cli import main as imf

    assert imf(["tokenize", "--show", str(MARKED), "--bars", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "bar 1: TimeSig_4/4" and "bar 3: TimeSig_4/4" not in out and "... 6 more bars" in out
    assert any(line.strip().startswith("Position_0 Cresc_Start") for line in out)
    assert "  crescendo: 1 -> 1" in out and "  slur without a stop (dropped by partitura): 1 -> 0" in out
    bad = tmp_path / "bad.musicxml"
    bad.write_text("<score-partwise><part-list>")
    assert imf(["tokenize", "--show", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.musicxml" in err[0]
