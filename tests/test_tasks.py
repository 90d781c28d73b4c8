import json

import pytest
from shared_data import SHARED_DATA
from standin import TINY_DATA

from retrieval_icl.data.examples import fingerprint, sample_examples
from retrieval_icl.data.tasks import known_tasks, load_examples, load_task, read_examples_file, task_from_columns
from retrieval_icl.errors import RiclError


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["sst2", "agnews", "trec", "rte", "mnli"])
def test_required_tasks_load_from_local_data(name):
    task = load_task(name)
    pool = load_examples(task, task.pool_split, SHARED_DATA)
    queries = load_examples(task, task.query_split, SHARED_DATA)
    assert len(pool) > 1000 and len(queries) >= 277
    assert all(len(ex.texts) == len(task.text_fields) for ex in pool[:50])
    assert {ex.label for ex in queries} == set(range(len(task.label_names)))


@pytest.mark.shared_data
def test_sst2_matches_the_official_sizes_and_labels():
    task = load_task("sst2")
    assert len(load_examples(task, "train", SHARED_DATA)) == 67349
    val = load_examples(task, "validation", SHARED_DATA)
    assert len(val) == 872
    first = json.loads((SHARED_DATA / "sst2" / "validation.jsonl").read_text().splitlines()[0])
    assert val[0].texts == (first["sentence"].strip(),) and val[0].label == first["label"]


def test_every_task_file_is_valid_and_includes_the_base_template():
    for name in known_tasks():
        task = load_task(name)
        assert task.template.output and task.template.label_prefix == " "
        assert task.label_words("default")


@pytest.mark.shared_data
def test_trec_uses_coarse_label_and_agnews_maps_train_to_the_sample():
    trec = load_task("trec")
    assert trec.label_field == "coarse_label"
    assert len(load_examples(trec, "train", SHARED_DATA)) == 5452
    agnews = load_task("agnews")
    assert len(load_examples(agnews, "train", SHARED_DATA)) == 10001


def test_unknown_task_lists_known_ones():
    with pytest.raises(RiclError, match="known: .*sst2"):
        load_task("nope")


def test_user_file_without_task_yaml(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,sentiment\ngreat film,pos\nawful,neg\nfine,1\n")
    task = task_from_columns(["review"], "sentiment", ["neg", "pos"])
    examples = read_examples_file(path, task)
    assert [(e.id, e.texts, e.label) for e in examples] == [(0, ("great film",), 1), (1, ("awful",), 0),
                                                            (2, ("fine",), 1)]


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok", "label": 5}', r"bad\.jsonl:2: label=5 is outside the label set 0\.\.1"),
    ('{"text": "  ", "label": 0}', r"bad\.jsonl:2: text is empty"),
    ('{"txt": "ok", "label": 0}', r"bad\.jsonl:2: no column 'text'"),
    ('{"text": "ok", "label": 0', r"bad\.jsonl:2: not valid JSON"),
    ('{"text": "ok", "label": "maybe"}', r"bad\.jsonl:2: label='maybe' is not a label id"),
])
def test_bad_rows_name_file_line_and_problem(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": 1}\n' + line + "\n")
    with pytest.raises(RiclError, match=message):
        read_examples_file(path, task_from_columns(["text"], "label", ["neg", "pos"]))


@pytest.mark.parametrize("name, content", [
    ("latin1.jsonl", '{"text": "fine", "label": 1}\n{"text": "\u00e9t\u00e9", "label": 0}\n'.encode("latin-1")),
    ("latin1.csv", "text,label\nfine,1\n\u00e9t\u00e9,0\n".encode("latin-1")),
    ("utf16.csv", "text,label\nfine,1\n".encode("utf-16")),
])
def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    line = 1 if name == "utf16.csv" else (2 if name.endswith(".jsonl") else 3)
    with pytest.raises(RiclError, match=rf"{name}:{line}: not UTF-8 text"):
        read_examples_file(path, task_from_columns(["text"], "label", ["neg", "pos"]))


def test_fewer_than_two_label_names_is_refused():
    with pytest.raises(RiclError, match=r"label names \['pos'\]: expected at least two distinct names"):
        task_from_columns(["text"], "label", ["pos"])


def test_missing_file_and_missing_split_are_named(tmp_path):
    task = load_task("sst2")
    with pytest.raises(RiclError, match="no such file"):
        read_examples_file(tmp_path / "x.jsonl", task)
    with pytest.raises(RiclError, match="no split 'dev' for task sst2"):
        load_examples(task, "dev", TINY_DATA)


def test_task_yaml_errors_name_the_field(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\ntext_fields: [a]\nlabel_names: [x, y]\nlabel_formats: {short: [x]}\n"
                   "template: {input: '{a}'}\n")
    with pytest.raises(RiclError, match="label format 'short' has 1 words"):
        load_task(bad)


@pytest.mark.shared_data
def test_sampling_is_seeded_and_fingerprint_changes_with_content():
    task = load_task("sst2")
    val = load_examples(task, "validation", SHARED_DATA)
    a, b = sample_examples(val, 50, 1), sample_examples(val, 50, 1)
    assert a == b and a != sample_examples(val, 50, 2)
    assert [e.id for e in a] == sorted(e.id for e in a)
    assert fingerprint(a) == fingerprint(b) != fingerprint(val[:50])
