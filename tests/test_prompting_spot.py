"""SPoT prompt transfer: task-embedding ranking, the library's save/load, the target's initialisation, bad input."""
import re

import jax
import numpy as np
import pytest

from prompting_fixtures import prompt_model, toy_examples
from tasks.prompting import Template, Verbalizer, engine, spot
from tasks.prompting.problem import FewShotData, Problem, Setting
from tasks.prompting.spot_library import EmbeddingRecipe, PromptLibrary, SourcePrompt, average_prompt
from text2text.errors import UserError
from text2text.peft import load_peft_params

LENGTH = 4
RECIPE = EmbeddingRecipe(steps=6, init_seed=3, learning_rate=0.3, batch_size=8)
POLARITY = Problem("polarity", [Template("{text} It was <extra_id_0>.")],
                   Verbalizer({"positive": "great", "negative": "terrible"}), ("text",))
EDIBLE = Problem("edible", [Template("Can you eat it? {text} <extra_id_0>")], Verbalizer({"yes": "sure", "no": "nope"}),
                 ("text",), label_key="edible")  # two classes like the target: the same compiled training step


def reverse_examples(n=16):
    digits = [[str((i * 7 + j * 3) % 10) for j in range(3)] for i in range(n)]
    return [{"digits": " ".join(d), "label": " ".join(reversed(d))} for d in digits]


@pytest.fixture(scope="module")
def setting():
    pm = prompt_model()
    return Setting(pm, engine.init_params(pm, seed=0), steps=4, batch_size=8)


@pytest.fixture(scope="module")
def library(setting):
    examples = toy_examples(16)
    sources = [spot.SourceTask("edible", [{**ex, "edible": "yes" if "food" in ex["text"] else "no"}
                                          for ex in examples], problem=EDIBLE),
               spot.SourceTask("polarity_copy", examples, problem=POLARITY),
               spot.SourceTask("reverse", reverse_examples(), template=Template("Reverse: {digits}", "{label}"))]
    return spot.build_library(setting, sources, steps=8, recipe=RECIPE, length=LENGTH)


def test_ranking_picks_the_source_trained_on_a_copy_of_the_target(setting, library):
    data = FewShotData(train=tuple(toy_examples(16)), dev=(), unlabelled=(), test=tuple(toy_examples(24)[16:]))
    result = spot.spot(setting, POLARITY, data, seed=13, library=library)
    ranking = result.details["ranking"]
    assert result.details["source"] == "polarity_copy" == ranking[0][0]
    assert sorted(name for name, _ in ranking) == ["edible", "polarity_copy", "reverse"]
    sims = [sim for _, sim in ranking]
    assert sims == sorted(sims, reverse=True) and sims[0] > sims[1] + 0.02 and all(-1 <= s <= 1 for s in sims)
    assert 0.0 <= result.accuracy <= 100.0 and result.details["prompt_length"] == LENGTH
    # The source's embedding is its prompt's early checkpoint: the recipe's short training, averaged.
    copy = library["polarity_copy"]
    early = spot.task_embedding(setting, spot.SourceTask("c", toy_examples(16), problem=POLARITY), RECIPE, LENGTH)
    np.testing.assert_array_equal(copy.embedding, early)
    assert not np.allclose(copy.embedding, average_prompt(copy.prompt))  # trained on after it


def test_library_save_load_round_trip_gives_the_same_ranking(setting, library, tmp_path):
    library.save(str(tmp_path / "lib"))
    loaded = PromptLibrary.load(str(tmp_path / "lib"))
    assert loaded.names == library.names and loaded.recipe == RECIPE
    for name in library.names:
        np.testing.assert_array_equal(loaded[name].prompt, library[name].prompt)
        np.testing.assert_array_equal(loaded[name].embedding, library[name].embedding)
    target = spot.task_embedding(setting, spot.SourceTask("t", toy_examples(16), problem=POLARITY), RECIPE, LENGTH,
                                 seed=5)
    assert loaded.rank(target) == library.rank(target)
    # Each source file is a plain PEFT prompt file: it loads into a prompt-tuning T5's params.
    params = spot.initial_params(setting, LENGTH, 0)
    file = sorted((tmp_path / "lib").glob("*polarity_copy.safetensors"))[0]
    np.testing.assert_array_equal(spot.prompt_of(load_peft_params(str(file), params)),
                                  library["polarity_copy"].prompt)


def test_transfer_initialises_the_target_prompt_from_the_chosen_source_exactly(setting, library):
    task = spot.SourceTask("target", toy_examples(16), problem=POLARITY)
    result = spot.transfer(setting, library, task, steps=0, seed=21)
    assert result.source == result.ranking[0][0] == "polarity_copy"
    np.testing.assert_array_equal(spot.prompt_of(result.params), library["polarity_copy"].prompt)
    base = jax.tree.leaves(setting.base_params)
    without_prompt = {**result.params, "encoder": {k: v for k, v in result.params["encoder"].items()
                                                   if k != "prompt_tuning"}}
    assert all(np.array_equal(a, b) for a, b in zip(base, jax.tree.leaves(without_prompt)))
    trained = spot.transfer(setting, library, task, steps=3, seed=21)
    assert not np.array_equal(spot.prompt_of(trained.params), library["polarity_copy"].prompt)


def test_bad_input_is_one_user_error_naming_the_source(setting, library):
    data = FewShotData(train=tuple(toy_examples(8)), dev=(), unlabelled=(), test=tuple(toy_examples(8)))
    with pytest.raises(UserError, match="library is empty"):
        spot.spot(setting, POLARITY, data, seed=13, library=PromptLibrary())
    with pytest.raises(UserError, match="library is empty"):
        PromptLibrary().rank(np.ones(32))
    source = library["edible"]
    short = SourcePrompt("short_one", source.prompt[:3], source.embedding, RECIPE, 8)
    mixed = PromptLibrary(RECIPE, [library["polarity_copy"], short])
    with pytest.raises(UserError, match="source 'short_one' has a prompt of length 3 and width 32; the target's has "
                                        "length 4 and width 32"):
        spot.spot(setting, POLARITY, data, seed=13, library=mixed)
    narrow = SourcePrompt("narrow_one", np.zeros((LENGTH, 16)), np.ones(16), RECIPE, 8)
    with pytest.raises(UserError, match="source 'narrow_one' has a prompt of length 4 and width 16"):
        spot.spot(setting, POLARITY, data, seed=13, library=PromptLibrary(RECIPE, [narrow]), prompt_length=LENGTH)
    with pytest.raises(UserError, match="source 'edible' has a prompt of length 4 and width 32; the target's has "
                                        "length 5"):
        spot.spot(setting, POLARITY, data, seed=13, library=library, prompt_length=5)
    with pytest.raises(UserError, match="already has a source named 'edible'"):
        library.add(source)
    with pytest.raises(UserError, match="source task 'x': give exactly one of"):
        spot.SourceTask("x", toy_examples(2))
    with pytest.raises(UserError, match="source task 'gen': an example has no target field 'answer'"):
        spot.SourceTask("gen", toy_examples(2), template=Template("{text}", "{label}"), target_key="answer")
    with pytest.raises(UserError, match="no index.json"):
        PromptLibrary.load("/nonexistent/spot")


@pytest.mark.parametrize("index,message", [
    ('{"format": "text2text-spot-library", ', "is not a valid SPoT prompt library index: invalid JSON"),
    ('["text2text-spot-library"]', r"is not a SPoT prompt library index \(format='list'\)"),
    ('{"format": "text2text-spot-library", "sources": []}', "index has no key 'recipe'"),
    ('{"format": "text2text-spot-library", "recipe": {}, "sources": [{"name": "a", "file": "a.safetensors"}]}',
     "index has no key 'embedding'"),
    ('{"format": "text2text-spot-library", "recipe": {"step": 3}, "sources": []}',
     "malformed SPoT prompt library index .*unexpected keyword argument 'step'"),
    ('{"format": "text2text-spot-library", "recipe": {}, "sources": [{"name": "a", "file": "a.safetensors", '
     '"embedding": ["x"], "steps": 1}]}', "malformed SPoT prompt library index"),
])
def test_a_corrupt_library_index_is_one_user_error_naming_the_file(tmp_path, index, message):
    (tmp_path / "index.json").write_text(index)
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'index.json'))}.*{message}"):
        PromptLibrary.load(str(tmp_path))


def test_demo_sources_are_the_training_families():
    classification = spot.demo_sources(4)
    assert [s.name for s in classification] == ["word_polarity", "word_topic", "entailment"]
    entailment = classification[2]
    assert entailment.problem.text_fields == ("premise", "hypothesis") and len(entailment.examples) == 4
    assert entailment.problem.class_task(entailment.examples).class_targets == ("yes", "no")
    generative = [s for s in spot.demo_sources(4, generative=True) if s.problem is None]
    assert [s.name for s in generative] == ["keyword", "sort", "reverse"]
    example = generative[2].examples[0]
    assert generative[2].template.format_inputs(example).endswith(example["digits"])
