"""LM-BFF: label-word search, T5-generated templates, similarity-chosen demonstrations averaged over sets."""
import functools

import jax
import numpy as np
import optax
import pytest

from prompting_fixtures import prompt_model, toy_examples
from tasks.prompting import Template, Verbalizer, engine
from tasks.prompting import demonstrations as demos
from tasks.prompting import label_search, lm_bff, template_search
from tasks.prompting.problem import FewShotData, Problem, Setting
from text2text.errors import UserError

TEMPLATE = Template("{text} It was <extra_id_0>.")
VERBALIZER = Verbalizer({"positive": "great", "negative": "terrible"})
SPANS_TARGET = "<extra_id_0> It was <extra_id_1> . <extra_id_2>"


@functools.lru_cache(maxsize=None)
def trained_params():
    """The tiny T5 taught, by teacher-forced LM training, to put "great" (positive) / "terrible" (negative) after
    the sentinel of TEMPLATE, and to fill `{text} <extra_id_0> word <extra_id_1>` with the spans "It was" / "."."""
    pm = prompt_model()
    rows = toy_examples()
    pattern = template_search.generation_patterns(["text"])[0]
    inputs = [TEMPLATE.format_inputs(ex) for ex in rows] + [
        Template(pattern).format_inputs({**ex, "label_word": VERBALIZER.word(ex["label"])}) for ex in rows]
    targets = [TEMPLATE.format_targets(VERBALIZER.word(ex["label"])) for ex in rows] + [SPANS_TARGET] * len(rows)
    batch = pm.pair_batch(pm.tokens(inputs, 24), pm.tokens(targets, 12))
    tx = optax.adam(1e-2)
    params = engine.init_params(pm, seed=0)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: pm.model.loss_fn(p, batch, None)[0])(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(25):
        params, state = step(params, state)
    return params


def labels_of(rows):
    return np.asarray([VERBALIZER.index(ex["label"]) for ex in rows])


def test_label_search_ranks_first_the_word_the_model_was_trained_to_emit():
    pm, params, rows = prompt_model(), trained_params(), toy_examples()
    log_probs = label_search.label_position_log_probs(pm, params, TEMPLATE, rows)
    assert log_probs.shape == (16, pm.vocabulary.vocab_size)
    ranking = label_search.rank_label_words(log_probs, labels_of(rows), VERBALIZER.classes,
                                            label_search.word_tokens(pm.vocabulary), k=5)
    assert ranking["positive"][0][0] == "great" and ranking["negative"][0][0] == "terrible"
    assert ranking["positive"][0][2] > ranking["positive"][1][2]
    tuned_tasks = []
    result = label_search.search_label_words(pm, params, TEMPLATE, VERBALIZER.classes, rows, labels_of(rows),
                                             rows[:4], labels_of(rows[:4]),
                                             lambda task: tuned_tasks.append(task) or params, k=5, n=3,
                                             num_finetune=2)
    assert dict(result.verbalizer.words) == {"positive": "great", "negative": "terrible"}
    assert result.mappings[0][1] == 100.0 and result.mappings[0][2] == 100.0 and result.mappings[2][2] is None
    assert len(tuned_tasks) == 2 and tuned_tasks[0].class_targets == ("<extra_id_0> great <extra_id_1>",
                                                                      "<extra_id_0> terrible <extra_id_1>")
    # Pruning keeps distinct words only and orders by zero-shot accuracy.
    scores = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    pruned = label_search.prune_mappings(scores, np.array([0, 1]), [[0, 1], [0, 2]], n=10)
    assert pruned[0] == ((0, 2), 100.0) and all(a != b for (a, b), _ in pruned) and len(pruned) == 3


def test_generated_templates_place_the_decoded_spans_where_the_sentinels_were():
    pm, params, rows = prompt_model(), trained_params(), toy_examples()
    generated = template_search.search_templates(pm, params, rows, labels_of(rows), VERBALIZER, ["text"],
                                                 beam_width=3, max_length=7, num_templates=2)
    best = generated[0]
    assert best.spans == ("It was", ".") and best.template == Template("{text} It was <extra_id_0> .")
    assert best.template.filled(rows[0], "great") == f"{rows[0]['text']} It was great ."
    assert {g.template.inputs[:6] for g in generated} == {"{text}", "It was"}  # both patterns searched
    pair = "{premise} <extra_id_0> {label_word} <extra_id_1> {hypothesis}"
    template = template_search.template_from_spans(pair, ("? {yes}", ","))
    ex = {"premise": "A man", "hypothesis": "he sleeps"}
    assert template.inputs == "{premise} ? {{yes}} <extra_id_0> , {hypothesis}"
    assert template.filled(ex, "Yes") == "A man ? {yes} Yes , he sleeps"  # the spans stand where the sentinels were
    assert template.targets == "<extra_id_0> {label} <extra_id_1>"


def test_beam_search_maximises_the_summed_log_likelihood(monkeypatch):
    """A stub decoder: example 0 prefers span token 10 a little, example 1 prefers 11 a lot; the sum picks 11."""
    pm = prompt_model()
    s0, s1 = (int(pm.vocabulary.encode(f"<extra_id_{i}>")[0]) for i in range(2))

    def stub(prompt_model, params, rows, prefixes, length=None):
        out = np.full((len(rows), pm.vocabulary.vocab_size), -20.0, np.float32)
        for i, (row, prefix) in enumerate(zip(rows, prefixes)):
            if not prefix:
                out[i, s0] = 0.0
            elif len(prefix) == 1:
                out[i, [10, 11]] = (-0.5, -0.9) if row[0] == 0 else (-3.0, -0.1)
            else:
                out[i, s1] = -0.2
        return out

    monkeypatch.setattr(template_search, "next_token_log_probs", stub)
    beams = template_search.beam_search_spans(pm, None, np.array([[0], [1]]), spans=1, beam_width=2, max_length=4)
    assert beams[0][0] == (s0, 11, s1) and beams[0][1] == pytest.approx(-1.0 - 0.4, rel=1e-5)
    assert all(b[0][0] == s0 and b[0][-1] == s1 and len(b[0]) <= 4 for b in beams)


def test_similarity_filter_keeps_the_most_similar_half_of_each_class():
    train = [{"text": t, "label": c} for t, c in [("a", "positive"), ("b", "positive"), ("c", "positive"),
                                                  ("d", "positive"), ("e", "negative"), ("f", "negative")]]
    vectors = {"a": [1, 0], "b": [1, 1], "c": [0, 1], "d": [-1, 0.2], "e": [-1, -1], "f": [1, -0.1], "q": [1, 0.1]}
    embedder = lambda texts: np.asarray([vectors[t] for t in texts], float)  # noqa: E731
    labels = labels_of(train)
    pools = demos.demonstration_pools([{"text": "q"}], train, labels, VERBALIZER.classes, ["text"],
                                      similar_half=True, embedder=embedder)
    assert [train[i]["text"] for i in pools[0]] == ["a", "f", "b"]  # 2 of 4 positives, 1 of 2 negatives
    own = demos.demonstration_pools(train, train, labels, VERBALIZER.classes, ["text"], embedder=embedder,
                                    queries_are_train=True)
    assert all(i not in pool for i, pool in enumerate(own)) and [train[i]["text"] for i in own[0]] == ["f", "b", "c"]
    # The default embedder: the encoder's states averaged over the non-pad tokens.
    pm, params = prompt_model(), trained_params()
    embedded = demos.encoder_embedder(pm, params)(["the food was good", "a"])
    tokens = pm.tokens(["a"], 24)
    states = pm.model.module.apply({"params": params}, tokens, enable_dropout=False, method="encode")
    assert embedded.shape == (2, 32) and np.allclose(embedded[1], np.asarray(states)[0, :2].mean(axis=0), atol=1e-5)


def test_inference_averages_class_scores_over_the_demonstration_sets():
    pm = lm_bff.demonstration_model(prompt_model(), 2)
    assert pm is lm_bff.demonstration_model(prompt_model(), 2) and pm.feature_lengths["inputs"] == 72
    params, rows = trained_params(), toy_examples()
    pools = demos.demonstration_pools(rows[:2], rows, labels_of(rows), VERBALIZER.classes, ["text"],
                                      similar_half=False)
    inputs = demos.demonstration_inputs(rows[:2], rows, pools, TEMPLATE, VERBALIZER, num_sets=4, seed=3)
    assert [len(row) for row in inputs] == [4, 4] and len(set(inputs[0])) > 1
    assert all(text.startswith(TEMPLATE.format_inputs(rows[0]) + " ") and text.count("<extra_id_0>") == 1
               and "It was great." in text and "It was terrible." in text for text in inputs[0])
    targets = [TEMPLATE.format_targets(w) for _, w in VERBALIZER.words]
    per_set = np.stack([engine.class_log_likelihoods(pm, params, [row[m] for row in inputs], targets)
                        for m in range(4)], axis=1)
    averaged = demos.averaged_class_scores(pm, params, inputs, targets)
    assert np.allclose(averaged, per_set.mean(axis=1), atol=1e-5)
    probs = demos.averaged_class_scores(pm, params, inputs, targets, average="probability")
    expected = np.exp(per_set - np.logaddexp.reduce(per_set, axis=2, keepdims=True)).mean(axis=1)
    assert np.allclose(probs, expected, atol=1e-5) and np.allclose(probs.sum(axis=1), 1.0)


def test_methods_run_end_to_end_and_report_their_choices():
    rows = toy_examples()
    problem = Problem("toy", (TEMPLATE,), VERBALIZER, ("text",))
    setting = Setting(prompt_model(), trained_params(), steps=2, batch_size=4)
    data = FewShotData(tuple(rows[:8]), tuple(rows[8:12]), (), tuple(rows[12:]))
    plain = lm_bff.prompt_finetune(setting, problem, data, 0)
    assert plain.accuracy == 100.0 and plain.details["template"] == TEMPLATE.inputs
    with_demos = lm_bff.prompt_finetune(setting, problem, data, 0, demonstrations=True, num_demo_sets=2,
                                        train_demo_sets=3, embedder=lambda texts: np.ones((len(texts), 2)))
    assert 0.0 <= with_demos.accuracy <= 100.0
    assert with_demos.details["demo_sets"] == 2 and with_demos.details["train_demo_sets"] == 3
    label = lm_bff.auto_label(setting, problem, data, 0, k=3, n=2, num_finetune=1, search_steps=1)
    assert label.details["verbalizer"] == {"positive": "great", "negative": "terrible"}
    auto = lm_bff.auto_template(setting, problem, data, 0, beam_width=2, max_length=7, num_templates=1,
                                rank_by="finetune", rank_steps=1)
    assert auto.details["template"] == auto.details["ranking"][0][0] and len(auto.details["generated"]) == 2


def test_bad_input_is_one_user_error_naming_the_template_class_or_k():
    pm, params, rows = prompt_model(), trained_params(), toy_examples()
    no_slot = Template("{text} It was good.")
    with pytest.raises(UserError, match="template '{text} It was good.'"):
        label_search.label_position_log_probs(pm, params, no_slot, rows)
    with pytest.raises(UserError, match="template '{text} It was good.'"):
        demos.demonstration_inputs(rows[:1], rows, [np.arange(16)], no_slot, VERBALIZER, 1)
    problem = Problem("toy", (no_slot,), VERBALIZER, ("text",))
    data = FewShotData(tuple(rows[:8]), tuple(rows[8:12]), (), tuple(rows[12:]))
    with pytest.raises(UserError, match="template '{text} It was good.'"):
        lm_bff.prompt_finetune(Setting(pm, params), problem, data, 0)
    with pytest.raises(UserError, match="pattern '{text} <extra_id_1>'"):
        template_search.num_spans("{text} <extra_id_1>")
    with pytest.raises(UserError, match="class 'negative'"):
        label_search.check_label_words(pm, Verbalizer({"positive": "great", "negative": " "}))
    with pytest.raises(UserError, match="class 'negative' has 1 training example"):
        demos.check_demonstration_counts(np.array([0, 0, 0, 1, 1]), VERBALIZER.classes, 2, exclude_self=True)
    with pytest.raises(UserError, match="class 'negative' has no training examples"):
        label_search.rank_label_words(np.zeros((2, 5)), np.array([0, 0]), VERBALIZER.classes, {3: "x"}, 1)


def test_bad_method_options_are_one_user_error_before_anything_runs(monkeypatch):
    def nothing_runs(*args, **kwargs):
        raise AssertionError("a search or a training run started before the options were checked")

    monkeypatch.setattr(lm_bff, "_finetune_and_test", nothing_runs)
    monkeypatch.setattr(template_search, "search_templates", nothing_runs)
    monkeypatch.setattr(label_search, "search_label_words", nothing_runs)
    rows = toy_examples()
    problem = Problem("toy", (TEMPLATE,), VERBALIZER, ("text",))
    data = FewShotData(tuple(rows[:8]), tuple(rows[8:12]), (), tuple(rows[12:]))
    setting = Setting(prompt_model(), None)
    for method in (lm_bff.prompt_finetune, lm_bff.auto_template, lm_bff.auto_label):
        with pytest.raises(UserError, match=r"demonstrations: average='mean'; expected one of \('log_likelihood'"):
            method(setting, problem, data, 0, average="mean")
        with pytest.raises(UserError, match="num_demo_sets=0 and train_demo_sets=8 must be >= 1"):
            method(setting, problem, data, 0, num_demo_sets=0)
    with pytest.raises(UserError, match="num_demo_sets=16 and train_demo_sets=0 must be >= 1"):
        lm_bff.prompt_finetune(setting, problem, data, 0, train_demo_sets=0)
    for options in ({"beam_width": 0}, {"num_templates": 0}):
        with pytest.raises(UserError, match="template search: beam_width=.* and num_templates=.* must be >= 1"):
            lm_bff.auto_template(setting, problem, data, 0, **options)


def test_a_template_search_that_generates_nothing_is_one_user_error(monkeypatch):
    monkeypatch.setattr(template_search, "generate_templates", lambda *args, **kwargs: [])
    pm, rows = prompt_model(), toy_examples(4)
    with pytest.raises(UserError, match="template search generated no template"):
        template_search.search_templates(pm, None, rows, labels_of(rows), VERBALIZER, ("text",))
    with pytest.raises(UserError, match="beam_width=0 and num_templates=5 must be >= 1"):
        template_search.search_templates(pm, None, rows, labels_of(rows), VERBALIZER, ("text",), beam_width=0)
