"""A researcher's own token data, made as the issue's new user made it: a default MidiTok REMI tokenizer
(``special_tokens=["PAD", "BOS", "EOS", "MASK"]``, 357 tokens, Bar_None = 4) over the (n)ASAP fixture pairs.

Score MIDI and performance MIDI are tokenized independently (tracks merged: the tokenizer has no programs),
so their bars are not the same bars of music; as ``imf train`` pairs bar k with bar k, both sides keep their
first ``BARS`` bars (REMI's Bar *opens* a bar; Museformer reads it as closing the one before -- the structure
is consistent either way). Files follow the seed's layout: ``data/tokens/{train,val,test}.{score,perf}``,
``data/meta/our_dict.txt`` (``{id} 1`` per line) and ``data/meta/tokenizer.json`` beside it.
"""

from __future__ import annotations

from pathlib import Path

import miditok
import symusic

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nasap"
BACH = FIXTURES / "Bach" / "Prelude" / "bwv_854"
BEETHOVEN = FIXTURES / "Beethoven" / "Piano_Sonatas" / "21-2"
BARS = 3

SEED_PREPROCESS = ("preprocess --source-lang score --target-lang perf --trainpref data/tokens/train --validpref "
                   "data/tokens/val --testpref data/tokens/test --destdir data-bin/instruct_museformer --srcdict "
                   "data/meta/our_dict.txt --tgtdict data/meta/our_dict.txt")


def default_remi() -> miditok.REMI:
    return miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"]))


def _ids(tokenizer: miditok.REMI, midi: Path) -> list[int]:
    score = symusic.Score(str(midi))
    merged = symusic.Track(program=0)
    for track in score.tracks:
        merged.notes.extend(track.notes)
    merged.notes.sort(key=lambda n: (n.time, n.pitch))
    score.tracks = [merged]
    seq = tokenizer.encode(score)
    return list((seq[0] if isinstance(seq, list) else seq).ids)


def _first_bars(ids: list[int], bars: int, bar: int) -> list[int]:
    starts = [i for i, t in enumerate(ids) if t == bar]
    return ids if len(starts) <= bars else ids[: starts[bars]]


def _pairs() -> dict[str, list[tuple[Path, Path]]]:
    bach = [BACH / f"{name}.mid" for name in ("LuA01M", "MiyashitaM01M", "Ozaki01M", "Richardson01M", "WangA01M")]
    beethoven = sorted(BEETHOVEN.glob("*.mid"))
    beethoven = [p for p in beethoven if p.name != "midi_score.mid"]
    return {"train": [(BACH / "midi_score.mid", p) for p in bach[:3]],
            "val": [(BACH / "midi_score.mid", bach[3])],
            "test": [(BEETHOVEN / "midi_score.mid", beethoven[0])]}


def write_own_tokens(root: Path, *, tokenizer_file: bool = True, relabel_bar: int | None = None) -> Path:
    """Write the seed's token files under ``root/data``; ``relabel_bar``: swap ids 4 and this one everywhere
    (a tokenizer whose bar token is not 4). Returns ``root``."""
    tokenizer = default_remi()
    tokens, meta = root / "data" / "tokens", root / "data" / "meta"
    tokens.mkdir(parents=True)
    meta.mkdir(parents=True)
    swap = {4: relabel_bar, relabel_bar: 4} if relabel_bar is not None else {}
    for split, pairs in _pairs().items():
        for side, lang in ((0, "score"), (1, "perf")):
            lines = []
            for pair in pairs:
                ids = _first_bars(_ids(tokenizer, pair[side]), BARS, tokenizer.vocab["Bar_None"])
                lines.append(" ".join(str(swap.get(t, t)) for t in ids))
            (tokens / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (meta / "our_dict.txt").write_text("".join(f"{i} 1\n" for i in range(len(tokenizer.vocab))), encoding="utf-8")
    if tokenizer_file:
        tokenizer.save(meta, filename="tokenizer.json")
    return root
