"""PET / iPET: span-corruption LM batches, pattern models (full and LoRA), soft labels, distillation, iPET growth."""
import dataclasses
import functools

import jax
import numpy as np
import pytest
from scipy.special import softmax

from prompting_fixtures import prompt_model, toy_examples
from tasks.prompting import Template, Verbalizer, engine
from tasks.prompting import ipet as ipet_lib
from tasks.prompting import pet as pet_lib
from tasks.prompting.problem import FewShotData, Problem, Setting
from text2text import peft
from text2text.errors import UserError

PROBLEM = Problem("toy_reviews",
                  (Template("{text} It was <extra_id_0>."), Template("{text} All in all, <extra_id_0>.")),
                  Verbalizer({"positive": "great", "negative": "terrible"}), ("text",))
BATCH = 8


@functools.lru_cache(maxsize=None)
def setting() -> Setting:
    pm = prompt_model()
    return Setting(pm, engine.init_params(pm, seed=0), steps=2, batch_size=BATCH, learning_rate=1e-2)


def data(unlabelled: int = BATCH) -> FewShotData:
    rows = toy_examples(4 + unlabelled + 8)
    return FewShotData(tuple(rows[:4]), (), tuple(rows[4:4 + unlabelled]), tuple(rows[4 + unlabelled:]))


def test_span_corruption_batches_hide_spans_behind_ordered_sentinels():
    pm = prompt_model()
    texts = list(PROBLEM.texts(toy_examples(8))) + ["a much longer text " * 6]
    documents = [list(pm.encode(t))[:26] for t in texts]  # 26 raw tokens fit 24 input tokens
    lm_batches = pet_lib.span_corruption_batches(pm, texts, 6, seed=3)
    batch = lm_batches(1)
    assert batch["encoder_input_tokens"].shape == (6, 24) and batch["decoder_target_tokens"].shape == (6, 6)
    np.testing.assert_array_equal(batch["decoder_target_tokens"], lm_batches(1)["decoder_target_tokens"])
    first_sentinel = pm.vocabulary.vocab_size - 1
    assert pm.vocabulary.decode([first_sentinel]) == "<extra_id_0>"
    for inputs, targets in zip(batch["encoder_input_tokens"], batch["decoder_target_tokens"]):
        inputs, targets = list(inputs[:list(inputs).index(1)]), list(targets[:list(targets).index(1)])
        in_sentinels = [t for t in inputs if t > first_sentinel - 100]
        assert in_sentinels == [first_sentinel - i for i in range(len(in_sentinels))] and in_sentinels
        assert [t for t in targets if t > first_sentinel - 100] == in_sentinels and targets[0] == first_sentinel
        spans, current = {}, None
        for token in targets:
            if token in in_sentinels:
                current = spans[token] = []
            else:
                current.append(token)
        restored = [t for token in inputs for t in (spans[token] if token in spans else [token])]
        assert restored in documents
        assert len(restored) - (len(inputs) - len(in_sentinels)) == int(np.clip(round(0.15 * len(restored)), 1,
                                                                                 len(restored) - 1))
    spans = pet_lib.noise_spans(3000, np.random.default_rng(0))
    assert sum(end - start for start, end in spans) == 450 and len(spans) == 150
    assert all(start < end <= nxt for (start, end), (nxt, _) in zip(spans, spans[1:]))


def test_pet_soft_labels_are_the_softmax_of_the_weighted_average_of_the_pattern_scores():
    scores = np.array([[[0.0, -8.0]], [[-1.0, 0.0]]])  # [patterns, n, C]
    soft = pet_lib.soft_labels(scores, np.array([0.5, 0.5]), temperature=2.0)
    np.testing.assert_allclose(soft, softmax(np.array([[-0.5, -4.0]]) / 2.0, axis=-1), rtol=1e-12)
    averaged_distributions = 0.5 * softmax(scores[0] / 2.0, axis=-1) + 0.5 * softmax(scores[1] / 2.0, axis=-1)
    assert abs(soft[0, 0] - averaged_distributions[0, 0]) > 0.1  # PET averages scores, not distributions
    np.testing.assert_allclose(pet_lib.soft_labels(scores, np.array([1.0, 0.0])), softmax(scores[0], axis=-1),
                               rtol=1e-12)


def test_pet_soft_labels_come_from_the_pattern_models_scores_and_distillation_reports_their_kl():
    s, d = setting(), data()
    setup = pet_lib.pattern_setup(s)
    models = pet_lib.train_pattern_models(s, PROBLEM, setup, [d.train] * 2, seed=0)
    zero_shot = [engine.accuracy(s.base, s.base_params, PROBLEM.class_task(d.train, t)) for t in PROBLEM.templates]
    assert [m.zero_shot_accuracy for m in models] == zero_shot
    assert all(np.isfinite(m.losses).all() and m.losses.shape == (2,) for m in models)
    weights = pet_lib.pattern_weights(models, "accuracy")
    expected_weights = np.asarray(zero_shot) / sum(zero_shot) if sum(zero_shot) else np.full(2, 0.5)
    np.testing.assert_allclose(weights, expected_weights)
    np.testing.assert_allclose(pet_lib.pattern_weights(models, "uniform"), [0.5, 0.5])
    scores = pet_lib.pattern_scores(setup, PROBLEM, models, d.unlabelled)
    soft = pet_lib.soft_labels(scores, weights, temperature=2.0)
    np.testing.assert_allclose(soft.sum(axis=-1), 1.0, rtol=1e-12)
    for p, (model, template) in enumerate(zip(models, PROBLEM.templates)):
        task = PROBLEM.class_task(d.unlabelled, template)
        np.testing.assert_allclose(
            scores[p], engine.class_log_likelihoods(s.base, model.params, task.inputs, task.class_targets), rtol=1e-5)
    np.testing.assert_allclose(soft, softmax((weights[0] * scores[0] + weights[1] * scores[1]) / 2.0, axis=-1),
                               rtol=1e-9)
    assert np.ptp(scores[0] - scores[1]) > 1e-4  # the patterns' models really differ
    # A batch is the whole unlabelled set: run 2's second KL is measured at run 1's final params.
    one, two = (pet_lib.distill(setup, s, PROBLEM, d.unlabelled, soft, steps, seed=0) for steps in (1, 2))
    task = pet_lib.distillation_task(PROBLEM, d.unlabelled, soft)
    for result, params in ((one, s.base_params), (two, one.params)):
        log_probs = jax.nn.log_softmax(engine.class_log_likelihoods(s.base, params, task.inputs, task.class_targets))
        assert result.kl[-1] == pytest.approx(float(engine.kl_to_targets(log_probs, soft)), rel=1e-4, abs=1e-6)
    np.testing.assert_array_equal(two.losses, two.kl)


def test_pet_method_reports_patterns_ensemble_and_distilled_model():
    d = data()
    result = pet_lib.pet(setting(), PROBLEM, d, seed=0, alpha=0.0, weighting="uniform")
    info = result.details
    assert info["pattern_weights"] == [0.5, 0.5] and len(info["pattern_test_accuracy"]) == 2
    assert 0.0 <= result.accuracy <= 100.0 and info["distill_kl"] >= 0.0
    assert all(a % 12.5 == 0 for a in info["pattern_test_accuracy"] + [info["ensemble_test_accuracy"]])  # 8 tests
    assert info["template"] == PROBLEM.templates[0].inputs


def test_ipet_training_sets_grow_by_the_scale_factor_with_the_labelled_class_ratio():
    result = ipet_lib.ipet(setting(), PROBLEM, data(unlabelled=40), seed=0, generations=2, scale_factor=3, alpha=0.0)
    counts = result.details["pseudo_labelled_class_counts"]
    assert len(counts) == 2 and all(len(generation) == 2 for generation in counts)
    for generation, per_class in ((0, 4), (1, 16)):  # 2 labelled per class x (3 ** g - 1)
        for pattern_counts in counts[generation]:
            assert all(count in (0, per_class) for count in pattern_counts) and sum(pattern_counts) > 0
    np.testing.assert_allclose(ipet_lib.other_weights(np.array([0.5, 0.3, 0.2]), 0), [0.0, 0.6, 0.4])


def test_ipet_pseudo_labels_are_the_ensembles_predictions_drawn_by_confidence():
    distribution = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.45, 0.55]])
    rows, labels = ipet_lib.pseudo_labels(distribution, [3, 2], np.random.default_rng(0))
    assert sorted(rows[labels == 0]) == sorted(set(rows[labels == 0])) and set(rows[labels == 0]) <= {0, 1, 2, 3}
    assert list(rows[labels == 1]) == [4, 4]  # one example predicted as class 1: repeated, never relabelled
    assert list(labels) == [0, 0, 0, 1, 1]
    rows, labels = ipet_lib.pseudo_labels(distribution[:4], [1, 3], np.random.default_rng(0))
    assert list(labels) == [0] and rows[0] in (0, 1, 2, 3)  # no example is predicted as class 1
    picks = np.concatenate([ipet_lib.pseudo_labels(distribution[:4], [1, 0], np.random.default_rng(seed))[0]
                            for seed in range(2000)])
    np.testing.assert_allclose(np.bincount(picks, minlength=4) / 2000, np.array([0.9, 0.8, 0.7, 0.6]) / 3.0,
                               atol=0.03)  # drawn with probability proportional to the predicted class's
    with pytest.raises(ValueError, match="per_class has 1 counts for 2 classes"):
        ipet_lib.pseudo_labels(distribution, [3], np.random.default_rng(0))


def test_a_lora_pattern_model_with_the_auxiliary_lm_loss_keeps_only_its_small_leaves():
    s, d = setting(), data()
    config = peft.PeftConfig(lora=peft.LoraConfig(rank=2))
    setup = pet_lib.pattern_setup(s, config, seed=0)
    models = pet_lib.train_pattern_models(s, PROBLEM, setup, [d.train] * 2, seed=0, alpha=0.5,
                                          unlabelled=d.unlabelled)
    trained, total = peft.count_params(setup.init, config)
    assert all(m.lm_losses.min() > 1.0 and np.all(m.losses < m.lm_losses) for m in models)  # 0.5 CE + 0.5 LM
    for model in models:
        assert model.params and all(k.endswith(("/lora_a", "/lora_b")) for k in model.params)
        assert sum(v.size for v in model.params.values()) == trained < total // 10
        assert any(np.abs(v).max() > 0 for k, v in model.params.items() if k.endswith("lora_b"))
    full = setup.full_params(models[0].params)
    np.testing.assert_array_equal(full["token_embedder"]["embedding"], s.base_params["token_embedder"]["embedding"])
    scores = pet_lib.pattern_scores(setup, PROBLEM, models, d.unlabelled)
    assert scores.shape == (2, len(d.unlabelled), 2) and np.all(np.isfinite(scores)) and np.all(scores < 0)


def test_bad_pet_input_is_one_user_error():
    d = data()
    with pytest.raises(UserError, match="PET on 'toy_reviews': the unlabelled set is empty"):
        pet_lib.pet(setting(), PROBLEM, dataclasses.replace(d, unlabelled=()), seed=0)
    positives = tuple(ex for ex in d.train if ex["label"] == "positive")
    with pytest.raises(UserError, match="no labelled example of class 'negative'"):
        ipet_lib.ipet(setting(), PROBLEM, dataclasses.replace(d, train=positives), seed=0)
    with pytest.raises(UserError, match="needs >= 2 patterns"):
        ipet_lib.ipet(setting(), dataclasses.replace(PROBLEM, templates=PROBLEM.templates[:1]), d, seed=0)
    with pytest.raises(UserError, match="weighting 'best'"):
        pet_lib.pattern_weights([], "best")
    probe = peft.PeftConfig(linear_probe=peft.LinearProbeConfig(((5,), (6,))))
    config = dataclasses.replace(prompt_model().model.config, peft=probe)
    setup = pet_lib.PatternSetup(dataclasses.replace(prompt_model(), model=peft.LinearProbeModel(config)), None,
                                 engine.default_optimizer(), probe)
    with pytest.raises(UserError, match="linear-probe pattern model has no LM loss"):
        pet_lib.train_pattern_models(setting(), PROBLEM, setup, [d.train] * 2, seed=0, alpha=0.5,
                                     unlabelled=d.unlabelled)


def test_an_unknown_weighting_is_one_user_error_before_any_pattern_model_trains(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a pattern model was set up before the weighting was checked")

    for module in (pet_lib, ipet_lib):
        monkeypatch.setattr(module, "pattern_setup", no_training)
    with pytest.raises(UserError, match="PET weighting 'best'; expected one of accuracy, uniform"):
        pet_lib.pet(Setting(None, None), PROBLEM, data(), seed=0, weighting="best")
    with pytest.raises(UserError, match="PET weighting 'best'; expected one of accuracy, uniform"):
        ipet_lib.ipet(Setting(None, None), PROBLEM, data(), seed=0, weighting="best")
