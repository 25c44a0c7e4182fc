"""Custom tasks from TSV / JSONL / TFDS / seqio sources: exact strings, bad rows with file:line, name lookup, gin."""
import json
import logging

import gin
import pytest
import seqio
import tensorflow as tf

from tasks import custom
from tasks_fixtures import SEQUENCE_LENGTH, hand_written_tfds, spm_model, text  # noqa: F401
from text2text.errors import UserError, embedded_user_error


def _pairs(task, split="train", **kwargs):
    """(inputs, targets) text of one pass over `split`; a bad row raises UserError as it would in training."""
    ds = task.get_dataset(SEQUENCE_LENGTH, split=split, shuffle=False, try_in_mem_cache=False, **kwargs)
    try:
        return [(text(ex["inputs_pretokenized"]), text(ex["targets_pretokenized"])) for ex in ds.as_numpy_iterator()]
    except tf.errors.OpError as exc:
        raise embedded_user_error(exc) or exc


def _write(path, content: bytes):
    path.write_bytes(content)
    return str(path)


def test_tsv_single_input(spm_model, tmp_path):
    path = _write(tmp_path / "sst.tsv", b"sentence\tlabel\ngreat fun\tpositive\r\nnot fun\tnegative\n")
    task = custom.register_text_task("custom_tsv", prefix="sentiment", source=path, inputs="sentence",
                                     targets="label", splits=("train", "validation"))
    assert _pairs(task) == [("sentiment great fun", "positive"), ("sentiment not fun", "negative")]
    assert _pairs(task, "validation") == _pairs(task)
    assert task.num_input_examples("train") == 2
    assert task.metric_fns[0](["a", "b"], ["a", "c"]) == {"accuracy": 50.0}


def test_tsv_several_inputs_follow_key_value_rule(spm_model, tmp_path):
    path = _write(tmp_path / "nli.tsv", b"id\tpremise\thypothesis\tlabel\n7\tA cat sat.\tA cat is here.\tyes\n")
    task = custom.register_text_task("custom_nli", prefix="nli", source={"train": path},
                                     inputs=["premise", "hypothesis"], targets="label")
    assert _pairs(task) == [("nli premise: A cat sat. hypothesis: A cat is here.", "yes")]


def test_jsonl_with_numbers_and_no_prefix(spm_model, tmp_path):
    rows = [{"q": "2 + 2", "context": "math", "a": 4}, {"q": "is it?", "context": "x", "a": True, "extra": [1]}]
    path = _write(tmp_path / "qa.jsonl", "\n".join(json.dumps(r) for r in rows).encode() + b"\n\n")
    task = custom.register_text_task("custom_jsonl", prefix="", source=path, inputs=["q", "context"], targets="a")
    assert _pairs(task) == [("q: 2 + 2 context: math", "4"), ("q: is it? context: x", "True")]


def test_tfds_source_formats_in_tensorflow(spm_model):
    task = custom.register_text_task("custom_tfds", prefix="sst2", source="tfds:glue/sst2:2.0.0",
                                     inputs="sentence", targets="label", splits=["validation"])
    with hand_written_tfds({"validation": [{"sentence": "it is fun", "label": 1, "idx": 0}]}):
        assert _pairs(task, "validation") == [("sst2 it is fun", "1")]
    task = custom.register_text_task("custom_tfds", prefix="sst2", source="tfds:glue/sst2:2.0.0",
                                     inputs="text", targets="label", splits=["validation"])
    with hand_written_tfds({"validation": [{"sentence": "it is fun", "label": 1, "idx": 0}]}):
        with pytest.raises(UserError, match=r"no field\(s\) \['text'\]; fields are \['idx', 'label', 'sentence'\]"):
            _pairs(task, "validation")


def test_seqio_data_source(spm_model):
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files: tf.data.Dataset.from_tensors({"a": "x y", "b": "z", "t": "ok"}), splits=["train"])
    task = custom.register_text_task("custom_fn", prefix="p", source=source, inputs=["a", "b"], targets="t")
    assert _pairs(task) == [("p a: x y b: z", "ok")]
    with pytest.raises(UserError, match="splits="):
        custom.register_text_task("custom_fn2", prefix="p", source=source, inputs="a", targets="t", splits=["x"])


@pytest.mark.parametrize("name,content,line,problem", [
    ("fields.tsv", b"text\tlabel\na\tb\nonly one field\n", 3, "expected 2 tab-separated fields"),
    ("tabs.tsv", b"text\tlabel\na\tb\nc\td\textra\n", 3, "a value contains a tab"),
    ("empty.tsv", b"text\tlabel\na\tb\nc\t  \n", 3, "empty target 'label'"),
    ("utf8.tsv", b"text\tlabel\na\tb\nc\xff\xfe\td\n", 3, "invalid UTF-8"),
    ("key.jsonl", b'{"text": "a", "label": "b"}\n\n{"text": "c"}\n', 3, "missing key"),
    ("json.jsonl", b'{"text": "a", "label": "b"}\n{"text": "c", \n', 2, "invalid JSON"),
    ("nested.jsonl", b'{"text": {"x": 1}, "label": "b"}\n', 1, "expected a string or number"),
    ("target.jsonl", b'{"text": "a", "label": ""}\n', 1, "empty target"),
])
def test_bad_rows_name_file_and_line(spm_model, tmp_path, name, content, line, problem):
    path = _write(tmp_path / name, content)
    task = custom.register_text_task("custom_bad", prefix="p", source=path, inputs="text", targets="label")
    with pytest.raises(UserError, match=problem) as error:
        _pairs(task)
    assert f"{path}:{line}:" in str(error.value) and "skip_bad_rows=True" in str(error.value)


def test_header_must_name_the_columns(tmp_path):
    path = _write(tmp_path / "header.tsv", b"sentence\tgold\na\tb\n")
    with pytest.raises(UserError, match=r"header\.tsv:1: header row has no column\(s\) \['label'\]"):
        custom.register_text_task("custom_bad", prefix="p", source=path, inputs="sentence", targets="label")
    with pytest.raises(UserError, match="cannot tell the format"):
        custom.register_text_task("custom_bad", prefix="p", source=str(tmp_path / "x.csv"), inputs="a", targets="b")


def test_skip_bad_rows_counts_and_logs(spm_model, tmp_path, caplog):
    path = _write(tmp_path / "mixed.tsv", b"text\tlabel\ngood\tyes\nbad\nc\t\nd\te\tf\n\xff\tno\nfine\tno\n")
    task = custom.register_text_task("custom_skip", prefix="p", source=path, inputs="text", targets="label",
                                     skip_bad_rows=True)
    with caplog.at_level(logging.WARNING):
        assert _pairs(task) == [("p good", "yes"), ("p fine", "no")]
    assert [bad.line for bad in task.source.skipped] == [3, 4, 5, 6]
    assert "skipped 4 bad row(s); first: " + path + ":3: expected 2" in caplog.text
    only_bad = _write(tmp_path / "bad.tsv", b"text\tlabel\nbad\n")
    task = custom.register_text_task("custom_skip", prefix="p", source=only_bad, inputs="text", targets="label",
                                     skip_bad_rows=True)
    with pytest.raises(UserError, match=r"bad\.tsv: no usable rows \(1 bad row\(s\) skipped\)"):
        _pairs(task)
    header_only = _write(tmp_path / "header.tsv", b"text\tlabel\n\n")
    with pytest.raises(UserError, match=r"header\.tsv: no usable rows \(the file has no data lines\)"):
        custom.register_text_task("custom_skip", prefix="p", source=header_only, inputs="text", targets="label")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UserError, match="did you mean 'glue_cola_v002'"):
        custom.ensure_registered("glue_cola_v02")
    assert custom.ensure_registered("glue_v002_proportional").name == "glue_v002_proportional"
    assert custom.ensure_registered("squad_v010_allanswers").name == "squad_v010_allanswers"
    with pytest.raises(UserError, match="did you mean 'accuracy'"):
        custom.register_text_task("custom_m", prefix="p", source="tfds:x", inputs="a", targets="b",
                                  metrics=["acuracy"])


def test_gin_entry_point_registers_without_python(spm_model, tmp_path):
    path = _write(tmp_path / "g.jsonl", b'{"s": "hello", "y": "hi"}\n')
    gin.clear_config()
    try:
        gin.parse_config([
            "register_text_task_from_file.name = 'custom_gin'",
            f"register_text_task_from_file.path = {{'train': '{path}', 'validation': '{path}'}}",
            "register_text_task_from_file.inputs = 's'",
            "register_text_task_from_file.targets = 'y'",
            "register_text_task_from_file.prefix = 'greet'",
            "register_text_task_from_file.metrics = ['accuracy', 'squad']",
        ])
        assert custom.register_text_task_from_file() == "custom_gin"
    finally:
        gin.clear_config()
    task = seqio.get_mixture_or_task("custom_gin")
    assert _pairs(task, "validation") == [("greet hello", "hi")]
    assert len(task.metric_fns) == 2
