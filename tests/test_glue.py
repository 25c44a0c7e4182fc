"""GLUE tasks under tfds mock data: exact T5 input/target strings, tokenized batches, postprocessing, metrics."""
import numpy as np
import pytest
import seqio

from tasks import glue, preprocessors
from tasks_fixtures import run_task, spm_model, text  # noqa: F401  (pytest fixture)

# task -> [(TFDS row, expected inputs, expected targets)], the rows shaped like the real TFDS features.
CASES = {
    "glue_cola_v002": [({"sentence": "Tom sat.", "label": 1, "idx": 0}, "cola sentence: Tom sat.", "acceptable"),
                       ({"sentence": "Sat Tom", "label": 0, "idx": 1}, "cola sentence: Sat Tom", "unacceptable")],
    "glue_sst2_v002": [({"sentence": "a big fun dog", "label": 1, "idx": 1}, "sst2 sentence: a big fun dog",
                        "positive")],
    "glue_mrpc_v002": [({"sentence1": "A cat.", "sentence2": "The cat.", "label": 0, "idx": 2},
                        "mrpc sentence1: A cat. sentence2: The cat.", "not_equivalent")],
    "glue_qqp_v002": [({"question1": "Is it?", "question2": "Was it?", "label": 1, "idx": 3},
                       "qqp question1: Is it? question2: Was it?", "duplicate")],
    "glue_stsb_v002": [({"sentence1": "A", "sentence2": "B", "label": 3.82, "idx": 4},
                        "stsb sentence1: A sentence2: B", "3.8"),
                       ({"sentence1": "A", "sentence2": "B", "label": 4.93, "idx": 5},
                        "stsb sentence1: A sentence2: B", "5.0")],
    "glue_mnli_v002": [({"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 6},
                        "mnli hypothesis: H. premise: P.", "entailment"),
                       ({"premise": "P", "hypothesis": "H", "label": -1, "idx": 7},
                        "mnli hypothesis: H premise: P", "<unk>")],
    "glue_mnli_matched_v002": [({"premise": "P", "hypothesis": "H", "label": 2, "idx": 8},
                                "mnli hypothesis: H premise: P", "contradiction")],
    "glue_mnli_mismatched_v002": [({"premise": "P", "hypothesis": "H", "label": 1, "idx": 9},
                                   "mnli hypothesis: H premise: P", "neutral")],
    "glue_qnli_v002": [({"question": "Q?", "sentence": "S.", "label": 1, "idx": 10},
                        "qnli question: Q? sentence: S.", "not_entailment")],
    "glue_rte_v002": [({"sentence1": "S1", "sentence2": "S2", "label": 0, "idx": 11},
                       "rte sentence1: S1 sentence2: S2", "entailment")],
    "glue_wnli_v002": [({"sentence1": "S1", "sentence2": "S2", "label": 1, "idx": 12},
                        "wnli sentence1: S1 sentence2: S2", "entailment")],
    "glue_ax_v002": [({"premise": "P", "hypothesis": "H", "label": -1, "idx": 13},
                      "mnli hypothesis: H premise: P", "<unk>")],
}


@pytest.mark.parametrize("task_name", glue.TASK_NAMES)
def test_task_gives_exact_t5_strings_and_tokenized_batches(spm_model, task_name):
    cases = CASES[task_name]
    examples, batch = run_task(task_name, [row for row, _, _ in cases])
    vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    assert len(examples) == len(cases)
    for ex, (row, inputs, targets) in zip(examples, cases):
        assert text(ex["inputs_pretokenized"]) == inputs
        assert text(ex["targets_pretokenized"]) == targets
        assert ex["idx"] == row["idx"]
        assert ex["targets"][-1] == 1 and vocabulary.decode(ex["targets"].tolist()) == targets
        assert ex["inputs"][-1] == 1 and vocabulary.decode(ex["inputs"].tolist()) == inputs
    assert batch["encoder_input_tokens"].shape == (len(cases), 64)
    assert batch["decoder_target_tokens"].shape == (len(cases), 16)
    assert np.all(batch["decoder_input_tokens"][:, 0] == 0)


def test_task_names_splits_and_labels():
    assert glue.TASK_NAMES == tuple(f"glue_{c}_v002" for c in glue.CONFIG_NAMES)
    mnli = seqio.get_mixture_or_task("glue_mnli_v002")
    assert set(mnli.splits) == {"train", "validation_matched", "validation_mismatched", "test_matched",
                                "test_mismatched"}
    assert seqio.get_mixture_or_task("glue_ax_v002").splits == ("test",)
    assert glue.label_names("cola") == ("unacceptable", "acceptable")
    assert glue.label_names("stsb") is None


def test_postprocessors_and_metrics_per_task():
    def names(task):
        outputs = {}
        for fn in seqio.get_mixture_or_task(task).metric_fns:
            outputs.update(fn([0, 1, 1, 0], [0, 1, 0, 0]))
        return set(outputs)

    assert names("glue_cola_v002") == {"matthews_corrcoef"}
    assert names("glue_mrpc_v002") == names("glue_qqp_v002") == {"f1", "accuracy"}
    assert names("glue_stsb_v002") == {"pearson_corrcoef", "spearman_corrcoef"}
    for config in ("sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli"):
        assert names(glue.task_name(config)) == {"accuracy"}
    assert seqio.get_mixture_or_task("glue_ax_v002").metric_fns == []
    mnli = seqio.get_mixture_or_task("glue_mnli_v002")
    assert [mnli.postprocess_fn(s) for s in ("entailment", "neutral", "contradiction", "maybe")] == [0, 1, 2, -1]
    stsb = seqio.get_mixture_or_task("glue_stsb_v002")
    assert stsb.postprocess_fn("3.8") == pytest.approx(3.8) and stsb.postprocess_fn("high") == -1.0


def test_shared_spacing_helpers():
    import tensorflow as tf

    assert preprocessors.pad_punctuation(tf.constant("Who's there?")).numpy() == b"Who ' s there ? "
    assert preprocessors.string_join(["question:", "a  b", "context:", " c"]).numpy() == b"question: a b context: c"
