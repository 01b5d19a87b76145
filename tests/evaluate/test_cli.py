"""``imf evaluate`` end to end on the Bach fixture: manifest and (n)ASAP folder modes, report schema, bad input."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from instruct_museformer.cli import main as imf
from instruct_museformer.errors import UserError
from instruct_museformer.evaluate.compare import METRICS
from instruct_museformer.evaluate.runner import SCHEMA, SYSTEMS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nasap"
BACH = FIXTURES / "Bach" / "Prelude" / "bwv_854"
HUMANS = ["MiyashitaM01M", "Ozaki01M", "Richardson01M", "WangA01M"]


def _check_schema(report: dict) -> None:
    assert report["schema"] == SCHEMA
    assert {"created", "command", "workers", "wall_seconds", "conventions", "bins", "counts", "overall",
            "overall_ceiling_pieces", "pieces", "skipped", "perplexity"} <= set(report)
    assert set(report["bins"]) == {"velocity", "ioi", "duration", "pedal"}
    for system in SYSTEMS:
        entry = report["overall"][system]
        assert set(report["overall_ceiling_pieces"][system]) == set(entry)
        for mode in ("vs_each", "vs_pool"):
            assert list(entry[mode]) == list(METRICS)
            assert all(set(v) == {"mean", "pieces"} for v in entry[mode].values())
    for piece in report["pieces"]:
        assert {"name", "score", "rendering", "humans", "skipped", "systems", "error", "seconds"} <= set(piece)
        for system, row in piece["systems"].items():
            assert system in SYSTEMS
            if row is not None:
                assert {"vs_each", "vs_pool", "coverage"} <= set(row)


def test_manifest_run_writes_report_table_and_plot(tmp_path, capsys):
    manifest = tmp_path / "eval.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["score", "rendering", "humans"])
        humans = ";".join(str(BACH / f"{h}.mid") for h in HUMANS) + ";missing_pianist.mid"
        # stand-in rendering: a fifth human, aligned with parangonar like any rendering
        writer.writerow([BACH / "xml_score.musicxml", BACH / "LuA01M.mid", humans])
    perplexity = tmp_path / "valid.json"
    perplexity.write_text(json.dumps({  # what imf validate --results-json writes
        "checkpoint": "ck", "num_updates": 3, "loss_unit": "bits per target token",
        "subsets": {"test": {"loss": 3.6, "ppl": 12.13, "truncate": 8192, "samples": 2}}}))
    out = tmp_path / "report.json"
    code = imf(["evaluate", "--manifest", str(manifest), "--out", str(out), "--plot", str(tmp_path / "plots"),
                "--workers", "1", "--perplexity-json", str(perplexity)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "OVERALL" in printed and "ceiling" in printed and "deadpan" in printed and "rendering" in printed
    assert "perplexity of ck (imf validate): test 12.13 (3.600 bits)" in printed
    report = json.loads(out.read_text())
    _check_schema(report)
    assert report["perplexity"]["subsets"]["test"]["ppl"] == 12.13
    (piece,) = report["pieces"]
    assert piece["name"].endswith("bwv_854") and piece["error"] is None
    assert len(piece["humans"]) == 4
    missing = tmp_path / "missing_pianist.mid"
    assert [s["reason"] for s in report["skipped"]] == [f"{missing}: performance MIDI not found"]
    rendering, deadpan, ceiling = (piece["systems"][s] for s in SYSTEMS)
    assert rendering["coverage"]["coverage"] > 0.9
    # a human as the "rendering" agrees with the other humans far better than the deadpan does
    assert rendering["vs_pool"]["tempo_beat_r"] > 0.5 and deadpan["vs_pool"]["tempo_beat_r"] is None
    assert rendering["vs_pool"]["js_velocity"] < deadpan["vs_pool"]["js_velocity"]
    assert deadpan["bpm"] == 100.0 and ceiling["performances"] == 4
    assert report["overall"]["rendering"]["pieces"] == 1
    assert (tmp_path / "plots" / f"{str(BACH).strip('/').replace('/', '__')}.png").stat().st_size > 1000


def test_nasap_folder_mode_with_renderings(tmp_path, capsys):
    root = tmp_path / "nasap"
    shutil.copytree(BACH, root / "Bach" / "Prelude" / "bwv_854")
    metadata = tmp_path / "meta.csv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["folder", "xml_score", "midi_performance", "robust_note_alignment", "note_alignments_fixed",
                         "xml_score_available", "acpas_split"])
        folder = "Bach/Prelude/bwv_854"
        for i, human in enumerate(["LuA01M", "Ozaki01M", "WangA01M"]):
            writer.writerow([folder, f"{folder}/xml_score.musicxml", f"{folder}/{human}.mid", "1.0" if i < 2 else "0.0",
                             f"{folder}/{human}_note_alignments/note_alignment.tsv", "True", "test"])
        other = ["Other/Piece", "Other/Piece/xml_score.musicxml", "Other/Piece/P.mid", "1.0", "", "True", "train"]
        writer.writerow(other)
    renderings = tmp_path / "renderings"
    renderings.mkdir()
    shutil.copy(BACH / "Richardson01M.mid", renderings / "Bach__Prelude__bwv_854.mid")
    shutil.copy(BACH / "Richardson01M.mid", renderings / "Nobody__Nothing.mid")
    out = tmp_path / "r.json"
    args = ["evaluate", "--corpus", "nasap", "--root", str(root), "--metadata", str(metadata), "--split", "test",
            "--out", str(out), "--workers", "1", "--overall-only"]
    assert imf([*args, "--renderings", str(renderings)]) == 0
    report = json.loads(out.read_text())
    _check_schema(report)
    (piece,) = report["pieces"]  # the train piece is not evaluated
    assert piece["name"] == "Bach/Prelude/bwv_854" and piece["rendering"].endswith("Bach__Prelude__bwv_854.mid")
    assert len(piece["humans"]) == 2  # the non-robust alignment is not a reference
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert "robust_note_alignment=0" in reasons["WangA01M.mid"] and "no test piece" in reasons["Nobody__Nothing.mid"]
    assert piece["systems"]["rendering"]["vs_each"]["velocity_r"] > 0.4
    # --deadpan-only ignores the renderings
    assert imf([*args, "--renderings", str(renderings), "--deadpan-only"]) == 0
    report = json.loads(out.read_text())
    assert report["pieces"][0]["systems"]["rendering"] is None and report["counts"]["renderings"] == 0
    assert report["pieces"][0]["systems"]["deadpan"]["coverage"]["coverage"] > 0.95


def test_bad_calls_are_user_errors(tmp_path, capsys):
    from instruct_museformer.cli.evaluate import main

    with pytest.raises(UserError, match="manifest not found"):
        main(["--manifest", str(tmp_path / "none.csv")])
    with pytest.raises(UserError, match="not an \\(n\\)ASAP directory"):
        main(["--corpus", "nasap", "--root", str(tmp_path / "none")])
    with pytest.raises(UserError, match="needs --root"):
        main(["--corpus", "nasap"])
    bad = tmp_path / "bad.csv"
    bad.write_text("rendering,humans\na.mid,b.mid\n")
    with pytest.raises(UserError, match="missing column 'score'"):
        main(["--manifest", str(bad)])
    good = tmp_path / "good.csv"
    good.write_text(f"score,humans\n{BACH / 'xml_score.musicxml'},{BACH / 'LuA01M.mid'}\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        main(["--manifest", str(good), "--perplexity-json", str(tmp_path / "list.json")])
    # through the dispatcher: one line on stderr, exit status 2, no traceback
    assert imf(["evaluate", "--manifest", str(tmp_path / "none.csv")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_unreadable_score_is_reported_not_fatal(tmp_path):
    score = tmp_path / "broken.musicxml"
    score.write_text("<score-partwise><oops")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"score,humans\n{score},{BACH / 'LuA01M.mid'}\n{BACH / 'xml_score.musicxml'},"
                        f"{BACH / 'LuA01M.mid'};{BACH / 'Ozaki01M.mid'}\n")
    out = tmp_path / "r.json"
    assert imf(["evaluate", "--manifest", str(manifest), "--out", str(out), "--workers", "2", "--no-deadpan"]) == 0
    report = json.loads(out.read_text())
    assert report["counts"]["pieces_with_error"] == 1
    broken, good = report["pieces"]
    assert "cannot read score" in broken["error"]
    assert good["systems"]["ceiling"]["performances"] == 2 and good["systems"]["deadpan"] is None
