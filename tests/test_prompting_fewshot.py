"""The few-shot harness: per-seed K-per-class sampling, every method on the same samples, mean ± std, the JSON
and table of the `fewshot` run mode, and its one-line errors."""
import dataclasses
import functools
import json

import pytest

import tasks.demo as demo_tasks
from launch_helpers import run_main
from prompting_fixtures import toy_examples
from tasks.prompting import Template, Verbalizer, fewshot
from tasks.prompting.problem import Problem, Setting
from tasks.prompting.problems import get_problem, register_problem
from text2text.errors import UserError

PROBLEM = Problem("toy_reviews", (Template("{text} It was <extra_id_0>.", ),),
                  Verbalizer({"positive": "great", "negative": "terrible"}), ("text",))


@pytest.fixture(scope="module")
def toy_problem():
    return register_problem(PROBLEM, toy_examples(40), toy_examples(12))


def test_samples_k_per_class_disjoint_and_seeded(toy_problem):
    entry = toy_problem
    data = fewshot.sample_few_shot(entry.problem, entry.pool, entry.test, k=4, seed=13, num_unlabelled=10)
    for split in (data.train, data.dev):
        assert sorted(ex["label"] for ex in split) == ["negative"] * 4 + ["positive"] * 4
    ids = [id(ex) for ex in data.train + data.dev + data.unlabelled]
    assert len(ids) == len(set(ids)) == 8 + 8 + 10
    again = fewshot.sample_few_shot(entry.problem, entry.pool, entry.test, k=4, seed=13, num_unlabelled=10)
    other = fewshot.sample_few_shot(entry.problem, entry.pool, entry.test, k=4, seed=21, num_unlabelled=10)
    assert again == data and other.train != data.train
    with pytest.raises(UserError, match="K=11 .* class 'positive'; the pool has 20"):
        fewshot.sample_few_shot(entry.problem, entry.pool, entry.test, k=11, seed=13)


def test_counts_below_their_minimum_are_one_user_error(toy_problem):
    entry = toy_problem
    with pytest.raises(UserError, match=r"num_test \(NUM_TEST\) must be >= 1 or None \(all\), got 0"):
        fewshot.sample_few_shot(entry.problem, entry.pool, entry.test, k=2, seed=13, num_test=0)
    with pytest.raises(UserError, match=r"num_unlabelled \(NUM_UNLABELLED\) must be >= 0, got -1"):
        fewshot.sample_few_shot(entry.problem, entry.pool, entry.test, k=2, seed=13, num_unlabelled=-1)


def test_methods_seeds_and_options_are_checked_against_the_methods_signatures():
    check = fewshot.check_methods
    with pytest.raises(UserError, match=r"METHODS \(methods\) is empty"):
        check([], [13])
    with pytest.raises(UserError, match=r"SEEDS \(seeds\) is empty"):
        check(["zero_shot"], [])
    with pytest.raises(UserError, match=r"METHOD_OPTIONS\['pet'\]: method pet has no option 'weighing' \(did you mean "
                                        r"'weighting'\?\); it takes alpha, weighting, temperature, peft,"):
        check(["zero_shot"], [13], {"pet": {"weighing": "uniform"}})  # checked even when pet does not run
    with pytest.raises(UserError, match=r"method zero_shot has no option 'steps'; it takes none"):
        check(["zero_shot"], [13], {"zero_shot": {"steps": 3}})
    with pytest.raises(UserError, match=r"method lora has no option 'method'"):  # fixed by the registry's partial
        check(["lora"], [13], {"lora": {"method": "bitfit"}})
    with pytest.raises(UserError, match=r"method prompt_finetune_demos has no option 'demonstrations'"):
        check(["prompt_finetune_demos"], [13], {"prompt_finetune_demos": {"demonstrations": False}})
    with pytest.raises(UserError, match=r"METHOD_OPTIONS\['pet'\] must map option names to values, got 0.5"):
        check(["pet"], [13], {"pet": 0.5})
    with pytest.raises(UserError, match=r"METHOD_OPTIONS\['spot'\] must set library"):
        check(["spot"], [13])
    functions = check(["zero_shot", "prompt_finetune_demos"], [13],
                      {"prompt_finetune_demos": {"average": "probability"}, "spot": {"library": "lib"}})
    assert list(functions) == ["zero_shot", "prompt_finetune_demos"]


def test_run_methods_checks_everything_before_the_first_method_runs(toy_problem):
    def no_progress(line):
        raise AssertionError(f"a method ran: {line}")

    setting = Setting(None, None, steps=1, batch_size=2)
    run = functools.partial(fewshot.run_methods, progress=no_progress)
    with pytest.raises(UserError, match=r"BATCH_SIZE \(batch_size=0\) must be >= 1"):
        run(dataclasses.replace(setting, batch_size=0), "toy_reviews", ["zero_shot"], k=2, seeds=[13])
    with pytest.raises(UserError, match=r"SEEDS \(seeds\) is empty"):
        run(setting, "toy_reviews", ["zero_shot"], k=2, seeds=[])
    with pytest.raises(UserError, match=r"num_test \(NUM_TEST\) must be >= 1"):
        run(setting, "toy_reviews", ["zero_shot"], k=2, seeds=[13], num_test=0)
    with pytest.raises(UserError, match=r"method pet has no option 'weighing'"):
        run(setting, "toy_reviews", ["zero_shot", "pet"], k=2, seeds=[13], method_options={"pet": {"weighing": "x"}})


def test_summary_is_mean_and_sample_std():
    assert fewshot.summarize([90.0, 92.0, 94.0]) == {"mean": 92.0, "std": 2.0}
    assert fewshot.summarize([70.0]) == {"mean": 70.0, "std": 0.0}


FLAGS = ["--gin_file=models/tiny.gin", "--gin_file=prompting/fewshot.gin",
         f"--gin.vocab.sentencepiece_model_path.path='{demo_tasks.VOCABULARY_PATH}'",
         "--gin.config.get_config.vocab_size=1024", "--gin.PROBLEM='toy_reviews'", "--gin.K=2", "--gin.SEEDS=[13, 21]",
         "--gin.STEPS=2", "--gin.BATCH_SIZE=2", "--gin.FEATURE_LENGTHS={'inputs': 16, 'targets': 6}"]


def test_fewshot_mode_prints_progress_and_table_and_writes_json(toy_problem, tmp_path, capsys):
    out = tmp_path / "fewshot.json"
    # Options of a method that is not in METHODS (here PET's) are ignored, as the README's shortened commands need.
    assert run_main(*FLAGS, f"--gin.OUTPUT_PATH='{out}'", "--gin.METHODS=['zero_shot', 'fine_tuning', 'lora']",
                    "--gin.METHOD_OPTIONS={'pet': {'alpha': 0.5}}") == 0
    printed = capsys.readouterr().out
    assert "fewshot [6/6] toy_reviews lora seed 21: accuracy" in printed and f"wrote {out}" in printed
    results = json.loads(out.read_text())
    assert results["seeds"] == [13, 21] and list(results["methods"]) == ["zero_shot", "fine_tuning", "lora"]
    assert results["complete"] is True
    for name, row in results["methods"].items():
        assert len(row["accuracies"]) == 2 and all(0 <= a <= 100 for a in row["accuracies"])
        assert row["mean"] == pytest.approx(sum(row["accuracies"]) / 2)
        assert f"{name} " in printed and f"{row['mean']:.1f} ± {row['std']:.1f}" in printed
    # zero-shot trains nothing: both seeds score the same base on the same test set.
    assert len(set(results["methods"]["zero_shot"]["accuracies"])) == 1
    assert results["methods"]["lora"]["details"][0]["trainable_params"] > 0


@pytest.mark.parametrize("flags,message", [
    (["--gin.METHODS=['pett']"], "unknown few-shot method 'pett'; did you mean pet"),
    (["--gin.K=30"], "K=30 per class for train and dev needs 60 examples of class"),
    (["--gin.PROBLEM='toy_review'"], "no few-shot problem 'toy_review'; did you mean toy_reviews"),
    (["--gin.METHODS=['pet']", "--gin.NUM_UNLABELLED=0"], "PET on 'toy_reviews': the unlabelled set is empty"),
    (["--gin.METHOD_OPTIONS={'ipett': {'generations': 1}}"], "unknown few-shot method 'ipett'; did you mean ipet"),
    (["--gin.METHODS=['zero_shot', 'pet']", "--gin.METHOD_OPTIONS={'pet': {'weighing': 'uniform'}}"],
     "METHOD_OPTIONS['pet']: method pet has no option 'weighing' (did you mean 'weighting'?); it takes alpha, "),
    (["--gin.SEEDS=[]"], "SEEDS (seeds) is empty"),
    (["--gin.METHODS=[]"], "METHODS (methods) is empty"),
    (["--gin.BATCH_SIZE=0"], "BATCH_SIZE (batch_size=0) must be >= 1"),
    (["--gin.NUM_TEST=0"], "num_test (NUM_TEST) must be >= 1 or None (all), got 0"),
])
def test_bad_input_is_one_error_line_and_nothing_written(toy_problem, tmp_path, capsys, flags, message):
    out = tmp_path / "fewshot.json"
    assert run_main(*FLAGS, f"--gin.OUTPUT_PATH='{out}'", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_demo_families_are_registered_problems():
    entry = get_problem("demo_review_sentiment")
    assert entry.problem.text_fields == ("review",) and len(entry.problem.templates) == 3
    assert len(entry.pool) == 3000 and len(entry.test) == 200
    assert get_problem("demo_sentence_topic").problem.verbalizer.classes == ("food", "music", "sports", "weather")
