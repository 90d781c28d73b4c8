"""Every file reader fails cleanly: a JSONL, CSV, Parquet or YAML file that is not what was expected gives one
RiclError naming the file and line, or row for Parquet (the CLI prints it as one `error:` line, exit code 2); random
or damaged bytes never do worse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from retrieval_icl.cli import app
from retrieval_icl.data.examples import Example
from retrieval_icl.data.tasks import load_examples, load_task, read_examples_file, task_from_columns
from retrieval_icl.errors import RiclError
from retrieval_icl.yaml_config import read_yaml

DATA = Path(__file__).resolve().parent / "data"
TASK = task_from_columns(["text"], "label", ["neg", "pos"])
GOOD_JSONL = '{"text": "fine", "label": 1}\n{"text": "awful", "label": "neg"}\n'
GOOD_CSV = "text,label\nfine,1\nawful,neg\n"
GOOD_EXAMPLES = [Example(0, ("fine",), 1), Example(1, ("awful",), 0)]


def write(folder: Path, name: str, content: str | bytes) -> Path:
    """`content` in folder/name, text as UTF-8 with its newlines kept as written."""
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def assert_fails(path: Path, pattern: str, read=lambda p: read_examples_file(p, TASK)) -> str:
    """The reader raises one RiclError, one line long, that names the file and matches `pattern`."""
    with pytest.raises(RiclError) as caught:
        read(path)
    message = str(caught.value)
    assert "\n" not in message and path.name in message, message
    assert re.search(pattern, message), message
    return message


# --- JSONL and CSV: what a valid file gives must not change ---------------------------------------------------

def test_the_tiny_sst2_split_loads_with_ids_in_file_order():
    task = load_task("sst2")
    val = load_examples(task, "validation", DATA)
    rows = [json.loads(line) for line in (DATA / "sst2" / "validation.jsonl").read_text().splitlines()]
    expected = [(i, (r["sentence"].strip(),), r["label"]) for i, r in enumerate(rows)]
    assert [(e.id, e.texts, e.label) for e in val] == expected


@pytest.mark.parametrize("name, content", [
    ("plain.jsonl", GOOD_JSONL),
    ("bom.jsonl", b"\xef\xbb\xbf" + GOOD_JSONL.encode()),  # a UTF-8 byte-order mark is accepted and dropped
    ("blank_lines.jsonl", "\n" + GOOD_JSONL.replace("\n", "\n  \n")),
    ("plain.csv", GOOD_CSV),
    ("bom.csv", b"\xef\xbb\xbf" + GOOD_CSV.encode()),
    ("crlf.csv", GOOD_CSV.replace("\n", "\r\n")),
    ("blank_lines.csv", GOOD_CSV.replace("\n", "\n\n")),
    ("float_label.jsonl", GOOD_JSONL.replace('"label": 1', '"label": 1.0')),
])
def test_valid_files_give_the_same_examples(tmp_path, name, content):
    assert read_examples_file(write(tmp_path, name, content), TASK) == GOOD_EXAMPLES


def test_a_quoted_csv_field_may_span_lines_and_hold_commas(tmp_path):
    path = write(tmp_path, "quoted.csv", 'text,label\n"one, two\nthree",1\nfour,0\n')
    assert read_examples_file(path, TASK) == [Example(0, ("one, two\nthree",), 1), Example(1, ("four",), 0)]


# --- JSONL and CSV: each failure names file, line and what was expected ------------------------------------------

@pytest.mark.parametrize("name, content, pattern", [
    ("latin1.jsonl", '{"text": "ok", "label": 1}\n{"text": "\u00e9t\u00e9", "label": 0}\n'.encode("latin-1"),
     r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 11\); save the file as UTF-8"),
    ("cp1252.csv", "text,label\nok,1\n\u201cquoted\u201d,0\n".encode("cp1252"),
     r"cp1252\.csv:3: not UTF-8 text \(byte 0x93 at column 1\)"),
    ("bom_then_bad.jsonl", b'\xef\xbb\xbf{"text": "\xff", "label": 1}\n',
     r":1: not UTF-8 text \(byte 0xff at column 11\)"),
    ("utf16.jsonl", GOOD_JSONL.encode("utf-16"),
     r"utf16\.jsonl:1: not UTF-8 text: it starts with a UTF-16 byte-order mark"),
    ("utf16.csv", GOOD_CSV.encode("utf-16"), r"utf16\.csv:1: not UTF-8 text: it starts with a UTF-16 byte-order mark"),
    ("utf16le.csv", GOOD_CSV.encode("utf-16-le"), r"utf16le\.csv:1: a NUL byte at column 2; expected UTF-8 text"),
    ("nul.csv", "text,label\nok,1\nbad\0text,0\n", r"nul\.csv:3: a NUL byte at column 4"),
    ("nul.jsonl", '{"text": "ok", "label": 1}\n\0\0\0\n', r"nul\.jsonl:2: a NUL byte at column 1"),
])
def test_bytes_that_are_not_utf8_text(tmp_path, name, content, pattern):
    assert_fails(write(tmp_path, name, content), pattern)


@pytest.mark.parametrize("line, pattern", [
    ('{"text": "ok" "label": 0}', r"bad\.jsonl:4: not valid JSON \(Expecting ',' delimiter, column 15\); "
                                  r"expected one JSON object per line"),
    ("[", r"bad\.jsonl:4: not valid JSON \(Expecting value"),
    ('["ok", 0]', r"bad\.jsonl:4: expected a JSON object, got list"),
    ('"ok"', r"bad\.jsonl:4: expected a JSON object, got str"),
    pytest.param("[" * 100_000, r"bad\.jsonl:4: not valid JSON \(a number too long or nesting too deep\)", id="deep"),
    pytest.param('{"text": "ok", "label": ' + "9" * 5000 + "}", r"bad\.jsonl:4: not valid JSON \(a number too long",
                 id="long-number"),
    ('{"text": 5, "label": 0}', r"bad\.jsonl:4: text=5 is not a string \(int\); expected text"),
    ('{"text": ["a"], "label": 0}', r"bad\.jsonl:4: text=\['a'\] is not a string \(list\)"),
    ('{"text": "ok", "label": 1.5}', r"bad\.jsonl:4: label=1\.5 is not a label id 0\.\.1 or one of \['neg', 'pos'\]"),
    ('{"text": "ok", "label": 1e999}', r"bad\.jsonl:4: label=inf is not a label id"),
    ('{"text": "ok", "label": NaN}', r"bad\.jsonl:4: label=nan is not a label id"),
    ('{"text": "ok", "label": null}', r"bad\.jsonl:4: label=None is not a label id"),
    pytest.param('{"text": "ok", "label": "' + "x" * 500 + '"}', r"label='x{10,40}\.\.\.x*' is not a label id",
                 id="long-label-shortened"),
])
def test_a_bad_json_line_names_its_line(tmp_path, line, pattern):
    # line 4: two good lines, then a blank
    assert_fails(write(tmp_path, "bad.jsonl", GOOD_JSONL + "\n" + line + "\n"), pattern)


@pytest.mark.parametrize("content, pattern", [
    ("text,label\nok,1\nstray, comma,0\n", r"bad\.csv:3: 3 field\(s\), expected 2 like the header \(text,label\)$"),
    ("text,label\nok,1\n\njust text\n", r"bad\.csv:4: 1 field\(s\), expected 2"),  # the blank line 3 is counted
    ('text,label\n"unclosed,1\nok,0\nfine,1\n',
     r"bad\.csv:2: 1 field\(s\), expected 2 .*runs on to line 4: an unclosed quote\?"),
    ("text,text,label\na,b,1\n", r"bad\.csv:1: column 'text' appears 2 times in the header; expected distinct"),
    ("review,label\nok,1\n", r"bad\.csv:2: no column 'text'; columns are \['label', 'review'\]"),
    ("text,label\nok\r,1\n", r"bad\.csv:2: not valid CSV \(new-line character seen in unquoted field"),
    pytest.param("text,label\n" + "a" * 200_000 + ",1\n", r"bad\.csv:2: not valid CSV \(field larger than field limit",
                 id="huge-field"),
    ("text,label\n  ,1\n", r"bad\.csv:2: text is empty"),
    ("text,label\nok,maybe\n", r"bad\.csv:2: label='maybe' is not a label id 0\.\.1 or one of \['neg', 'pos'\]"),
])
def test_a_bad_csv_row_names_its_line(tmp_path, content, pattern):
    assert_fails(write(tmp_path, "bad.csv", content), pattern)


@pytest.mark.parametrize("name, content, pattern", [
    ("empty.jsonl", "", r"empty\.jsonl: no examples; expected one JSON object per line"),
    ("blank.jsonl", "\n \n", r"blank\.jsonl: no examples; expected one JSON object per line"),
    ("empty.csv", "", r"empty\.csv: no examples; expected a header line, then one row per example"),
    ("header.csv", "text,label\n", r"header\.csv: no examples; expected a header line"),
    ("data.txt", GOOD_JSONL, r"data\.txt: unsupported file type '\.txt'; expected \.jsonl, \.csv or \.parquet"),
])
def test_empty_and_unsupported_files(tmp_path, name, content, pattern):
    assert_fails(write(tmp_path, name, content), pattern)


def test_a_directory_or_a_missing_file(tmp_path):
    (tmp_path / "train.jsonl").mkdir()
    assert_fails(tmp_path / "train.jsonl",
                 r"train\.jsonl: is a directory; expected a \.jsonl, \.csv or \.parquet file of examples")
    assert_fails(tmp_path / "gone.csv", r"gone\.csv: no such file; expected a \.jsonl, \.csv or \.parquet file")
    task = load_task("sst2")
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.jsonl").mkdir()
    with pytest.raises(RiclError, match=r"sst2/train\.jsonl: is a directory"):
        load_examples(task, "train", tmp_path)


# --- Parquet: the same examples as JSONL and CSV; each failure names the file and, for a row, `row N` ----------------

def write_parquet(folder: Path, name: str, columns: dict, **options) -> Path:
    """A Parquet file of these columns (lists or pyarrow arrays), written by pyarrow as a user's tools would."""
    path = folder / name
    pq.write_table(pa.table(columns), path, **options)
    return path


@pytest.mark.parametrize("columns", [
    {"text": ["fine", "awful"], "label": [1, 0]},
    {"text": ["fine", "awful"], "label": ["pos", "neg"]},  # label names, as in JSONL and CSV
    {"text": ["fine", "awful"], "label": ["1", "neg"]},  # a string column mixing ids and names, as CSV has
    {"text": ["fine", "awful"], "label": [1.0, 0.0]},
    {"text": ["fine", "awful"], "label": pa.array(["pos", "neg"]).dictionary_encode()},  # pandas' categorical
    {"id": [7, 8], "text": pa.array([" fine ", "awful"], pa.large_string()), "label": pa.array([1, 0], pa.int8())},
])
def test_a_parquet_file_gives_the_same_examples(tmp_path, columns):
    assert read_examples_file(write_parquet(tmp_path, "good.parquet", columns), TASK) == GOOD_EXAMPLES


def test_parquet_rows_are_counted_across_row_groups_and_found_in_a_data_dir(tmp_path):
    rows = [json.loads(line) for line in (DATA / "sst2" / "train.jsonl").read_text().splitlines()]
    (tmp_path / "sst2").mkdir()
    columns = {"sentence": [r["sentence"] for r in rows], "label": [r["label"] for r in rows]}
    path = write_parquet(tmp_path / "sst2", "train.parquet", columns, row_group_size=7)
    task = load_task("sst2")
    assert load_examples(task, "train", tmp_path) == load_examples(task, "train", DATA)  # sst2/train.parquet
    assert load_examples(task, str(path)) == load_examples(task, "train", DATA)  # a Parquet path as the split
    columns["label"][33] = 5  # in the fifth row group of seven rows
    write_parquet(tmp_path / "sst2", "train.parquet", columns, row_group_size=7)
    assert_fails(path, r"train\.parquet row 33: label=5 is outside the label set 0\.\.1",
                 read=lambda p: load_examples(task, "train", tmp_path))


@pytest.mark.parametrize("columns, pattern", [
    ({"review": ["ok"], "label": [1]}, r"bad\.parquet row 0: no column 'text'; columns are \['label', 'review'\]"),
    ({"text": ["ok", "fine"], "rating": [1, 0]}, r"bad\.parquet row 0: no column 'label'"),
    ({"text": [1, 5], "label": [1, 0]}, r"bad\.parquet row 0: text=1 is not a string \(int\); expected text"),
    ({"text": ["ok", None], "label": [1, 0]}, r"bad\.parquet row 1: text=None is not a string \(NoneType\)"),
    ({"text": [b"ok", b"x"], "label": [1, 0]}, r"bad\.parquet row 0: text=b'ok' is not a string \(bytes\)"),
    ({"text": ["ok", "  "], "label": [1, 0]}, r"bad\.parquet row 1: text is empty"),
    ({"text": ["ok", "fine"], "label": [1, 2]}, r"bad\.parquet row 1: label=2 is outside the label set 0\.\.1"),
    ({"text": ["ok", "fine"], "label": [1, None]}, r"bad\.parquet row 1: label=None is not a label id 0\.\.1"),
    ({"text": ["ok", "fine"], "label": ["pos", "maybe"]}, r"bad\.parquet row 1: label='maybe' is not a label id"),
    ({"text": ["ok", "fine"], "label": [1.0, 0.5]}, r"bad\.parquet row 1: label=0\.5 is not a label id"),
    ({"text": ["ok", "fine"], "label": [1.0, float("nan")]}, r"bad\.parquet row 1: label=nan is not a label id"),
    ({"text": pa.array([b"ok", b"caf\xe9"]).view(pa.string()), "label": [1, 0]},  # a writer that did not check
     r"bad\.parquet row 1: column 'text' is not UTF-8 text \(byte 0xe9 at position 4\); expected UTF-8 strings"),
    ({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())},
     r"bad\.parquet: no examples; expected a Parquet table with one row per example$"),
])
def test_a_bad_parquet_row_names_its_row(tmp_path, columns, pattern):
    assert_fails(write_parquet(tmp_path, "bad.parquet", columns), pattern)


def test_a_parquet_schema_with_a_repeated_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array([1])],
                                        names=["text", "text", "label"]), path)
    assert_fails(path, r"bad\.parquet: column 'text' appears 2 times in the schema; expected distinct column names")


def parquet_bytes(compression: str = "snappy") -> bytes:
    """A valid Parquet file of the good examples, five times over in row groups of four rows."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["fine", "awful"] * 5, "label": [1, 0] * 5}), sink,
                   compression=compression, row_group_size=4)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("content, pattern", [
    pytest.param(b"", r"Parquet file size is 0 bytes", id="empty"),
    pytest.param(GOOD_CSV.encode(), r"magic bytes not found", id="csv-named-parquet"),
    pytest.param(parquet_bytes()[:-30], r"magic bytes not found", id="truncated"),
    pytest.param(parquet_bytes()[:100] + parquet_bytes()[-80:], r"smaller than the size reported", id="middle-cut"),
    pytest.param(parquet_bytes()[:4] + b"\xff" * 8 + parquet_bytes()[12:], r"Couldn't deserialize", id="bad-header"),
    pytest.param(parquet_bytes()[:20] + b"\xff" * 8 + parquet_bytes()[28:], r"Invalid BYTE_ARRAY", id="bad-page"),
])
def test_a_parquet_file_that_pyarrow_cannot_read(tmp_path, content, pattern):
    assert_fails(write(tmp_path, "bad.parquet", content),
                 rf"bad\.parquet: not a readable Parquet file \(.*{pattern}.*\); expected a Parquet table with one row")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compression=st.sampled_from(["snappy", "zstd", "none"]), cut=st.none() | st.integers(0, 2000),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4))
def test_damaged_parquet_bytes_give_examples_or_a_one_line_error(tmp_path, compression, cut, flips):
    content = bytearray(parquet_bytes(compression))
    for at, byte in flips:
        content[at % len(content)] = byte
    path = write(tmp_path, "damaged.parquet", bytes(content[:cut]))
    try:
        result = read_examples_file(path, TASK)
    except RiclError as e:
        assert "\n" not in str(e) and "damaged.parquet" in str(e), str(e)
        return
    assert result and all(isinstance(e, Example) and e.label in (0, 1) and e.texts[0] for e in result)


# --- YAML ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, pattern", [
    ("- a\n- b\n", r"bad\.yaml: expected a mapping at the top level, got list"),
    ("just words\n", r"bad\.yaml: expected a mapping at the top level, got str"),
    ("", r"bad\.yaml: the file is empty; expected a mapping of keys"),
    ("# only a comment\n", r"bad\.yaml: the file is empty"),
    ("a: 1\nb: [1, 2\nc: 3\n",
     r"bad\.yaml:3: not valid YAML \(while parsing a flow sequence, expected ',' or ']', but got ':'"),
    ("a: 1\n b: 2\n", r"bad\.yaml:2: not valid YAML \(mapping values are not allowed here, column 3\)"),
    ("a:\n\tb: 1\n",
     r"bad\.yaml:2: not valid YAML \(.*'\\t'.*column 1\); indent with spaces, YAML does not allow tabs"),
    ("a: 1\nb: x\0y\n", r"bad\.yaml:2: not valid YAML \(unacceptable character #x0000"),
    ("a: 1\nwhen: 2020-02-30\n",
     r"bad\.yaml:2: not valid YAML \(bad timestamp value \(day is out of range for month\), column 7\)"),
    ("a: 1\nb: !!int x\n", r"bad\.yaml:2: not valid YAML \(bad int value \(invalid literal for int"),
    ("a: !!python/object/apply:os.system [ls]\n", r"bad\.yaml:1: not valid YAML \(could not determine a constructor"),
    ("a: *nowhere\n", r"bad\.yaml:1: not valid YAML \(found undefined alias 'nowhere'"),
    ("a: 1\n---\nb: 2\n", r"bad\.yaml:2: not valid YAML \(expected a single document in the stream"),
    pytest.param("[" * 2000, r"bad\.yaml: not valid YAML \(nested too deeply\)", id="nested-too-deep"),
    ("a: !!bool maybe\n", r"bad\.yaml:1: not valid YAML \(bad bool value \('maybe'\), column 4\)"),
    ("a: !!int\n", r"bad\.yaml:1: not valid YAML \(bad int value \(string index out of range\)"),
    ("1: one\n", r"bad\.yaml: top-level key 1 is not a string \(int\); expected names like `name:`"),
    ("include: [a.yaml]\n", r"bad\.yaml: include: expected a file name, got list"),
    ("include: bad.yaml\na: 1\n", r"bad\.yaml: include: bad\.yaml makes a cycle \(bad\.yaml -> bad\.yaml\)"),
    ("include: nope.yaml\n", r"nope\.yaml: no such file; expected a YAML file, the include of .*bad\.yaml"),
    (b"a: 1\nb: \xe9\n", r"bad\.yaml:2: not UTF-8 text \(byte 0xe9 at column 4\)"),
    ("a: 1\n".encode("utf-16"), r"bad\.yaml:1: not UTF-8 text: it starts with a UTF-16 byte-order mark"),
])
def test_a_bad_yaml_names_file_line_and_problem(tmp_path, content, pattern):
    assert_fails(write(tmp_path, "bad.yaml", content), pattern, read_yaml)


def test_yaml_with_a_bom_or_crlf_reads_as_plain_utf8(tmp_path):
    text = "a: |\n  x\n  y\nb: 'p\n  q'\nc: [1, 2]\n"
    plain = read_yaml(write(tmp_path, "plain.yaml", text))
    assert plain == {"a": "x\ny\n", "b": "p q", "c": [1, 2]}
    assert read_yaml(write(tmp_path, "bom.yaml", b"\xef\xbb\xbf" + text.encode())) == plain
    assert read_yaml(write(tmp_path, "crlf.yaml", text.replace("\n", "\r\n"))) == plain


def test_an_include_cycle_through_two_files(tmp_path):
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    cycle = r"b\.yaml: include: a\.yaml makes a cycle \(a\.yaml -> b\.yaml -> a\.yaml\); expected a chain of base files"
    assert_fails(write(tmp_path, "a.yaml", "include: b.yaml\n"), cycle, read_yaml)


def test_yaml_path_that_is_a_directory_or_missing(tmp_path):
    (tmp_path / "conf.yaml").mkdir()
    assert_fails(tmp_path / "conf.yaml", r"conf\.yaml: is a directory; expected a YAML file", read_yaml)
    assert_fails(tmp_path / "gone.yaml", r"gone\.yaml: no such file; expected a YAML file", read_yaml)


@pytest.mark.parametrize("template, pattern", [
    ("{0} {text}", r"template\.input '\{0\} \{text\}' is not a format string over \['text'\]"),
    ("{text", r"template\.input '\{text' is not a format string"),
    ("{text.nope}", r"template\.input '\{text\.nope\}' is not a format string over \['text'\] \('str' object has no"),
    ("{txt}", r"template\.input names 'txt', expected only the text fields \['text'\]"),
])
def test_a_task_template_that_does_not_format(tmp_path, template, pattern):
    content = f"name: t\ntext_fields: [text]\nlabel_names: [a, b]\ntemplate: {{input: {json.dumps(template)}}}\n"
    assert_fails(write(tmp_path, "task.yaml", content), pattern, load_task)


# --- Property: random bytes and odd encodings give valid results or a RiclError, nothing else ---------------------

# Pieces of JSON, CSV and YAML, so that random files also get past the first character of each parser.
FRAGMENTS = ['{"text": ', '"ok"', '"caf\u00e9 \u201cq\u201d"', ', "label": ', "1", "0", "-1", "1.5", "1e999", "null",
             "}", "[", "]", "{", ",", '"', "'", ":", "- ", "\n", "\r\n", "\t", " ", "\0", "\ufeff", "#", "&a", "*a",
             "text,label", "include: x.yaml", "name: t", "!!int ", "2020-02-30"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]
SUFFIXES = [".jsonl", ".csv", ".yaml"]

odd_text = st.tuples(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=30).map("".join),
                     st.sampled_from(ENCODINGS)).map(lambda te: te[0].encode(te[1], errors="replace"))
contents = st.binary(max_size=300) | odd_text


def read_any(path: Path) -> object:
    """What the readers make of one file: Examples for data, a dict and a task (or its error) for YAML."""
    if path.suffix != ".yaml":
        return read_examples_file(path, TASK)
    data = read_yaml(path)
    try:
        load_task(path)
    except RiclError:
        pass
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=contents, suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_give_examples_or_a_one_line_error(tmp_path, content, suffix):
    path = write(tmp_path, "fuzz" + suffix, content)
    try:
        result = read_any(path)
    except RiclError as e:
        assert "\n" not in str(e) and "fuzz" in str(e), str(e)
        return
    if suffix == ".yaml":
        assert isinstance(result, dict) and all(isinstance(k, str) for k in result)
    else:
        assert result and all(isinstance(e, Example) and e.label in (0, 1) for e in result)
        assert [e.id for e in result] == list(range(len(result)))
        assert all(t and t == t.strip() and "\0" not in t for e in result for t in e.texts)


# --- Through the CLI: one `error:` line, exit code 2, no traceback ------------------------------------------------

def ricl(*args: object):
    """`ricl ARGS` in-process."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_cli_error(result, pattern: str) -> None:
    """Exit code 2, and stderr is one `error:` line matching `pattern`, with no traceback anywhere."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("content, pattern", [
    ("\ufeff".encode() + '{"sentence": "ok", "label": 1}\n{"sentence": "ok" "label": 0}\n'.encode(),
     r"sst2/train\.jsonl:2: not valid JSON"),
    ('{"sentence": "ok", "label": 1}\n'.encode("utf-16"),
     r"sst2/train\.jsonl:1: not UTF-8 text: it starts with a UTF-16"),
    (b'{"sentence": "ok", "label": 1}\n\0\0\n', r"sst2/train\.jsonl:2: a NUL byte"),
    (b"", r"sst2/train\.jsonl: no examples; expected one JSON object per line"),
])
def test_cli_index_build_on_a_bad_split(tmp_path, content, pattern):
    (tmp_path / "sst2").mkdir()
    write(tmp_path / "sst2", "train.jsonl", content)
    result = ricl("index", "build", "--task", "sst2", "--data-dir", tmp_path, "--out", tmp_path / "index")
    assert_cli_error(result, pattern)
    assert not (tmp_path / "index").exists()


def test_cli_index_build_on_a_bad_csv_and_a_bad_task_yaml(tmp_path):
    bad_csv = write(tmp_path, "reviews.csv", "text,label\nok,1\nstray, comma,0\n")
    assert_cli_error(ricl("index", "build", "--file", bad_csv, "--text-field", "text", "--labels", "neg,pos",
                          "--out", tmp_path / "i"), r"reviews\.csv:3: 3 field\(s\), expected 2")
    task = write(tmp_path, "task.yaml", "name: t\ntext_fields: [text]\n\tlabel_names: [a, b]\n")
    good = write(tmp_path, "good.jsonl", GOOD_JSONL)
    assert_cli_error(ricl("index", "build", "--task", task, "--file", good, "--out", tmp_path / "i"),
                     r"task\.yaml:3: not valid YAML .*YAML does not allow tabs")


def test_cli_index_build_on_a_bad_parquet_file(tmp_path):
    corrupt = write(tmp_path, "reviews.parquet", parquet_bytes()[:-30])
    assert_cli_error(ricl("index", "build", "--file", corrupt, "--text-field", "text", "--labels", "neg,pos",
                          "--out", tmp_path / "i"), r"reviews\.parquet: not a readable Parquet file \(")
    bad_row = write_parquet(tmp_path, "rows.parquet", {"text": ["ok", "fine", "good"], "label": [1, 0, 3]})
    assert_cli_error(ricl("index", "build", "--file", bad_row, "--text-field", "text", "--labels", "neg,pos",
                          "--out", tmp_path / "i"), r"rows\.parquet row 2: label=3 is outside the label set")
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("command", ["compare", "study"])
@pytest.mark.parametrize("content, pattern", [
    ("task: sst2\nk: [1\n", r"exp\.yaml:3: not valid YAML"),
    ("- task: sst2\n", r"exp\.yaml: expected a mapping at the top level, got list"),
    (b"task: sst2\nk: \xff\n", r"exp\.yaml:2: not UTF-8 text \(byte 0xff at column 4\)"),
])
def test_cli_config_readers(tmp_path, command, content, pattern):
    assert_cli_error(ricl(command, write(tmp_path, "exp.yaml", content)), pattern)
