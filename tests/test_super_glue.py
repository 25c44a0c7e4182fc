"""SuperGLUE / WSC / DPR tasks under tfds mock data: exact T5 strings, ReCoRD expansion, eval grouping, metrics."""
import numpy as np
import pytest
import seqio

from tasks import super_glue
from tasks_fixtures import run_task, spm_model, text  # noqa: F401  (pytest fixture)

MULTIRC_ROWS = [
    {"paragraph": "<b>Sent 1: </b>Tom sat.<br><b>Sent 2: </b>Bob ran.<br>", "question": "Who sat?", "answer": "Tom",
     "label": 1, "idx": {"paragraph": 0, "question": 5, "answer": 0}},
    {"paragraph": "P", "question": "Q", "answer": "A", "label": 0, "idx": {"paragraph": 0, "question": 5, "answer": 1}},
]
RECORD_ROWS = [
    {"passage": "Tom sat.\n@highlight\nIt was fun\n@highlight\nThe end", "query": "@placeholder sat on it",
     "entities": ["Tom", "Bob"], "answers": ["Tom", "Tom."], "idx": {"passage": 1, "query": 2}},
    {"passage": "P", "query": "Q", "entities": ["E"], "answers": [], "idx": {"passage": 1, "query": 3}},
]
WSC_ROWS = [
    {"text": "Mitchell asked Tom if he could lend some money.", "span1_index": 2, "span2_index": 4,
     "span1_text": "Tom", "span2_text": "he", "label": 1, "idx": 0},
    {"text": "Mitchell asked Tom if he could lend some money.", "span1_index": 0, "span2_index": 4,
     "span1_text": "Mitchell", "span2_text": "he", "label": 0, "idx": 1},
]
WSC_INPUT = "wsc: Mitchell asked Tom if *he* could lend some money."

# task -> (rows, [(expected inputs, expected targets)])
CASES = {
    "super_glue_boolq_v102": ([{"question": "is it", "passage": "It is.", "label": 1, "idx": 0}],
                              [("boolq passage: It is. question: is it", "True")]),
    "super_glue_cb_v102": ([{"premise": "P", "hypothesis": "H", "label": 1, "idx": 0}],
                           [("cb hypothesis: H premise: P", "contradiction")]),
    "super_glue_copa_v102": ([{"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "effect", "label": 1,
                               "idx": 0}],
                             [("copa choice1: A. choice2: B. premise: P. question: effect", "choice2")]),
    "super_glue_multirc_v102": (MULTIRC_ROWS, [
        ("multirc question: Who sat? answer: Tom paragraph: Sent 1: Tom sat. Sent 2: Bob ran. ", "True"),
        ("multirc question: Q answer: A paragraph: P", "False")]),
    "super_glue_record_v102": (RECORD_ROWS, [
        ("record query: @placeholder sat on it entities: Tom, Bob passage: Tom sat. It was fun. The end", "Tom"),
        ("record query: @placeholder sat on it entities: Tom, Bob passage: Tom sat. It was fun. The end", "Tom."),
        ("record query: Q entities: E passage: P", "<unk>")]),
    "super_glue_rte_v102": ([{"premise": "P", "hypothesis": "H", "label": 0, "idx": 0}],
                            [("rte hypothesis: H premise: P", "entailment")]),
    "super_glue_wic_v102": ([{"word": "sat", "sentence1": "Tom sat.", "sentence2": "Bob sat.", "start1": 4,
                              "start2": 4, "end1": 7, "end2": 7, "label": 0, "idx": 0}],
                            [("wic sentence1: Tom sat. sentence2: Bob sat. word: sat", "False")]),
    "super_glue_axb_v102": ([{"sentence1": "S1", "sentence2": "S2", "label": -1, "idx": 0}],
                            [("rte hypothesis: S2 premise: S1", "<unk>")]),
    "super_glue_axg_v102": ([{"premise": "P", "hypothesis": "H", "label": 1, "idx": 0}],
                            [("rte hypothesis: H premise: P", "not_entailment")]),
    "super_glue_wsc_v102_simple_train": (WSC_ROWS, [(WSC_INPUT, "Tom")]),
    "super_glue_wsc_v102_simple_eval": (WSC_ROWS, [(WSC_INPUT, "Tom"), (WSC_INPUT, "Mitchell")]),
    "dpr_v001_simple": ([{"sentence": "Bob asked Tom if he can lend some money.", "pronoun": "he",
                          "candidates": ["Bob", "Tom"], "label": 1}],
                        [("wsc: Bob asked Tom if *he* can lend some money.", "Tom")]),
}


@pytest.mark.parametrize("task_name", super_glue.TASK_NAMES)
def test_task_gives_exact_t5_strings_and_tokenized_batches(spm_model, task_name):
    rows, expected = CASES[task_name]
    examples, batch = run_task(task_name, rows)
    assert [(text(ex["inputs_pretokenized"]), text(ex["targets_pretokenized"])) for ex in examples] == expected
    assert all(ex["targets"][-1] == 1 for ex in examples)
    assert batch["encoder_input_tokens"].shape == (len(expected), 64)
    assert np.all(batch["decoder_input_tokens"][:, 0] == 0)


def test_record_expansion_keeps_answers_and_groups(spm_model):
    examples, _ = run_task("super_glue_record_v102", RECORD_ROWS)
    assert len(examples) == 3  # two answers + one '<unk>' copy for the unanswered query
    assert [list(map(text, ex["answers"])) for ex in examples] == [["Tom", "Tom."], ["Tom", "Tom."], []]
    assert [(ex["idx/passage"], ex["idx/query"]) for ex in examples] == [(1, 2), (1, 2), (1, 3)]
    task = seqio.get_mixture_or_task("super_glue_record_v102")
    targets = [task.postprocess_fn(text(ex["targets_pretokenized"]), example=ex, is_target=True) for ex in examples[:2]]
    predictions = [task.postprocess_fn(p, example=ex) for p, ex in zip(["tom", "Bob"], examples)]
    scores = {}
    for fn in task.metric_fns:
        scores.update(fn(targets, predictions))
    assert scores == {"em": 100.0, "f1": 100.0}  # the duplicate copy is ignored


def test_multirc_eval_groups_by_question(spm_model):
    examples, _ = run_task("super_glue_multirc_v102", MULTIRC_ROWS)
    task = seqio.get_mixture_or_task("super_glue_multirc_v102")
    targets = [task.postprocess_fn(text(ex["targets_pretokenized"]), example=ex, is_target=True) for ex in examples]
    assert targets == [{"value": 1, "group": 5}, {"value": 0, "group": 5}]
    predictions = [task.postprocess_fn(p, example=ex) for p, ex in zip(["True", "True"], examples)]
    scores = {}
    for fn in task.metric_fns:
        scores.update(fn(targets, predictions))
    assert scores == pytest.approx({"f1": 100.0 * 2 / 3, "exact_match": 0.0})


def test_wsc_eval_postprocessing(spm_model):
    examples, _ = run_task("super_glue_wsc_v102_simple_eval", WSC_ROWS)
    task = seqio.get_mixture_or_task("super_glue_wsc_v102_simple_eval")
    targets = [task.postprocess_fn(text(ex["targets_pretokenized"]), example=ex, is_target=True) for ex in examples]
    predictions = [task.postprocess_fn("tom", example=ex) for ex in examples]
    assert targets == [1, 0] and predictions == [1, 0]
    assert task.metric_fns[0](targets, predictions) == {"accuracy": 100.0}


def test_hand_blanked_wsc_text():
    import tensorflow as tf

    text_in = next(iter(super_glue._WSC_BLANKED_BY_HAND))
    blanked = super_glue.wsc_blanked_text({"text": tf.constant(text_in), "span2_index": tf.constant(1)})
    assert blanked.numpy().decode().endswith('"Good for X ," he said.')


def test_metrics_and_labels_per_task():
    assert super_glue.label_names("cb") == ("entailment", "contradiction", "neutral")
    cb = seqio.get_mixture_or_task("super_glue_cb_v102")
    scores = {}
    for fn in cb.metric_fns:
        scores.update(fn([0, 1, 2], [0, 1, 1]))
    assert set(scores) == {"mean_3class_f1", "accuracy"}
    assert cb.postprocess_fn("neutral") == 2 and cb.postprocess_fn("nonsense") == -1
    for config in ("boolq", "copa", "rte", "wic"):
        assert [fn([1], [1]) for fn in seqio.get_mixture_or_task(super_glue.task_name(config)).metric_fns] == [
            {"accuracy": 100.0}]
    assert seqio.get_mixture_or_task("super_glue_axb_v102").splits == ("test",)
    assert seqio.get_mixture_or_task("super_glue_axg_v102").metric_fns == []
