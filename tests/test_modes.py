"""eval / infer / score modes through `launch.main` on a checkpoint trained (with an eval) on mock GLUE data."""
import json
import os

import gin
import jax
import numpy as np
import pytest
import seqio

from tasks import mixtures
from tasks_fixtures import hand_written_tfds, spm_model  # noqa: F401  (pytest fixture)
from text2text import config, launch, models, modes, partitioning, pretrained, reporting

MIXTURE = "runtime_modes_glue_mix"
TASKS = ("glue_cola_v002", "glue_sst2_v002")
LENGTHS = {"inputs": 32, "targets": 8}
TRAIN_STEPS = 12
NUM_VALIDATION = 6
VOCAB_SIZE = 512  # 400 SentencePiece pieces + 100 sentinels
ROWS = [{"sentence": f"the {w} {a} was {'good' if i % 2 else 'bad'}", "label": i % 2, "idx": i}
        for i, (w, a) in enumerate((w, a) for w in "cat dog bird house".split() for a in "big small red".split())]
FLAGS = [
    "--gin_file=models/tiny.gin",
    f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
    "--gin.BATCH_SIZE=4",
    f"--gin.config.get_config.vocab_size={VOCAB_SIZE}",
]


def main(model_dir, *args):
    """launch.main in this process, with a fresh gin config before and after."""
    gin.clear_config()
    try:
        return launch.main([*FLAGS, f"--gin.MODEL_DIR='{model_dir}'", *args])
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, spm_model):  # noqa: F811
    """Trains TRAIN_STEPS steps with an eval at the end, under mock TFDS that stays active for the module's tests."""
    directory = tmp_path_factory.mktemp("modes") / "model"
    mixtures.register_mixture(MIXTURE, list(TASKS), default_rate=mixtures.equal_rate)
    with pytest.MonkeyPatch.context() as patch, hand_written_tfds({"train": ROWS, "validation": ROWS[:NUM_VALIDATION]}):
        # Mock builders have no files to list; seqio then shards examples instead of files (one shard: a no-op).
        patch.setattr(seqio.TfdsDataSource, "list_shards", lambda self, split: [])
        assert main(directory, "--gin_file=runs/finetune.gin", f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
                    f"--gin.EVAL_PERIOD={TRAIN_STEPS}", f"--gin.CHECKPOINT_PERIOD={TRAIN_STEPS}",
                    "--gin.LEARNING_RATE=0.01") == 0
        yield directory


def eval_records(model_dir):
    return [(r["step"], r["task"], r["metric"], r["value"]) for r in reporting.read_metrics(str(model_dir), "eval")]


def test_eval_mode_matches_in_training_eval(model_dir):
    in_training = eval_records(model_dir)
    assert {(step, task) for step, task, _, _ in in_training} == {(TRAIN_STEPS, t) for t in (*TASKS, "mixture average")}
    assert main(model_dir, "--gin_file=runs/eval.gin") == 0
    records = eval_records(model_dir)
    assert len(records) == 2 * len(in_training)
    assert records[len(in_training):] == in_training


def test_infer_mode_writes_one_line_per_example(model_dir):
    assert main(model_dir, "--gin_file=runs/infer.gin") == 0
    labels = {"glue_sst2_v002": ("negative", "positive"), "glue_cola_v002": ("unacceptable", "acceptable")}
    for task in TASKS:
        with open(os.path.join(model_dir, "infer", f"{task}.jsonl"), encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        assert len(lines) == NUM_VALIDATION
        prefix = task.split("_")[1]
        for line, row in zip(lines, ROWS):
            assert set(line) == {"input", "target", "prediction"}
            assert line["input"] == f"{prefix} sentence: {row['sentence']}"
            assert line["target"] == labels[task][row["label"]]
            assert isinstance(line["prediction"], str)
        if task == "glue_sst2_v002":  # the eval metric is computed from these same greedy predictions
            accuracy = next(v for s, t, m, v in eval_records(model_dir) if t == task and m == "accuracy")
            assert accuracy == pytest.approx(100 * np.mean([x["prediction"] == x["target"] for x in lines]))


def test_score_mode_matches_model_score_batch(model_dir):
    assert main(model_dir, "--gin_file=runs/score.gin") == 0
    model = models.EncoderDecoderModel(config.get_config("tiny", vocab_size=VOCAB_SIZE))
    mesh = partitioning.create_mesh()
    abstract = modes.abstract_params(model, mesh, partitioning.logical_axis_rules("dp"), LENGTHS)
    params = pretrained.load_params(os.path.join(model_dir, str(TRAIN_STEPS)), model.config, abstract)
    for task_name in TASKS:
        task = seqio.get_mixture_or_task(task_name)
        ds = task.get_dataset(LENGTHS, split="validation", shuffle=False, try_in_mem_cache=False)
        batch = next(seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS).batch(100).as_numpy_iterator())
        expected = np.asarray(jax.jit(model.score_batch)(params, batch))
        with open(os.path.join(model_dir, f"{task_name}.scores.jsonl"), encoding="utf-8") as f:
            scores = [json.loads(line)["score"] for line in f]
        assert len(scores) == NUM_VALIDATION and np.all(expected < 0)
        np.testing.assert_allclose(scores, expected, rtol=1e-5)
