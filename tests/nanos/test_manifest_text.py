"""The manifest text parser: Nanos's grammar, its quirks, and clear errors for what mkfs
would mishandle.

``PYOPS_NANOS_MKFS`` names Nanos's own mkfs, and ``PYOPS_NANOS_SOURCE`` a git checkout (or
bare repository) of Nanos's sources, for its test manifests; the tests that need them skip
without them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyops.errors import InvalidInput, LimitExceeded
from pyops.nanos.dump import format_value
from pyops.nanos.manifest_text import decode_text, parse_manifest, parse_tuples
from pyops.nanos.tuples import to_text

NANOS = Path(os.environ.get("PYOPS_NANOS_SOURCE", "/work/.mirror/nanovms+nanos/repo"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("()", {}),
        ("(a:b)", {"a": "b"}),
        ("(a:b c:d)", {"a": "b", "c": "d"}),
        ("(a:(b:c) d:[e f])", {"a": {"b": "c"}, "d": ["e", "f"]}),
        # whitespace: before a name, between a name and ':', after ':' for strings only
        (" \t\r\n( a :b\n)\n", {"a": "b"}),
        ("(a: b)", {"a": "b"}),
        ("(f: g:x)", {"f": "g:x"}),
        # no whitespace needed after a quoted value
        ('(a:"x"b:y)', {"a": "x", "b": "y"}),
        # unquoted values hold : | / # and quotes; names stop at them
        ('(d:e/f:g:h x:a|b#c y:b"c")', {"d": "e/f:g:h", "x": "a|b#c", "y": 'b"c"'}),
        ('(a#b:c a"b:d)', {"a#b": "c", 'a"b': "d"}),
        # quoting: a backslash takes the next character as it is
        (r'("a b":"x y" c:"q\"r" "\n\\":"\t")', {"a b": "x y", "c": 'q"r', "n\\": "t"}),
        ('("(:)[]|/#":"()[] \n")', {"(:)[]|/#": "()[] \n"}),
        # empty names and values
        ("(:x)", {"": "x"}),
        ("(a:)", {"a": ""}),
        ('(a:"")', {"a": ""}),
        ("(a:b:)", {"a": "b:"}),
        ("(v:[a:])", {"v": ["a:"]}),
        # comments, wherever whitespace is skipped; '#' right after ':' starts one
        ("# c\n(a:b # c\n c:d)# end", {"a": "b", "c": "d"}),
        ("(a:#c\nd)", {"a": "d"}),
        ("(a:b#c)", {"a": "b#c"}),
        ("(a:b)#", {"a": "b"}),
        # vectors: whitespace before ']' adds an empty string
        ("(v:[])", {"v": []}),
        ("(v:[ ])", {"v": []}),
        ("(v:[ a b])", {"v": ["a", "b"]}),
        ("(v:[a ])", {"v": ["a", ""]}),
        ("(v:[a\n])", {"v": ["a", ""]}),
        ("(v:[(a:b)[c d ]])", {"v": [{"a": "b"}, ["c", "d", ""]]}),
        ('(v:["a b" "" c])', {"v": ["a b", "", "c"]}),
        ("(v:[(a:b) (c:d)])", {"v": [{"a": "b"}, {"c": "d"}]}),
        # a name given twice keeps its last value
        ("(a:1 a:2)", {"a": "2"}),
        # UTF-8 passes through
        ("(naïve:日本 ü:[é])", {"naïve": "日本", "ü": ["é"]}),
    ],
)
def test_the_grammar(text: str, expected: dict[str, Any]) -> None:
    assert parse_tuples(text) == [expected]
    assert parse_manifest(text.encode()) == expected


def test_the_verified_example_of_the_format_spec() -> None:
    text = r"(children:() # c" "\n" r' "a b":"x y" c:"q\"r" d:e/f:g:h e:[x (k:v) [1 2]] f: g:"")'
    assert parse_manifest(text) == {
        "children": {},
        "a b": "x y",
        "c": 'q"r',
        "d": "e/f:g:h",
        "e": ["x", {"k": "v"}, ["1", "2"]],
        "f": 'g:""',
    }


def test_several_tuples_and_the_last_is_the_manifest() -> None:
    text = "(a:1)\n(b:2) (c:3)"
    assert parse_tuples(text) == [{"a": "1"}, {"b": "2"}, {"c": "3"}]
    assert parse_manifest(text) == {"c": "3"}
    assert parse_tuples("  # nothing\n") == []


def where(text: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_tuples(text)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x(a:b)", "line 1, column 1: expected '(' to open a tuple, found 'x'"),
        ("(a:b) x", "line 1, column 7: expected '(' to open a tuple, found 'x'"),
        ("[a]", "line 1, column 1: expected '(' to open a tuple, found '['"),
        ("(a: (b:c))", "line 1, column 5: expected a name or ')', found '('"),
        ("(a:b\n  ((", "line 2, column 3: expected a name or ')', found '('"),
        ("(a|b:c)", "line 1, column 3: expected ':' after the name 'a' (at line 1, column 2)"),
        ("(a b)", "line 1, column 4: expected ':' after the name 'a'"),
        ("(a:b]", "column 5: expected a name or ')', found ']'"),
        ("(a:b", "line 1, column 1: the text ends before the tuple opened here is closed"),
        ("(a:(b:[c d", "line 1, column 7: the text ends before the vector opened here"),
        ("(a:b) (c:", "line 1, column 7: the text ends before the tuple"),
        ("(a:", "the text ends before the tuple"),
        ('(a:"b', "line 1, column 4: this quoted string is never closed"),
        ('("a\\', "line 1, column 2: this quoted string is never closed"),
        ("(v:[a )", "line 1, column 7: ')' inside the vector opened at line 1, column 4"),
        ("(v:[)", "')' inside the vector"),
        ("(v:[(a:b))", "')' inside the vector"),
        ("(a\0:b)", "line 1, column 3: the text contains a NUL character"),
        ("(é:\ud800)", "the text is not UTF-8 (a lone surrogate)"),
    ],
)
def test_errors_name_the_line_and_column(text: str, message: str) -> None:
    assert message in where(text)


def test_text_that_is_not_utf8_is_refused_where_it_goes_wrong() -> None:
    with pytest.raises(
        InvalidInput, match=r"line 2, column 5: the text is not UTF-8 \(byte 0xe9\)"
    ):
        parse_tuples(b"(a:b\n c:d\xe9)")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        parse_tuples(b"(a:\xe2\x82)")  # a sequence cut short at the end


def test_an_empty_manifest_says_so() -> None:
    with pytest.raises(InvalidInput, match="the manifest holds no tuple"):
        parse_manifest(b"")
    with pytest.raises(InvalidInput, match="the -t tuple holds no tuple"):
        parse_manifest("# only a comment", "the -t tuple")


def test_nesting_is_bounded_but_children_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_TUPLE_DEPTH", "10")
    assert parse_manifest("(a:" * 9 + "(b:c)" + ")" * 9)
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_TUPLE_DEPTH"):
        parse_manifest("(a:" * 10 + "(b:c)" + ")" * 10)
    with pytest.raises(LimitExceeded, match="line 1, column 13"):
        parse_manifest("(v:" + "[" * 10 + "]" * 10 + ")")  # the tenth '[' is level 11
    # a folder 50 deep is 50 levels: its children tuples share their folder's level
    deep = "(children:(" + "d:(children:(" * 8 + ")" * 16 + "))"
    assert parse_manifest(deep)


def test_deep_text_never_recurses() -> None:
    depth = 1000  # within the default limit, and past Python's own recursion limit
    text = "(children:(" + "d:(children:(" * depth + "f:(contents:(host:x))" + "))" * depth + "))"
    root = parse_manifest(text)
    node = root
    for _ in range(depth):
        node = node["children"]["d"]
    assert node["children"]["f"] == {"contents": {"host": "x"}}
    assert format_value(root).count("children") == depth + 1


def test_the_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_MANIFEST_TEXT_BYTES", "100")
    assert decode_text(b"(" + b" " * 98 + b")")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_MANIFEST_TEXT_BYTES"):
        parse_tuples(b"(" + b" " * 99 + b")")


# The manifest text pyops writes (tuples.to_text, for ``image manifest --text``) reads back.
_names = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=8)
_values: st.SearchStrategy[Any] = st.recursive(
    _names,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_names, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names, _values, max_size=5))
def test_text_written_by_to_text_reads_back(value: dict[str, Any]) -> None:
    assert parse_tuples(to_text(value)) == [value]


# --- against Nanos's own mkfs -------------------------------------------------------------


def nanos_mkfs() -> Path:
    path = os.environ.get("PYOPS_NANOS_MKFS")
    if not path or not Path(path).is_file():
        pytest.skip("set PYOPS_NANOS_MKFS to Nanos's mkfs tool to run this test")
    return Path(path)


def nanos_manifests() -> dict[str, str]:
    """Nanos's own test manifests (test/runtime/*.manifest) from its sources."""
    if not NANOS.is_dir():
        pytest.skip(f"set PYOPS_NANOS_SOURCE to Nanos's sources (none at {NANOS})")
    names = subprocess.run(
        ["git", "-C", str(NANOS), "ls-tree", "--name-only", "HEAD", "test/runtime/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    out = {}
    for name in names:
        if name.endswith(".manifest"):
            show = ["git", "-C", str(NANOS), "show", f"HEAD:{name}"]
            out[name] = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    assert len(out) > 20
    return out


def printed_by_mkfs(text: str) -> str:
    """What mkfs prints of the root of a manifest text without boot entries: files lose
    their contents, and imagesize is taken out, before it prints."""

    def drop(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != "contents"}
        return value  # mkfs leaves what is inside vectors as it is

    root = parse_manifest(text)
    root.pop("imagesize", None)
    return format_value(drop(root))


def first_printed(stdout: bytes) -> str:
    """The metadata of the first filesystem mkfs printed."""
    text = stdout.decode("utf-8", "replace")
    assert text.startswith("UUID: ") and "\nmetadata\n" in text, text
    printed = text.split("\nmetadata\n", 1)[1]
    for after in ("\nUUID: ", "\ncouldn't "):  # the next filesystem, or mkfs's halt
        printed = printed.split(after, 1)[0]
    return printed.rstrip("\n")


def as_the_makefile_feeds_it(text: str) -> str:
    """A test manifest with TEST-LIBS and ARCH_DIR put in, as Nanos's pc Makefile does."""
    libs = subprocess.run(
        ["git", "-C", str(NANOS), "show", "HEAD:platform/pc/test-libs"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n", 1)[0]
    return text.replace("TEST-LIBS", libs).replace("ARCH_DIR", "output/platform/pc")


def test_every_nanos_test_manifest_parses_as_nanos_mkfs_parses_it(tmp_path: Path) -> None:
    mkfs = nanos_mkfs()
    for name, raw in nanos_manifests().items():
        text = as_the_makefile_feeds_it(raw)
        root = parse_manifest(text)
        # mkfs prints a filesystem's metadata before it reads its files, then stops at the
        # first host file missing here (they are relative to Nanos's tree). With a boot
        # tuple, the boot filesystem comes first.
        run = subprocess.run(
            [str(mkfs), str(tmp_path / "x.img")],
            input=text.encode(),
            capture_output=True,
            cwd=tmp_path,
        )
        if "children" not in root:  # dummy.manifest, for an image of the kernel alone (-k)
            assert run.returncode != 0 and b"assertion" in run.stdout + run.stderr, name
            continue
        if "boot" in root:
            expected = printed_by_mkfs(to_text(root["boot"]))
        else:
            expected = printed_by_mkfs(text)
        assert first_printed(run.stdout) == expected, name


# Texts built from the grammar's pieces, put together at random: many are manifests, many
# are near misses.
_SEPARATORS = st.sampled_from(["", " ", "\n", "\t", "  ", "# c\n", " #\n"])
_WORDS = st.sampled_from(["a", "b", "x:y", "a#b", 'q"r', "/p", "é", "()", "[", "]", "|"])


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def _manifest_texts(draw: st.DrawFn) -> str:
    def word() -> str:
        text = draw(_WORDS)
        return _quote(text) if draw(st.booleans()) else text

    def value(depth: int) -> str:
        kind = draw(st.integers(0, 4 if depth < 3 else 1))
        if kind <= 1:
            return draw(_SEPARATORS) + word()
        if kind == 2:
            return tuple_(depth + 1)
        items = [value(depth + 1) for _ in range(draw(st.integers(0, 3)))]
        return "[" + draw(_SEPARATORS).join(items) + draw(_SEPARATORS) + "]"

    def tuple_(depth: int) -> str:
        entries = []
        for _ in range(draw(st.integers(0, 3))):
            entries.append(word() + draw(_SEPARATORS) + ":" + value(depth))
        body = "".join(e + draw(_SEPARATORS) for e in entries)
        return "(" + draw(_SEPARATORS) + body + ")"

    text = "(children:() " + tuple_(0)[1:]
    if draw(st.booleans()):  # a near miss: one character taken out or put in
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + draw(st.sampled_from(list('()[]:"\\# '))) + text[at:]
    return text


def _limited() -> None:  # mkfs's parser leaks memory by design; keep a runaway small
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_manifest_texts())
def test_random_texts_are_taken_or_refused_as_nanos_mkfs_does(text: str, tmp_path: Path) -> None:
    mkfs = nanos_mkfs()
    try:
        ours: str | None = printed_by_mkfs(text)
        error = ""
    except InvalidInput as exc:
        ours, error = None, str(exc)
    if "')' inside the vector" in error:
        return  # mkfs recurses on it until its stack overflows
    run = subprocess.run(
        [str(mkfs), str(tmp_path / "x.img")],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        preexec_fn=_limited,
    )
    if run.returncode == 0:
        # pyops takes what mkfs takes, but for an unfinished tuple after the last one
        # (which mkfs drops without a word), and prints it as mkfs does
        if ours is None:
            assert "the text ends before" in error, (text, error)
        else:
            assert first_printed(run.stdout) == ours, text
    elif ours is not None:
        # mkfs fails on a manifest only when its root has no children tuple (an assertion)
        assert not isinstance(parse_manifest(text).get("children"), dict), (text, run)
    else:
        assert b"manifest parse error" in run.stdout + run.stderr or run.stdout == b"", text
