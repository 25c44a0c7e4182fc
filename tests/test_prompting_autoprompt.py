"""AutoPrompt: the searched triggers beat random ones on the objective, the template prints and re-encodes to them."""
import functools
import re

import numpy as np
import pytest

from prompting_fixtures import prompt_model, toy_examples
from tasks.prompting import Template, Verbalizer, autoprompt, engine
from tasks.prompting.problem import FewShotData, Problem, Setting
from text2text.errors import UserError

TEMPLATE = Template("{text} [T] [T] [T] <extra_id_0>")
PROBLEM = Problem("toy", (Template("{text} It was <extra_id_0>."),),
                  Verbalizer({"positive": "great", "negative": "terrible"}), ("text",))


@functools.lru_cache(maxsize=None)
def _setting():
    pm = prompt_model()
    return Setting(pm, engine.init_params(pm, seed=0), steps=5, batch_size=16)


def test_search_beats_random_triggers_and_the_template_re_encodes_to_them():
    setting = _setting()
    train = toy_examples(16)
    found = autoprompt.search_triggers(setting, PROBLEM, train, TEMPLATE, seed=0, search_steps=8, candidates=8)
    pm, params = setting.base, setting.base_params

    def loss(ids):
        words = [pm.vocabulary.decode([int(i)]) for i in ids]
        return autoprompt.class_loss(pm, params, PROBLEM.class_task(train, autoprompt.fill(TEMPLATE, words)))

    searched = loss(found.trigger_ids)
    # The search scored the real text: its last objective (on all 16 examples) is the plain model's loss.
    assert found.losses[-1] == pytest.approx(searched, rel=1e-4)
    usable = np.flatnonzero(autoprompt.usable_tokens(pm))
    random_losses = [loss(np.random.default_rng(s).choice(usable, 3)) for s in range(1, 5)]
    print(f"searched {searched:.4f} (start {found.losses[0]:.4f}), random {np.round(random_losses, 4)}")
    assert searched < found.losses[0] and searched < np.mean(random_losses)
    # A printable template: the trigger words as text, which encode back to the trigger ids before the sentinel.
    assert "[T]" not in found.template.inputs and found.template.inputs.endswith(" <extra_id_0>")
    for example in train[:4]:
        ids = [int(i) for i in pm.vocabulary.encode(found.template.format_inputs(example))]
        assert ids[-4:] == [*found.trigger_ids, pm.vocabulary.encode("<extra_id_0>")[0]]
    assert all(autoprompt.usable_tokens(pm)[list(found.trigger_ids)])


def test_method_reports_the_found_template_and_accuracy():
    setting = _setting()
    data = FewShotData(tuple(toy_examples(16)), tuple(toy_examples(4)), (), tuple(toy_examples(8)))
    out = autoprompt.autoprompt(setting, PROBLEM, data, seed=0, num_triggers=3, search_steps=2, candidates=8,
                                search_labels=True)  # the first test's shapes: its compiled search is reused
    assert out.details["template"].startswith("{text} ") and "[T]" not in out.details["template"]
    assert list(out.details["label_words"]) == ["positive", "negative"]
    assert len(out.details["triggers"]) == 3 and 0.0 <= out.accuracy <= 100.0
    before, after = out.details["search_loss"]
    assert after <= before + 1e-6  # every step scores all 16 examples: a swap only happens when it lowers the loss


def test_label_search_reads_the_states_behind_the_logits_and_picks_usable_words():
    setting = _setting()
    pm, params = setting.base, setting.base_params
    train = toy_examples(16)
    template = autoprompt.fill(TEMPLATE, ["the", "food", "was"])
    inputs = [template.format_inputs(ex) for ex in train]
    states = autoprompt.label_states(pm, params, inputs[:3], template)
    # The states are those behind the logits of the label's first token (decoder input: 0, <extra_id_0>).
    enc = pm.tokens(inputs[:3], pm.feature_lengths["inputs"])
    dec = np.tile(np.asarray([[0, pm.vocabulary.encode("<extra_id_0>")[0]]], np.int32), (3, 1))
    logits = np.asarray(pm.model.module.apply({"params": params}, enc, dec, enable_dropout=False))[:, 1]
    np.testing.assert_allclose(states @ autoprompt.output_embeddings(params, pm.model.config).T, logits, atol=1e-4)
    states = autoprompt.label_states(pm, params, inputs, template)
    w, b = autoprompt.fit_logistic(states, PROBLEM.labels(train), 2)
    assert np.array_equal(np.argmax(states @ w.T + b, axis=1), PROBLEM.labels(train))
    verbalizer = autoprompt.search_label_words(setting, PROBLEM, train, template)
    assert verbalizer.classes == PROBLEM.verbalizer.classes
    ids = [pm.vocabulary.encode(words) for _, words in verbalizer.words]
    assert all(len(i) == 1 and autoprompt.usable_tokens(pm)[i[0]] for i in ids) and ids[0] != ids[1]


@pytest.mark.parametrize("text,problem", [("{text} It was <extra_id_0>.", "needs trigger slots"),
                                          ("{text} [T] [T] great", "has no <extra_id_0>")])
def test_template_without_triggers_or_sentinel_is_one_user_error(text, problem):
    data = FewShotData(tuple(toy_examples(4)), (), (), tuple(toy_examples(4)))
    with pytest.raises(UserError, match=re.escape(f"template {text!r} {problem}")):
        autoprompt.autoprompt(_setting(), PROBLEM, data, seed=0, template=text)


def test_default_template_ends_in_the_answer_slot_of_the_main_pattern():
    assert autoprompt.default_template(PROBLEM, 2).inputs == "{text} [T] [T] <extra_id_0>"
    instruction = Problem("toy_instruction", (Template("Good or bad? {text}", targets="{label}"),), PROBLEM.verbalizer,
                          ("text",))
    template = autoprompt.default_template(instruction, 3)
    assert (template.inputs, template.targets) == ("{text} [T] [T] [T]", "{label}")
