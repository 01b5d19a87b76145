"""Pack what rendering and `imf evaluate` need for one (n)ASAP split into a .tar.xz for the device machine.

The archive holds a small (n)ASAP tree -- per piece of the split its MusicXML score, and per performance its
MIDI and note alignment -- with the metadata rows of that split (`nasap/metadata.csv`), and every score again
as `scores/Composer__Group__Piece.musicxml` (the name `imf evaluate --renderings` expects, with .mid).

    python scripts/pack_eval_split.py NASAP_DIR METADATA.csv SPLIT OUT.tar.xz [--max-pieces N]

SPLIT: train, validation or test (the metadata's `acpas_split` values). With --max-pieces, the first N pieces
in metadata order.
"""

from __future__ import annotations

import argparse
import csv
import io
import tarfile
from pathlib import Path

COLUMNS = ("xml_score", "midi_performance", "note_alignments_fixed")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("metadata", type=Path)
    p.add_argument("split")
    p.add_argument("out", type=Path)
    p.add_argument("--max-pieces", type=int, default=None)
    args = p.parse_args()
    with open(args.metadata, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r["acpas_split"] == args.split and r["xml_score_available"] == "True"]
    folders = list(dict.fromkeys(r["folder"] for r in rows))[: args.max_pieces]
    rows = [r for r in rows if r["folder"] in set(folders)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.out, "w:xz") as tar:
        added: set[str] = set()
        for row in rows:
            for column in COLUMNS:
                rel = row[column].strip()
                if rel and rel not in added and (args.root / rel).is_file():
                    tar.add(args.root / rel, arcname=f"nasap/{rel}")
                    added.add(rel)
        for folder in folders:
            tar.add(args.root / folder / "xml_score.musicxml", arcname=f"scores/{folder.replace('/', '__')}.musicxml")
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        data = table.getvalue().encode()
        info = tarfile.TarInfo("nasap/metadata.csv")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    print(f"{len(folders)} pieces, {len(rows)} performances of '{args.split}' -> {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
