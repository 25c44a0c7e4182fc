"""Streaming file sources (tasks/text_files.py): same rows as a plain reading of the files, sharding by file and by
line, a seeded order, bad rows named by file:line (also far into a file and out of a DataIterator), skip counts."""
import json
import logging
import random

import gin
import pytest
import seqio
import tensorflow as tf

from tasks import custom, text_files
from tasks_fixtures import SEQUENCE_LENGTH, spm_model, text  # noqa: F401
from text2text import data
from text2text.errors import UserError, embedded_user_error

WORDS = ["the", "cat", "sat", "ünïcode", "naïve", "€5", "a,b", "'q'", '"d"', "x\\y", "ok"]


def _random_rows(rng, n):
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))), "label": rng.choice(["pos", "neg"]),
             "id": str(rng.randint(0, 99))} for _ in range(n)]


def _write_tsv(path, rows, bom=False, crlf=False):
    newline = "\r\n" if crlf else "\n"
    lines = ["id\ttext\tlabel"] + [f"{r['id']}\t{r['text']}\t{r['label']}" for r in rows]
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode() + b"\n\n")
    return str(path)


def _write_jsonl(path, rows):
    lines = [json.dumps({**r, "id": int(r["id"])}, ensure_ascii=bool(i % 2)) for i, r in enumerate(rows)]
    path.write_text("\n".join(lines[:3] + [""] + lines[3:]))  # an empty line, no final newline
    return str(path)


def _source(files, **kwargs):
    return text_files.TextFileSource({"train": list(files)}, ["text", "label"], "label", **kwargs)


def _rows(source, shuffle=False, seed=None, shard=None):
    ds = source.get_dataset("train", shuffle=shuffle, seed=seed, shard_info=seqio.ShardInfo(*shard) if shard else None)
    return [(text(r["text"]), text(r["label"])) for r in ds.as_numpy_iterator()]


@pytest.fixture
def four_files(tmp_path):
    """Two TSV and two JSONL files (BOM, CRLF, empty lines, no final newline), their (text, label) pairs as written,
    and their rows."""
    rng = random.Random(0)
    rows = [_random_rows(rng, n) for n in (40, 7, 1500, 25)]  # 1500 rows: more than one batch of lines
    paths = [_write_tsv(tmp_path / "a.tsv", rows[0], bom=True), _write_jsonl(tmp_path / "b.jsonl", rows[1]),
             _write_tsv(tmp_path / "c.tsv", rows[2], crlf=True), _write_jsonl(tmp_path / "d.jsonl", rows[3])]
    return paths, [[(r["text"], r["label"]) for r in file_rows] for file_rows in rows], rows


def test_stream_equals_the_files_in_order_and_counts_lines(four_files, monkeypatch):
    paths, rows, _ = four_files
    source = _source(paths)
    assert _rows(source) == [row for file_rows in rows for row in file_rows]
    monkeypatch.setattr(text_files, "_COUNT_CHUNK_BYTES", 7)  # lines split across chunks are counted once
    assert source.num_input_examples("train") == sum(map(len, rows)) == 1572
    assert source.list_shards("train") == paths


def test_task_formats_streamed_rows_like_the_in_memory_reader(spm_model, four_files):
    paths, _, rows = four_files
    task = custom.register_text_task("stream_equal", prefix="p", source={"train": paths[:2], "validation": paths[3]},
                                     inputs=["id", "text"], targets="label")
    ds = task.get_dataset(SEQUENCE_LENGTH, split="validation", shuffle=False)  # in-memory cache under 10k rows
    expected = [(f"p id: {r['id']} text: {r['text']}", r["label"]) for r in rows[3]]
    assert [(text(x["inputs_pretokenized"]), text(x["targets_pretokenized"])) for x in ds.as_numpy_iterator()] == expected
    assert task.num_input_examples("train") == 47


@pytest.mark.parametrize("files,shards", [(4, 2), (1, 2), (2, 3)])
def test_shards_partition_the_rows(four_files, files, shards):
    paths, rows, _ = four_files
    source = _source(paths[:files])
    parts = [_rows(source, shard=(i, shards)) for i in range(shards)]
    assert sorted(sum(parts, [])) == sorted(_rows(source)) and min(map(len, parts)) > 0
    if files >= shards:  # whole files: shard 0 reads files 0 and 2, shard 1 files 1 and 3
        assert parts == [rows[0] + rows[2], rows[1] + rows[3]]
    else:  # every file's lines after the header alternate between the shards (b.jsonl's 4th line is empty)
        lines = [f[:3] + [None] + f[3:] if path.endswith(".jsonl") else f for f, path in zip(rows, paths[:files])]
        assert parts == [[r for f in lines for r in f[i::shards] if r] for i in range(shards)]


def test_order_is_deterministic_for_a_seed(spm_model, four_files):
    paths, _, _ = four_files
    source = _source(paths)
    assert _rows(source, shuffle=True, seed=3) == _rows(source, shuffle=True, seed=3)
    orders = {tuple(_rows(source, shuffle=True, seed=seed)) for seed in range(6)}
    assert len(orders) > 1  # the file order is drawn from the seed
    task = custom.register_text_task("stream_seed", prefix="p", source=[paths[0], paths[1], paths[3]],
                                     inputs="text", targets="label")

    def stream(seed):
        ds = task.get_dataset(SEQUENCE_LENGTH, shuffle=True, seed=seed, try_in_mem_cache=False)
        return [text(x["inputs_pretokenized"]) for x in ds.take(64).as_numpy_iterator()]

    assert stream(7) == stream(7) != stream(8)


def test_bad_row_far_into_the_second_file_names_file_and_line(tmp_path):
    good = _write_tsv(tmp_path / "good.tsv", _random_rows(random.Random(1), 5))
    lines = ["text\tlabel"] + [f"row {i}\tyes" for i in range(2500)]
    lines[2401] = "row without a label"  # line 2402, in the third batch of lines
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    source = _source([good, str(bad)])
    iterator = data.DataIterator(lambda: source.get_dataset("train", shuffle=False).batch(64))
    with pytest.raises(UserError, match=rf"^{bad}:2402: expected 2 tab-separated fields.*skip_bad_rows=True"):
        for _ in iterator:
            pass
    with pytest.raises(tf.errors.OpError) as error:  # the same line reaches any other reader inside TF's error
        list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
    assert str(embedded_user_error(error.value)).startswith(f"{bad}:2402: ")


def test_skip_bad_rows_in_several_files_counts_each(tmp_path, caplog):
    first = tmp_path / "one.tsv"
    first.write_text("text\tlabel\na\tyes\nbroken\nb\tno\n")
    second = tmp_path / "two.jsonl"
    second.write_text('{"text": "c", "label": "yes"}\n{"text": "d"}\n[1]\n{"text": "e", "label": "no"}\n')
    source = _source([str(first), str(second)], skip_bad_rows=True)
    with caplog.at_level(logging.WARNING):
        assert _rows(source) == [("a", "yes"), ("b", "no"), ("c", "yes"), ("e", "no")]
        _rows(source)  # a second pass logs nothing new
    assert [(b.path, b.line) for b in source.skipped] == [(str(first), 3), (str(second), 2), (str(second), 3)]
    assert f"{first}: skipped 1 bad row(s); first: {first}:3: expected 2" in caplog.text
    assert f"{second}: skipped 2 bad row(s); first: {second}:2: missing key(s) ['label']" in caplog.text
    assert caplog.text.count("skipped 2 bad row(s)") == 1
    all_bad = tmp_path / "all_bad.tsv"
    all_bad.write_text("text\tlabel\nx\n")
    with pytest.raises(tf.errors.OpError) as error:
        _rows(_source([str(first), str(all_bad)], skip_bad_rows=True))
    assert str(embedded_user_error(error.value)) == f"{all_bad}: no usable rows (1 bad row(s) skipped)"


def test_gin_path_list_and_glob(spm_model, tmp_path):
    for name in ("p1", "p2", "p3"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"s": name, "y": "t"}) + "\n")
    gin.clear_config()
    try:
        gin.parse_config([
            "register_text_task_from_file.name = 'stream_gin'",
            f"register_text_task_from_file.path = {{'train': ['{tmp_path}/p3.jsonl', '{tmp_path}/p[12].jsonl']}}",
            "register_text_task_from_file.inputs = 's'",
            "register_text_task_from_file.targets = 'y'",
        ])
        assert custom.register_text_task_from_file() == "stream_gin"
    finally:
        gin.clear_config()
    source = seqio.get_mixture_or_task("stream_gin").source
    assert [text(r["s"]) for r in source.get_dataset("train", shuffle=False).as_numpy_iterator()] == ["p3", "p1", "p2"]
    with pytest.raises(UserError, match=r"no data file matches '.*/q\*\.jsonl'"):
        custom.register_text_task("stream_gin", prefix="", source=f"{tmp_path}/q*.jsonl", inputs="s", targets="y")
