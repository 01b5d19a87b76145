"""Pack the MusicXML score of every (n)ASAP test piece as Composer__Group__Piece.musicxml into a .tar.xz.

The device machine gets the scores this way (scripts/device_render_test.sh); the names are the ones
`imf evaluate --renderings` expects (with .mid). Usage:
    python scripts/pack_test_scores.py NASAP_DIR METADATA.csv .cache/test_scores.tar.xz
"""

from __future__ import annotations

import csv
import io
import sys
import tarfile
from pathlib import Path


def main(root: Path, metadata: Path, out: Path, split: str = "test") -> None:
    with open(metadata, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["acpas_split"] == split]
    seen: set[str] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:xz") as tar:
        for row in rows:
            folder = row["folder"]
            if folder in seen:
                continue
            seen.add(folder)
            score = root / row["xml_score"]
            if row["xml_score_available"] != "True" or not score.is_file():
                print(f"{folder}: no MusicXML score, skipped", file=sys.stderr)
                continue
            data = score.read_bytes()
            info = tarfile.TarInfo(f"test_scores/{folder.replace('/', '__')}.musicxml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    print(f"{len(seen)} test pieces (those without MusicXML skipped) -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
