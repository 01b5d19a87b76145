import pytest

from instruct_museformer.errors import UserError
from instruct_museformer.model.config import MuseformerConfig
from instruct_museformer.model.scheme import SchemeError, parse_scheme

CFG = MuseformerConfig()


def offsets(name: str, text: str, self_mode: str = "default", layers: int = 4, layer: int = 0) -> list[int]:
    return parse_scheme(name, text, layers, self_mode)[layer].as_list(-40, 40)


def test_default_con2con_and_con2sum_are_the_originals():
    c2c = offsets("con2con", CFG.con2con, CFG.con2con_self)
    assert c2c == [-32, -24, -16, -12, -8, -4, -2, -1, 0]
    c2s = offsets("con2sum", CFG.con2sum, CFG.con2sum_self)
    assert c2s == [o for o in range(-40, 0) if o not in (-32, -24, -16, -12, -8, -4, -2, -1)]
    # exactly complementary over the past, nothing in the future (museformer.md 4.1)
    assert sorted(c2c + c2s) == list(range(-40, 1))


def test_summary_parts_and_self_options():
    assert offsets("sum2con", "((None,),)", "full") == [0]
    assert offsets("sum2sum", "((None,),)", "default") == []
    assert offsets("con2con", "((((-2, 1),),),)", "none") == [-2, -1]
    assert offsets("con2con", "((((None, None),),),)", "none") == [o for o in range(-40, 41) if o != 0]


def test_per_layer_schemes_and_python_tuple_semantics():
    text = "((((-1, 0),),), (((-3, 0), 5),), (None,), ((-7,),))"
    sets = parse_scheme("con2con", text, 4)
    assert [s.as_list(-10, 10) for s in sets] == [[-1], [-3, -2, -1, 5], [], [-7]]
    # "(x)" is x, not a tuple; trailing commas optional where Python allows them
    assert parse_scheme("con2con", "(((((-1, 0)),)),)", 2)[1].as_list(-5, 5) == [-1, 0]
    assert parse_scheme("con2con", "((( -4 , (None, -6) , ),),)", 1)[0].as_list(-9, 0) == [-9, -8, -7, -4]
    # begin >= end selects nothing, as in the original
    assert offsets("con2con", "((((3, 1), -1),),)") == [-1]
    # several identical heads are accepted
    assert offsets("con2con", "(((-1,), (-1,)),)") == [-1]


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("((((-2, 0) -4),),)", 12, "expected ',' or ')'"),
        ("((((-2, 0), -4),),", 19, "unclosed '('"),
        ("((((-2, 0), x),),)", 13, "unexpected character"),
        ("((((-2, 0), -4),),))", 20, "after the end"),
        ("((((-2, 0, 1),),),)", 4, "an item must be"),
        ("(((((-2, 0), 1), 0),),)", 5, "bound must be"),
        ("((3,),)", 3, "range command must be"),
        ("(None,)", 2, "layer entry must be"),
        ("((None,), (None,), (None,))", 1, "3 layer entries"),
        ("(((-1,), (-2,)),)", 2, "all heads"),
        ("", 1, "empty scheme"),
        ("((- ,),)", 3, "digits after the sign"),
    ],
)
def test_malformed_schemes_point_at_the_problem(text: str, column: int, words: str):
    with pytest.raises(SchemeError) as info:
        parse_scheme("con2con", text, 4)
    message = str(info.value)
    assert message.startswith("--con2con: ") and words in message
    assert f"at column {column}\n" in message
    first, shown, caret = message.split("\n")
    assert shown == "  " + text and caret == "  " + " " * (column - 1) + "^"
    assert isinstance(info.value, UserError)


def test_bad_self_mode_is_a_user_error():
    with pytest.raises(UserError, match="con2con-self"):
        parse_scheme("con2con", CFG.con2con, 4, "half")


def test_no_eval_of_user_text():
    with pytest.raises(SchemeError):
        parse_scheme("con2con", "__import__('os').system('true')", 4)
