import pytest

from instruct_museformer.data.dictionary import (
    Dictionary,
    UnknownTokenError,
    build_numeric_dictionary,
    write_token_dictionary,
)
from instruct_museformer.errors import UserError


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_keeps_ids_counts_and_specials(tmp_path):
    d = Dictionary([1, 1, 5, 1, 7, 0, 3])
    d.save(tmp_path / "dict.txt")
    assert (tmp_path / "dict.txt").read_text() == "0 1\n1 1\n2 5\n3 1\n4 7\n5 0\n6 3\n"
    loaded = Dictionary.load(tmp_path / "dict.txt")
    assert loaded == d and len(loaded) == 7
    assert (loaded.pad(), loaded.bos(), loaded.eos(), loaded.unk()) == (0, 1, 2, 3)
    assert loaded.index("6") == 6 and loaded[4] == "4" and "7" not in loaded and "06" not in loaded
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_overwrite_flag_is_accepted(tmp_path):
    d = Dictionary.load(_write(tmp_path / "d.txt", "0 1\n1 1\n2 1 #fairseq:overwrite\n3 1\n4 1\n"))
    assert len(d) == 5


def test_encode_line_appends_eos_like_fairseq():
    d = Dictionary.numeric(10)
    assert d.encode_line("4 5  9\t7") == [4, 5, 9, 7, 2]
    assert d.encode_line("4 5", append_eos=False) == [4, 5]
    assert d.encode_line("   ") == [2]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("0 1\n1 1\n2 1\n1 1\n", 4, "duplicate symbol '1' (first on line 2)"),
        ("0 1\n1 1\n3 1\n", 3, "symbol '3' where token id 2 was expected"),
        ("0 1\n1 1\n2 x\n", 3, "count 'x' is not an integer"),
        ("0 1\n\n", 2, "expected '<symbol> <count>'"),
        ("<s> 1\n", 1, "symbol '<s>' where token id 0 was expected"),
    ],
)
def test_bad_dictionary_files_name_file_and_line(tmp_path, text, line, problem):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(UserError) as info:
        Dictionary.load(path)
    assert f"{path}:{line}: " in str(info.value) and problem in str(info.value)


def test_missing_and_too_small_dictionary(tmp_path):
    with pytest.raises(UserError, match="dictionary file not found"):
        Dictionary.load(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="at least the special ids"):
        Dictionary.load(_write(tmp_path / "small.txt", "0 1\n1 1\n"))


@pytest.mark.parametrize(("line", "position", "token"), [("4 5 10", 3, "10"), ("4 07", 2, "07"), ("x 4", 1, "x"),
                                                         ("4 -1", 2, "-1"), ("4 +5", 2, "+5"), ("1.5", 1, "1.5")])
def test_unknown_token_names_file_line_and_token(line, position, token):
    d = Dictionary.numeric(10)
    with pytest.raises(UnknownTokenError) as info:
        d.encode_line(line, source="data/train.perf", line_no=12)
    message = str(info.value)
    assert message.startswith(f"data/train.perf:12: token {position} '{token}' is not in the dictionary")


def test_built_dictionary_keeps_line_k_as_id_k():
    counts = [0, 0, 3, 0, 9, 0, 0, 2]  # ids seen: 2 (EOS), 4, 7
    d = build_numeric_dictionary(counts, padding_factor=8)
    assert len(d) == 8 and d.counts == counts
    d = build_numeric_dictionary(counts + [1], padding_factor=8)
    assert len(d) == 16 and d.counts[8] == 1 and d.counts[9:] == [0] * 7
    assert len(build_numeric_dictionary([0, 0, 4], padding_factor=1)) == 5  # specials and Bar at least


def test_write_token_dictionary_lists_every_id(tmp_path):
    d = write_token_dictionary(6, tmp_path / "meta" / "our_dict.txt")
    assert (tmp_path / "meta" / "our_dict.txt").read_text() == "".join(f"{i} 1\n" for i in range(6))
    assert Dictionary.load(tmp_path / "meta" / "our_dict.txt") == d
