"""SQuAD, WMT, CNN/DailyMail and C4 tasks: exact T5 text formats on hand-written rows; all run under TFDS mocks."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks  # noqa: F401  (registers every task)
from tasks import span_corruption, squad, wmt
from tasks_fixtures import SEQUENCE_LENGTH, spm_model, task_examples, text  # noqa: F401

EOS = 1
PRETRAINING_LENGTH = {"inputs": 64, "targets": 32}


def test_squad_format_matches_t5(spm_model):
    row = {
        "id": "q1", "title": "Tom",
        "context": "Tom (born 1990) lives in Paris.",
        "question": "Where does  Tom live?",
        "answers": {"text": ["Paris", "in Paris."], "answer_start": [25, 22]},
    }
    [ex] = task_examples(squad.TASK_NAME, "validation", [row])
    assert text(ex["inputs_pretokenized"]) == (
        "question: Where does Tom live ? context: Tom ( born 1990 ) lives in Paris . ")
    assert text(ex["targets_pretokenized"]) == "Paris"
    assert [text(a) for a in ex["answers"]] == ["Paris", "in Paris . "]
    assert text(ex["id"]) == "q1"
    task = seqio.get_mixture_or_task(squad.TASK_NAME)
    assert task.postprocess_fn("x", example=ex, is_target=True) == ["Paris", "in Paris . "]
    assert task.metric_fns[0]([["Paris", "in Paris . "]], ["paris"]) == {"em": 100.0, "f1": 100.0}


@pytest.mark.parametrize("name,pair,inputs,targets", [
    ("wmt14_ende_v003", {"de": "Das ist gut.", "en": "That is good."},
     "translate English to German: That is good.", "Das ist gut."),
    ("wmt_t2t_ende_v003", {"de": "Das ist gut.", "en": "That is good."},
     "translate English to German: That is good.", "Das ist gut."),
    ("wmt14_enfr_v003", {"fr": "C'est bon.", "en": "That is good."},
     "translate English to French: That is good.", "C'est bon."),
    ("wmt15_enfr_v003", {"fr": "C'est bon.", "en": "That is good."},
     "translate English to French: That is good.", "C'est bon."),
    ("wmt16_enro_v003", {"ro": "Este bine.", "en": "That is good."},
     "translate English to Romanian: That is good.", "Este bine."),
])
def test_wmt_format_matches_t5(spm_model, name, pair, inputs, targets):
    [ex] = task_examples(name, "validation", [pair])
    assert text(ex["inputs_pretokenized"]) == inputs
    assert text(ex["targets_pretokenized"]) == targets
    sentence = "the big red dog sat on the small mat"
    assert seqio.get_mixture_or_task(name).metric_fns[0]([sentence], [sentence])["bleu"] == pytest.approx(100.0)


def test_cnn_dailymail_format_matches_t5(spm_model):
    row = {"article": "Tom sat on the mat. It was fun.", "highlights": "Tom sat.\nIt was fun.",
           "id": "abc", "publisher": "cnn"}
    [ex] = task_examples("cnn_dailymail_v002", "test", [row])
    assert text(ex["inputs_pretokenized"]) == "summarize: Tom sat on the mat. It was fun."
    assert text(ex["targets_pretokenized"]) == "Tom sat.\nIt was fun."
    scores = seqio.get_mixture_or_task("cnn_dailymail_v002").metric_fns[0](["Tom sat."], ["Tom sat."])
    assert scores["rouge1"] == pytest.approx(100.0)


@pytest.mark.parametrize("name", [squad.TASK_NAME, "cnn_dailymail_v002", *wmt.TASK_NAMES])
def test_supervised_tasks_tokenize_under_mock_data(spm_model, name):
    examples = task_examples(name, "train", num_examples=3)
    assert len(examples) == 3
    for ex in examples:
        for key in ("inputs", "targets"):
            assert ex[key].dtype == np.int32 and 0 < len(ex[key]) <= SEQUENCE_LENGTH[key]
            assert ex[key][-1] == EOS or len(ex[key]) == SEQUENCE_LENGTH[key]


def test_c4_span_corruption_under_mock_data(spm_model):
    examples = task_examples("c4_span_corruption", "train", num_examples=4, lengths=PRETRAINING_LENGTH)
    again = task_examples("c4_span_corruption", "train", num_examples=4, lengths=PRETRAINING_LENGTH)
    assert [e["inputs"].tolist() for e in again] == [e["inputs"].tolist() for e in examples]  # seeded: same noise
    vocab = seqio.get_mixture_or_task("c4_span_corruption").output_features["targets"].vocabulary
    _, targets_length = span_corruption.random_spans_helper(PRETRAINING_LENGTH["inputs"])
    assert examples
    for ex in examples:
        assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS
        assert len(ex["inputs"]) <= PRETRAINING_LENGTH["inputs"] and len(ex["targets"]) <= targets_length
        assert ex["targets"][0] == vocab.vocab_size - 1
        assert "<extra_id_0>" in vocab.decode(ex["inputs"].tolist()) or len(ex["inputs"]) <= 2
    rows = tf.data.Dataset.from_generator(
        lambda: ({"inputs": e["inputs"], "targets": e["targets"]} for e in examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
    packed = next(seqio.EncDecFeatureConverter(pack=True)(rows, PRETRAINING_LENGTH).as_numpy_iterator())
    assert packed["encoder_input_tokens"].shape == (PRETRAINING_LENGTH["inputs"],)
    assert packed["encoder_segment_ids"].max() >= 1


def test_c4_prefix_lm_under_mock_data(spm_model):
    examples = task_examples("c4_prefix_lm", "train", num_examples=4, lengths=PRETRAINING_LENGTH)
    assert examples
    for ex in examples:
        assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS
        assert len(ex["inputs"]) + len(ex["targets"]) <= PRETRAINING_LENGTH["inputs"] + 1
