"""Render scores one after another in ONE process (``imf render`` per score, same flags), so that a compiled
decoding step (``--compile``) is compiled once and reused by every score. Prints one line per score.

    python scripts/render_each.py LIST.txt OUT_DIR [imf render flags...]

LIST.txt: one score path per line; OUT_DIR gets NAME.mid, NAME.json (report) and NAME.log per score.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

from instruct_museformer.cli.render import main as render


def main(listing: Path, out: Path, flags: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for line in listing.read_text().splitlines():
        score = Path(line.strip())
        if not line.strip() or (out / f"{score.stem}.mid").exists():
            continue
        start = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                rc = render([str(score), "-o", str(out / f"{score.stem}.mid"), "--report",
                             str(out / f"{score.stem}.json"), *flags])
            except SystemExit as error:
                rc = error.code
        (out / f"{score.stem}.log").write_text(log.getvalue())
        last = log.getvalue().strip().splitlines()[-1:] or [""]
        print(f"{score.stem} rc={rc} {time.perf_counter() - start:.1f}s {last[0]}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
