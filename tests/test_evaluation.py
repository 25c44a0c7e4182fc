"""Tests for text2text.evaluation: seqio plumbing with fake models, file outputs, and the tiny real model."""
import functools
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from text2text import eval_batches, evaluation
from text2text.errors import UserError

VOCAB = seqio.ByteVocabulary()
LENGTHS = {"inputs": 16, "targets": 8}
NUM_EXAMPLES = 5  # not a multiple of the batch size used below
BATCH_SIZE = 2
TARGETS = [f"ans{'x' * i}" for i in range(NUM_EXAMPLES)]


def accuracy(targets, predictions):
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def mean_score(targets, scores):
    return {"mean_score": float(np.mean(scores)), "num_scored": len(targets)}


def _dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": [f"question {i}" for i in range(NUM_EXAMPLES)], "targets": TARGETS}
    )


def _register(name, metric_fns, source=None):
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source or seqio.FunctionDataSource(_dataset_fn, splits=["validation"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            "inputs": seqio.Feature(VOCAB, add_eos=True),
            "targets": seqio.Feature(VOCAB, add_eos=True),
        },
        metric_fns=metric_fns,
    )


@pytest.fixture(scope="module")
def tasks():
    _register("eval_test_a", [accuracy, mean_score])
    _register("eval_test_b", [accuracy])
    seqio.MixtureRegistry.remove("eval_test_mix")
    seqio.MixtureRegistry.add("eval_test_mix", ["eval_test_a", "eval_test_b"], default_rate=1.0)
    yield
    seqio.MixtureRegistry.remove("eval_test_mix")
    seqio.TaskRegistry.remove("eval_test_a")
    seqio.TaskRegistry.remove("eval_test_b")


class FakeModel:
    """predict_batch returns the targets (oracle) or a fixed wrong answer; counts jit traces."""

    def __init__(self, oracle=True):
        self.oracle = oracle
        self.traces = 0

    def predict_batch(self, params, batch, rng=None, **kwargs):
        self.traces += 1
        targets = batch["decoder_target_tokens"]
        if self.oracle:
            return targets
        wrong = jnp.zeros_like(targets).at[:, 0].set(VOCAB.encode("?")[0]).at[:, 1].set(1)
        return wrong

    def score_batch(self, params, batch):
        weights = batch["decoder_loss_weights"]
        return -params["scale"] * jnp.sum(batch["decoder_target_tokens"] * weights, axis=1)


PARAMS = {"scale": jnp.float32(0.01)}


def _converted_batch(task_name):
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(LENGTHS, split="validation", shuffle=False)
    ds = seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS)
    return next(ds.batch(1000).as_numpy_iterator())


def test_oracle_model_gets_full_accuracy_and_scores_reach_metric(tasks, tmp_path):
    model = FakeModel(oracle=True)
    results = evaluation.evaluate(
        model, PARAMS, "eval_test_mix", LENGTHS, batch_size=BATCH_SIZE, step=7, model_dir=str(tmp_path)
    )
    assert results["eval_test_a"]["accuracy"] == 100.0
    assert results["eval_test_b"]["accuracy"] == 100.0
    expected = np.asarray(model.score_batch(PARAMS, _converted_batch("eval_test_a")))
    assert results["eval_test_a"]["num_scored"] == NUM_EXAMPLES
    np.testing.assert_allclose(results["eval_test_a"]["mean_score"], expected.mean(), rtol=1e-6)
    assert results[evaluation.MIXTURE_AVERAGE] == {"average": 100.0}
    assert model.traces == 1  # the padded last batch has the same shape: no retrace

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {(x["task"], x["metric"]) for x in lines} == {
        ("eval_test_a", "accuracy"), ("eval_test_a", "mean_score"), ("eval_test_a", "num_scored"),
        ("eval_test_b", "accuracy"), (evaluation.MIXTURE_AVERAGE, "average"),
    }
    assert all(x["step"] == 7 and x["kind"] == "eval" for x in lines)


def test_wrong_model_gets_zero_and_reused_evaluator_appends(tasks, tmp_path):
    evaluator = evaluation.TaskEvaluator(
        FakeModel(oracle=False), "eval_test_b", LENGTHS, batch_size=3, model_dir=str(tmp_path)
    )
    assert evaluator.evaluate(PARAMS, step=1) == {"eval_test_b": {"accuracy": 0.0}}
    assert evaluator.evaluate(PARAMS, step=2)["eval_test_b"]["accuracy"] == 0.0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]


def test_predict_fn_drops_padding_and_keeps_indices(tasks):
    ds = seqio.EncDecFeatureConverter(pack=False)(
        seqio.get_mixture_or_task("eval_test_a").get_dataset(LENGTHS, split="validation", shuffle=False),
        LENGTHS,
    ).enumerate()
    out = evaluation.make_predict_fn(FakeModel(), PARAMS, batch_size=4)(ds)
    assert [i for i, _ in out] == list(range(NUM_EXAMPLES))
    assert [VOCAB.decode(tokens) for _, tokens in out] == TARGETS
    assert all(len(tokens) == LENGTHS["targets"] for _, tokens in out)


def test_infer_writes_one_line_per_example(tasks, tmp_path):
    paths = evaluation.infer(FakeModel(), PARAMS, "eval_test_mix", LENGTHS, "validation", BATCH_SIZE, str(tmp_path))
    assert sorted(paths) == sorted(str(tmp_path / "infer" / f"{t}.jsonl") for t in ("eval_test_a", "eval_test_b"))
    rows = [json.loads(x) for x in open(paths[0]).read().splitlines()]
    assert len(rows) == NUM_EXAMPLES
    assert [r["input"] for r in rows] == [f"question {i}" for i in range(NUM_EXAMPLES)]
    assert [r["target"] for r in rows] == TARGETS
    assert [r["prediction"] for r in rows] == TARGETS


def test_infer_truncates_to_feature_lengths(tasks, tmp_path):
    short = {"inputs": 4, "targets": 8}
    (path,) = evaluation.infer(FakeModel(), PARAMS, "eval_test_b", short, "validation", 8, str(tmp_path))
    assert json.loads(open(path).readline())["input"] == "ques"  # trimmed to 4 tokens


def test_score_matches_model_score_batch(tasks, tmp_path):
    model = FakeModel()
    (path,) = evaluation.score(model, PARAMS, "eval_test_a", LENGTHS, "validation", BATCH_SIZE, str(tmp_path))
    assert path == str(tmp_path / "eval_test_a.scores.jsonl")
    rows = [json.loads(x) for x in open(path).read().splitlines()]
    expected = np.asarray(model.score_batch(PARAMS, _converted_batch("eval_test_a")))
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-6)
    assert [r["target"] for r in rows] == TARGETS


def test_user_errors(tasks):
    with pytest.raises(UserError, match="eval_test_mix"):
        evaluation.evaluate(FakeModel(), PARAMS, "eval_test_mx", LENGTHS)
    with pytest.raises(UserError, match="targets"):
        evaluation.evaluate(FakeModel(), PARAMS, "eval_test_a", {"inputs": 4})
    with pytest.raises(UserError, match="split 'test'"):
        evaluation.infer(FakeModel(), PARAMS, "eval_test_a", LENGTHS, "test", 2, "/nonexistent")
    with pytest.raises(UserError, match="batch_size"):
        evaluation.make_score_fn(FakeModel(), PARAMS, 0)


def test_format_metrics_table():
    table = evaluation.format_metrics_table(
        {"glue_cola": {"matthews_corrcoef": 12.3456789}, "mixture average": {"average": 50.0, "n": 3}}
    )
    assert table.splitlines() == [
        "task            | metric            |   value",
        "----------------+-------------------+--------",
        "glue_cola       | matthews_corrcoef | 12.3457",
        "mixture average | average           | 50.0000",
        "mixture average | n                 |       3",
    ]


def test_tfds_mock_task(tmp_path):
    name = "eval_test_mock_cola"
    source = seqio.TfdsDataSource("glue/cola:2.0.0", splits=["validation"])
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"inputs": "sentence", "targets": "sentence"}),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos,
        ],
        output_features={"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)},
        metric_fns=[accuracy],
    )
    try:
        with tfds.testing.mock_data(num_examples=3):
            results = evaluation.evaluate(FakeModel(), PARAMS, name, LENGTHS, batch_size=2)
            (path,) = evaluation.infer(FakeModel(), PARAMS, name, LENGTHS, "validation", 2, str(tmp_path))
    finally:
        seqio.TaskRegistry.remove(name)
    assert list(results) == [name] and 0.0 <= results[name]["accuracy"] <= 100.0
    rows = [json.loads(x) for x in open(path).read().splitlines()]
    assert len(rows) == 3 and all(r["prediction"] == r["target"] for r in rows)
    assert "num_input_examples" not in vars(source)  # the temporary override was removed


def test_tiny_real_model(tasks, tmp_path):
    models = pytest.importorskip("text2text.models")
    from text2text.config import get_config

    model = models.EncoderDecoderModel(get_config("tiny", vocab_size=VOCAB.vocab_size))
    batch = _converted_batch("eval_test_a")
    params = flax.core.meta.unbox(model.init_variables(jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()}))
    params = params["params"]
    results = evaluation.evaluate(model, params, "eval_test_a", LENGTHS, batch_size=BATCH_SIZE, model_dir=str(tmp_path))
    assert 0.0 <= results["eval_test_a"]["accuracy"] <= 100.0
    direct = np.asarray(jax.jit(model.score_batch)(params, batch))
    assert np.all(direct < 0)
    np.testing.assert_allclose(results["eval_test_a"]["mean_score"], direct.mean(), rtol=1e-4)
    assert os.path.exists(tmp_path / "metrics.jsonl")


def test_length_buckets_give_identical_predictions_scores_and_metrics(tmp_path):
    """Sorting by input length and cutting encoder padding to `input_width` widths changes neither the tokens,
    the scores nor the metrics of a real (random tiny) model, and compiles one program per width."""
    from text2text import models
    from text2text.config import get_config

    lengths = {"inputs": 64, "targets": 8}
    texts = [f"q{i} " + "abcdefgh"[: i % 8] * (i % 7) for i in range(13)]
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"inputs": texts, "targets": [t[:3] for t in texts]}), splits=["validation"])
    _register("eval_test_lengths", [accuracy, mean_score], source=source)
    try:
        model = models.EncoderDecoderModel(get_config("tiny", vocab_size=VOCAB.vocab_size))
        params = flax.core.meta.unbox(model.init_variables(jax.random.PRNGKey(0), {"inputs": (1, 64),
                                                                                   "targets": (1, 8)}))["params"]
        ds = seqio.EncDecFeatureConverter(pack=False)(
            seqio.get_mixture_or_task("eval_test_lengths").get_dataset(lengths, split="validation", shuffle=False),
            lengths).enumerate()
        widths = {eval_batches.input_width(int((ex["encoder_input_tokens"] > 0).sum()), 64)
                  for _, ex in ds.as_numpy_iterator()}
        assert len(widths) >= 2  # the test exercises several buckets
        predict, score = evaluation.jit_predict_fn(model), evaluation.jit_score_fn(model)
        outputs = {}
        for by_length in (False, True):
            predictions = evaluation.make_predict_fn(model, params, 4, jit_predict=predict, by_length=by_length)(ds)
            before = predict._cache_size()
            metrics = evaluation.TaskEvaluator(model, "eval_test_lengths", lengths, batch_size=4, jit_predict=predict,
                                               jit_score=score, by_length=by_length).evaluate(params)
            assert predict._cache_size() == before  # the evaluator reuses the compiled shapes
            outputs[by_length] = (sorted(predictions), metrics["eval_test_lengths"])
        assert outputs[True][0] == outputs[False][0]
        assert outputs[True][1]["accuracy"] == outputs[False][1]["accuracy"]
        np.testing.assert_allclose(outputs[True][1]["mean_score"], outputs[False][1]["mean_score"], rtol=1e-5)
        assert 2 <= predict._cache_size() - 1 <= len(widths)  # one full-width program, one per bucket width
    finally:
        seqio.TaskRegistry.remove("eval_test_lengths")
