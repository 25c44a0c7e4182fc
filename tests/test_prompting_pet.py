"""PET / iPET: span-corruption LM batches, pattern models (full and LoRA), soft labels, distillation, iPET growth."""
import dataclasses
import functools

import jax
import numpy as np
import pytest

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


def test_pet_soft_labels_are_the_weighted_pattern_average_and_distillation_reports_their_kl():
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
    distributions = pet_lib.pattern_distributions(setup, PROBLEM, models, d.unlabelled, temperature=2.0)
    soft = pet_lib.soft_labels(distributions, weights)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-12)
    for p, (model, template) in enumerate(zip(models, PROBLEM.templates)):
        task = PROBLEM.class_task(d.unlabelled, template)
        scores = engine.class_log_likelihoods(s.base, model.params, task.inputs, task.class_targets) / 2.0
        np.testing.assert_allclose(distributions[p], jax.nn.softmax(scores, axis=1), rtol=1e-5)
    np.testing.assert_allclose(soft, weights[0] * distributions[0] + weights[1] * distributions[1], rtol=1e-12)
    assert np.ptp(distributions[0] - distributions[1]) > 1e-4  # the patterns' models really differ
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


def test_ipet_pseudo_labelled_sets_grow_by_the_scale_factor_and_are_class_balanced():
    result = ipet_lib.ipet(setting(), PROBLEM, data(unlabelled=40), seed=0, generations=2, scale_factor=3, alpha=0.0)
    counts = result.details["pseudo_labelled_class_counts"]
    assert counts == [[[6, 6]] * 2, [[18, 18]] * 2]  # 4 labelled x 3 ** g, half per class, for each pattern
    rows, labels = ipet_lib.pseudo_labels(np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]), 5)
    assert sorted(rows) == [0, 1, 2, 3] and list(labels) == [0, 1, 0, 1] and list(rows) == [0, 3, 1, 2]
    np.testing.assert_allclose(ipet_lib.other_weights(np.array([0.5, 0.3, 0.2]), 0), [0.0, 0.6, 0.4])


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
    probabilities = pet_lib.pattern_distributions(setup, PROBLEM, models, d.unlabelled)
    np.testing.assert_allclose(probabilities.sum(axis=2), 1.0, rtol=1e-9)


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
