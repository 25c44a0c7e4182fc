"""Index validation in text preprocessors (WSC span2_index, DPR pronoun and label, GLUE/SuperGLUE labels such as
MultiRC's): an invalid example stops with one line naming it, or is skipped and counted when the user opts in;
valid examples come out as before (their exact strings are checked in test_super_glue.py and test_glue.py)."""
import gc
import inspect
import logging
import os
import subprocess
import sys
import textwrap

import gin
import pytest
import seqio
import tensorflow as tf

from tasks import preprocessors, super_glue
from tasks_fixtures import hand_written_tfds, spm_model  # noqa: F401  (pytest fixture)
from text2text import errors, launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "Mitchell asked Tom if he could lend some money."
GOOD_WSC = {"text": TEXT, "span1_index": 2, "span2_index": 4, "span1_text": "Tom", "span2_text": "he", "label": 1,
            "idx": 0}
GOOD_DPR = {"sentence": "Bob asked Tom if he can lend some money.", "pronoun": "he", "candidates": ["Bob", "Tom"],
            "label": 1}
MULTIRC = {"paragraph": "P", "question": "Q", "answer": "A", "label": 1,
           "idx": {"paragraph": 0, "question": 5, "answer": 1}}


def _wsc(rows):
    return super_glue.wsc_simple(tf.data.Dataset.from_generator(lambda: iter(rows), output_signature={
        "text": tf.TensorSpec([], tf.string), "span1_index": tf.TensorSpec([], tf.int32),
        "span2_index": tf.TensorSpec([], tf.int32), "span1_text": tf.TensorSpec([], tf.string),
        "span2_text": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int64),
        "idx": tf.TensorSpec([], tf.int32)}))


def _dpr(rows):
    return super_glue.dpr_simple(tf.data.Dataset.from_generator(lambda: iter(rows), output_signature={
        "sentence": tf.TensorSpec([], tf.string), "pronoun": tf.TensorSpec([], tf.string),
        "candidates": tf.TensorSpec([None], tf.string), "label": tf.TensorSpec([], tf.int64)}))


def _multirc(rows):
    spec = {"paragraph": tf.TensorSpec([], tf.string), "question": tf.TensorSpec([], tf.string),
            "answer": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int64),
            "idx": {key: tf.TensorSpec([], tf.int32) for key in ("paragraph", "question", "answer")}}
    return preprocessors.glue(tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec), "multirc",
                              super_glue.label_names("multirc"), super_glue.FEATURE_ORDER["multirc"])


# (preprocessor, the bad example, the problem its one error line names)
CASES = {
    "wsc_wrong_word": (_wsc, {**GOOD_WSC, "span2_index": 3, "idx": 7},  # the smallest input
                       "wsc example idx 7: span2_index 3 points at 'if', not at span2_text 'he'"),
    "wsc_index_0": (_wsc, {**GOOD_WSC, "span2_index": 0, "idx": 8},
                    "wsc example idx 8: span2_index 0 points at 'Mitchell', not at span2_text 'he'"),
    "wsc_past_the_end": (_wsc, {**GOOD_WSC, "span2_index": 9, "idx": 9},
                         "wsc example idx 9: span2_index 9 is outside the text's 9 words (0..8)"),
    "dpr_no_pronoun": (_dpr, {**GOOD_DPR, "pronoun": "she"},
                       f"dpr example {GOOD_DPR['sentence']!r}: pronoun 'she' does not occur as a word (followed by a "
                       "space, '.' or ',')"),
    "dpr_label": (_dpr, {**GOOD_DPR, "label": 2},
                  f"dpr example {GOOD_DPR['sentence']!r}: label 2 is not a candidate index 0..1"),
    "multirc_label": (_multirc, {**MULTIRC, "label": 2},
                      "multirc example idx answer=1,paragraph=0,question=5: label 2 is neither -1 (no label) nor a "
                      "class index 0..1"),
}
GOOD = {_wsc: GOOD_WSC, _dpr: GOOD_DPR, _multirc: MULTIRC}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_example_stops_with_one_line_naming_it(case):
    preprocess, bad, problem = CASES[case]
    with pytest.raises(tf.errors.OpError) as info:
        list(preprocess([GOOD[preprocess], bad]).as_numpy_iterator())
    line = str(errors.embedded_user_error(info.value))
    assert line == f"{problem}. Fix the data, or bind skip_invalid_examples.skip = True to leave such examples out"


@pytest.mark.parametrize("case", ["wsc_wrong_word", "dpr_label", "multirc_label"])
def test_invalid_examples_are_skipped_and_counted_when_the_user_opts_in(case, caplog):
    preprocess, bad, problem = CASES[case]
    good = GOOD[preprocess]
    expected = list(preprocess([good, good]).as_numpy_iterator())
    name = problem.split()[0]
    before = preprocessors.SKIPPED_INVALID[name]
    gin.bind_parameter("skip_invalid_examples.skip", True)
    try:
        with caplog.at_level(logging.WARNING):
            kept = list(preprocess([good, bad, good, bad]).as_numpy_iterator())
    finally:
        gin.clear_config()
    assert repr(kept) == repr(expected)  # the valid examples, unchanged
    assert preprocessors.SKIPPED_INVALID[name] == before + 2
    warnings = [r.getMessage() for r in caplog.records if "skipped it" in r.getMessage()]
    assert warnings == [f"{problem}; skipped it ({before + k} {name} example(s) skipped so far)" for k in (1, 2)]


def test_hand_blanked_wsc_texts_stay_valid():
    text = next(iter(super_glue._WSC_BLANKED_BY_HAND))
    row = {**GOOD_WSC, "text": text, "span2_text": "him", "span2_index": 0}
    [example] = list(_wsc([row]).as_numpy_iterator())
    assert b"*him*" in example["inputs"]


RUN_FLAGS = ["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
             "--gin.MIXTURE_OR_TASK_NAME='super_glue_wsc_v102_simple_train'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
             "--gin.config.get_config.vocab_size=512"]
BAD_ROW = dict(text=TEXT, span1_index=2, span2_index=3, span1_text="Tom", span2_text="he", label=1, idx=0)
BAD_ROW_ERROR = ("error: wsc example idx 0: span2_index 3 points at 'if', not at span2_text 'he'. Fix the data, or "
                 "bind skip_invalid_examples.skip = True to leave such examples out")

WRAPPER = textwrap.dedent(f"""
    import sys
    sys.path[:0] = [{REPO!r}, {os.path.join(REPO, "tests")!r}]
    import seqio
    from tasks_fixtures import hand_written_tfds
    from text2text import launch

    seqio.TfdsDataSource.list_shards = lambda self, split: []
    with hand_written_tfds({{"train": [{BAD_ROW!r}]}}):
        sys.exit(launch.cli(sys.argv[1:]))
""")


def test_run_py_prints_one_error_line_for_an_invalid_example(tmp_path, spm_model):  # noqa: F811
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    env = dict(os.environ, T2T_VOCAB_PATH=spm_model, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(tmp_path / "wrapper.py"), *RUN_FLAGS,
                           f"--gin.MODEL_DIR='{tmp_path / 'model'}'"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [BAD_ROW_ERROR]


def _live_tf_data_iterators() -> list:
    return [o for o in gc.get_objects() if isinstance(o, tf.data.Iterator)]


def _referrers(obj) -> list:
    """What keeps `obj` alive, for the failure message: each referrer's type, and a frame's code location."""
    return [f"{type(r).__name__} {r.f_code.co_filename}:{r.f_lineno}" if inspect.isframe(r) else type(r).__name__
            for r in gc.get_referrers(obj)]


@pytest.mark.parametrize("debug", [False, True])
def test_cli_frees_the_failed_runs_data_iterators_before_returning(tmp_path, spm_model, monkeypatch, capsys,
                                                                   debug):  # noqa: F811
    """At interpreter exit, a tf.data iterator kept alive by the error's frames hung the process now and then: its
    Python-calling pipeline waits on threads that can no longer take the GIL. cli frees it first."""
    monkeypatch.setattr(seqio.TfdsDataSource, "list_shards", lambda self, split: [])
    gc.collect()
    before = {id(o) for o in _live_tf_data_iterators()}
    gc.disable()  # only an explicit collection frees the error's reference cycles
    gin.clear_config()
    try:
        with hand_written_tfds({"train": [BAD_ROW]}):
            code = launch.cli([*RUN_FLAGS, f"--gin.MODEL_DIR='{tmp_path / 'model'}'"] + ["--debug"] * debug)
        left = {repr(o): _referrers(o) for o in _live_tf_data_iterators() if id(o) not in before}
    finally:
        gc.enable()
        gin.clear_config()
    stderr = capsys.readouterr().err
    assert code == (1 if debug else 2)
    assert ("Traceback" in stderr) == debug
    assert BAD_ROW_ERROR[len("error: "):] in stderr
    assert not left, left
