"""Mixing rates: examples-proportional (limit K, temperature), equal and fixed; sampled ratios and T5 mixtures."""
import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from tasks import mixtures

SIZES = {"mix_test_small": 1_000, "mix_test_medium": 9_000, "mix_test_large": 90_000}
NUM_SAMPLES = 20_000


def _task_dataset(task_id, split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensors({"targets": tf.constant([task_id], tf.int32)}).repeat(50)


@pytest.fixture(scope="module")
def small_tasks():
    """Three tiny tasks whose only token names the task, claiming SIZES training examples."""
    features = {"targets": seqio.Feature(seqio.PassThroughVocabulary(size=10), add_eos=False)}
    for task_id, (name, size) in enumerate(SIZES.items()):
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name, source=seqio.FunctionDataSource(
                lambda split, shuffle_files, seed=None, i=task_id: _task_dataset(i, split, shuffle_files),
                splits=("train",), num_input_examples={"train": size}),
            preprocessors=[], output_features=features)
    return list(SIZES)


def _sampled_fractions(mixture_name):
    mixture = seqio.get_mixture_or_task(mixture_name)
    ds = mixture.get_dataset({"targets": 1}, split="train", shuffle=False, seed=5, use_cached=False)
    counts = collections.Counter(int(ex["targets"][0]) for ex in ds.take(NUM_SAMPLES).as_numpy_iterator())
    return np.array([counts[i] for i in range(len(SIZES))]) / NUM_SAMPLES


def _expected(rates):
    rates = np.array(rates, dtype=float)
    return rates / rates.sum()


@pytest.mark.parametrize("rate,expected", [
    (mixtures.proportional(), _expected([1_000, 9_000, 90_000])),
    (mixtures.proportional(maximum=20_000), _expected([1_000, 9_000, 20_000])),
    (mixtures.proportional(maximum=20_000, temperature=2.0), _expected(np.sqrt([1_000, 9_000, 20_000]))),
    (mixtures.proportional(scale=10.0, maximum=20_000), _expected([10_000, 20_000, 20_000])),
    (mixtures.equal_rate, _expected([1, 1, 1])),
])
def test_sampled_ratios_follow_the_rates(small_tasks, rate, expected):
    mixtures.register_mixture("mix_test", small_tasks, default_rate=rate)
    assert np.abs(_sampled_fractions("mix_test") - expected).max() <= 0.02


def test_fixed_rates_per_task(small_tasks):
    mixtures.register_mixture("mix_test_fixed", [(small_tasks[0], mixtures.fixed_rate(3.0)),
                                                 (small_tasks[1], 1.0), (small_tasks[2], 0.0)])
    assert np.abs(_sampled_fractions("mix_test_fixed") - [0.75, 0.25, 0.0]).max() <= 0.02


def test_rate_num_examples_formula_and_missing_split(small_tasks):
    large = seqio.get_mixture_or_task(small_tasks[2])
    assert mixtures.rate_num_examples(large) == 90_000
    assert mixtures.rate_num_examples(large, maximum=2**14, temperature=2.0) == pytest.approx(128.0)
    assert mixtures.rate_num_examples(large, split="validation") == 0.0


@pytest.fixture
def stub_sizes(monkeypatch):
    """Registered TFDS tasks with made-up train sizes and every split but those a task lists explicitly."""
    sizes = {"glue_qqp_v002": 1_000_000, "glue_cola_v002": 8_551, "squad_v010_allanswers": 87_599}
    monkeypatch.setattr(seqio.Task, "num_input_examples", lambda self, split: sizes.get(self.name, 5_000))
    monkeypatch.setattr(seqio.Task, "splits",
                        property(lambda self: self.source._splits or ("train", "validation", "test")))
    return sizes


def test_registered_mixtures_rates(stub_sizes):
    en_mix = seqio.get_mixture_or_task("en_mix")
    rates = {t.name: en_mix.get_rate(t) for t in en_mix.tasks}
    assert rates["c4_v020_unsupervised"] == mixtures.UNSUPERVISED_RATE == 1e6
    assert rates["glue_qqp_v002"] == 1_000_000  # no limit K, as in t5
    assert rates["glue_cola_v002"] == 8_551 and rates["squad_v010_allanswers"] == 87_599
    assert rates["glue_mnli_matched_v002"] == 0.0 and rates["super_glue_axb_v102"] == 0.0  # no train split

    glue = seqio.get_mixture_or_task("glue_v002_proportional")
    names = {t.name for t in glue.tasks}
    assert "glue_wnli_v002" not in names and "glue_mnli_v002" in names
    assert glue.get_rate(seqio.get_mixture_or_task("glue_qqp_v002")) == 363_849  # t5's fixed GLUE weight

    for name in mixtures.MIXTURE_NAMES:
        mixture = seqio.get_mixture_or_task(name)
        assert mixture.total_rate > 0
    all_tasks = seqio.get_mixture_or_task("all_tasks_proportional")
    assert {"cnn_dailymail_v002", "wmt14_ende_v003", "wmt16_enro_v003", "super_glue_record_v102"} <= \
        {t.name for t in all_tasks.tasks}
    assert all_tasks.get_rate(seqio.get_mixture_or_task("glue_qqp_v002")) == mixtures.EXAMPLES_LIMIT
    assert {t.name for t in seqio.get_mixture_or_task("glue_squad_v002_proportional").tasks} == \
        set(mixtures.GLUE_TASKS) | {"squad_v010_allanswers"}


def test_t5_mixture_tables_cover_the_registered_tasks():
    from tasks import glue, super_glue

    assert set(mixtures.GLUE_TASKS) == set(glue.TASK_NAMES) - {"glue_wnli_v002"}
    assert set(mixtures.SUPER_GLUE_TASKS) == set(super_glue.TASK_NAMES)
    assert set(mixtures.SUPER_GLUE_SENTINEL_WEIGHTS) <= set(seqio.TaskRegistry.names())
    assert mixtures.sentinel_task_name("super_glue_wsc_v102_simple_train") == \
        "super_glue_wsc_v102_simple_1_sentinel_train"
    leave_out_glue = {name for name, _ in mixtures.t5_mixtures()["leave_one_out_glue_v002_proportional"][0]}
    assert not leave_out_glue & set(mixtures.GLUE_TASKS) and "super_glue_rte_v102" in leave_out_glue
