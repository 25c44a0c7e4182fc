"""The few-shot engine: rank-classification class scores, the KL training loss, compiled-program reuse."""
import re

import jax
import numpy as np
import pytest

from prompting_fixtures import prompt_model, toy_examples
from tasks.prompting import Template, Verbalizer, engine
from text2text.errors import UserError

TEMPLATE = Template("{text} It was <extra_id_0>.")
VERBALIZER = Verbalizer({"positive": "great", "negative": "terrible"})


def toy_task(examples=None):
    examples = examples or toy_examples()
    return engine.ClassTask([TEMPLATE.format_inputs(ex) for ex in examples],
                            [TEMPLATE.format_targets(w) for _, w in VERBALIZER.words],
                            [VERBALIZER.index(ex["label"]) for ex in examples])


def test_class_scores_are_the_model_score_of_each_pair():
    pm = prompt_model()
    params = engine.init_params(pm, seed=0)
    task = toy_task()
    scores = engine.class_log_likelihoods(pm, params, task.inputs[:3], task.class_targets)
    assert scores.shape == (3, 2)
    enc = pm.tokens([task.inputs[1]], pm.feature_lengths["inputs"])
    dec = pm.tokens([task.class_targets[1]], pm.feature_lengths["targets"])
    direct = float(pm.model.score_batch(params, pm.pair_batch(enc, dec))[0])
    assert scores[1, 1] == pytest.approx(direct, rel=1e-5)


def test_training_fits_the_toy_task_and_the_loss_is_the_kl():
    pm = prompt_model()
    params = engine.init_params(pm, seed=0)
    task = toy_task()
    before = engine.accuracy(pm, params, task)
    result = engine.train(pm, params, task, steps=40, batch_size=8, tx=engine.default_optimizer(1e-2), seed=0)
    assert result.losses.shape == (40,) and np.array_equal(result.losses, result.kl)
    assert result.losses[-5:].mean() < 0.5 * result.losses[:5].mean()
    assert engine.accuracy(pm, result.params, task) == 100.0 > before
    # The loss of a one-hot label is the cross-entropy; of soft labels, the KL to them.
    log_probs = jax.nn.log_softmax(np.log(np.array([[0.2, 0.8], [0.6, 0.4]])))
    assert float(engine.kl_to_targets(log_probs, np.array([[0.0, 1.0], [1.0, 0.0]]))) == pytest.approx(
        -(np.log(0.8) + np.log(0.6)) / 2, rel=1e-6)
    soft = np.array([[0.5, 0.5], [0.25, 0.75]])
    expected = np.mean(np.sum(soft * (np.log(soft) - np.asarray(log_probs)), axis=1))
    assert float(engine.kl_to_targets(log_probs, soft)) == pytest.approx(expected, rel=1e-6)


def test_bad_training_input_is_one_user_error():
    pm = prompt_model()
    with pytest.raises(UserError, match="class indices"):
        engine.ClassTask(["a"], ["x", "y"], [2])
    with pytest.raises(UserError, match="no training examples"):
        engine.train(pm, engine.init_params(pm), engine.ClassTask([], ["x", "y"], np.zeros((0, 2))), steps=1)
    with pytest.raises(UserError, match="class target '' encodes to no tokens"):
        engine.class_log_likelihoods(pm, engine.init_params(pm), ["a"], ["", "x"])


def test_a_batch_size_below_one_is_one_user_error():
    with pytest.raises(UserError, match=r"few-shot training: .*batch_size=0 \(>= 1\)"):
        engine.train(prompt_model(), {}, toy_task(), steps=1, batch_size=0)


@pytest.mark.parametrize("inputs,message", [
    ("{} It was <extra_id_0>.", "has a positional field {}"),
    ("{0} It was <extra_id_0>.", "has a positional field {0}"),
    ("{text} It was { <extra_id_0>.", "is not a valid format string"),
    ("{text!z} It was <extra_id_0>.", "field {text!z} has an unknown conversion"),
])
def test_a_malformed_template_is_one_user_error_naming_it(inputs, message):
    template = Template(inputs)
    with pytest.raises(UserError, match=f"^template {re.escape(repr(inputs))}.*{re.escape(message)}"):
        template.check()
    with pytest.raises(UserError, match=f"^template {re.escape(repr(inputs))}"):
        template.format_inputs({"text": "the food was good"})


def test_targets_with_a_field_other_than_label_are_one_user_error_naming_the_template():
    template = Template("{text} It was <extra_id_0>.", "<extra_id_0> {label} {0} <extra_id_1>")
    with pytest.raises(UserError, match=r"targets '<extra_id_0> \{label\} \{0\} <extra_id_1>' has a positional"):
        template.check()
    with pytest.raises(UserError, match=r"^template '\{text\} It was <extra_id_0>\.': targets"):
        template.format_targets("great")
    with pytest.raises(UserError, match=r"uses field \{kind\}; only \{label\} is filled there"):
        Template("{text} It was <extra_id_0>.", "<extra_id_0> {label} {kind} <extra_id_1>").check()


def test_cloze_and_instruction_patterns_fill_demonstrations_and_check_their_slots():
    example = {"text": "the food was good"}
    assert TEMPLATE.is_cloze and TEMPLATE.filled(example, "great") == "the food was good It was great."
    instruction = Template("Is this review positive or negative? {text}", targets="{label}")
    assert not instruction.is_cloze
    assert instruction.filled(example, "positive") == "Is this review positive or negative? the food was good positive"
    with pytest.raises(UserError, match=r"template '\{text\} It was good\.' has no <extra_id_0>"):
        Template("{text} It was good.").filled(example, "great")
    with pytest.raises(UserError, match="targets 'answer' have no {label}"):
        Template("{text}", targets="answer").check()


def test_a_cut_that_would_drop_the_cloze_mask_or_merge_class_targets_is_one_user_error():
    pm = prompt_model()
    long_text = " ".join(["the food was good"] * 12)
    tokens = pm.tokens([f"Sentiment: <extra_id_0>. {long_text}"], 24, "input")  # the cut keeps the mask
    assert tokens.shape == (1, 24) and tokens[0, -1] == 1
    with pytest.raises(UserError, match=r"input of \d+ tokens does not fit a row of 24 .* its mask <extra_id_0>"):
        pm.tokens([TEMPLATE.format_inputs({"text": long_text})], 24, "input")
    long_target = "<extra_id_0> very very very very great"
    with pytest.raises(UserError, match=f"class target '{long_target}' is 6 tokens; the targets length 6 holds 5"):
        pm.class_target_tokens(["<extra_id_0> great", long_target])
    with pytest.raises(UserError, match="class targets 'great' and ' great' tokenize alike"):
        pm.class_target_tokens(["great", " great"])
    np.testing.assert_array_equal(pm.class_target_tokens(toy_task().class_targets),
                                  pm.tokens(toy_task().class_targets, 6, "class target"))
