"""Demo tasks: the pinned corpus and vocabulary, correct family generators, templates, registered tasks/mixtures."""
import hashlib
import re

import pytest
import seqio
import sentencepiece as spm

import tasks.demo as demo
from tasks.demo import corpus, families, lexicon
from tasks.demo.families import FAMILIES, FAMILY_BY_NAME
from tasks_fixtures import spm_model, text  # noqa: F401

VOCAB_SHA256 = "fe121c011fb9c814390aa4ae019a18d46f0b72854fade824bfd65ccc27da8604"


def test_corpus_file_is_pinned_and_rebuilt_byte_for_byte():
    with open(corpus.CORPUS_PATH, "rb") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == corpus.CORPUS_SHA256
    assert data.decode("utf-8") == "\n".join(corpus.build_corpus()) + "\n"
    docs = corpus.load_corpus()
    assert len(docs) == corpus.NUM_DOCUMENTS
    train, validation = corpus.split_documents("train"), corpus.split_documents("validation")
    assert len(validation) == corpus.NUM_DOCUMENTS // corpus.VALIDATION_EVERY and not set(train) & set(validation)


def test_a_modified_corpus_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text("changed\n", encoding="utf-8")
    monkeypatch.setattr(corpus, "CORPUS_PATH", str(path))
    corpus.load_corpus.cache_clear()
    try:
        with pytest.raises(Exception, match=r"corpus\.txt has SHA-256 [0-9a-f]{64}, expected"):
            corpus.load_corpus()
    finally:
        corpus.load_corpus.cache_clear()


def test_demo_vocabulary_is_pinned_and_is_what_training_gives(tmp_path):
    with open(demo.VOCABULARY_PATH, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == demo.VOCABULARY_SHA256
    installed = demo.install_demo_vocabulary(str(tmp_path / "runs" / "spm.model"))
    with open(installed, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == demo.VOCABULARY_SHA256
    path = demo.train_demo_vocabulary(str(tmp_path / "spm"))  # the test environment pins sentencepiece < 0.2.3
    with open(path.removesuffix(".model") + ".vocab", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == VOCAB_SHA256
    shipped, trained = (spm.SentencePieceProcessor(model_file=p) for p in (demo.VOCABULARY_PATH, path))
    assert shipped.get_piece_size() == trained.get_piece_size() == 821
    assert all(shipped.id_to_piece(i) == trained.id_to_piece(i) for i in range(821))


def _reference_label(name, ex):
    """An independent answer for each family's example."""
    if name in ("word_polarity", "review_sentiment"):
        text_ = ex.get("phrase") or ex["review"]
        found = {p for p, words in lexicon.SENTIMENT.items() for w in words if re.search(rf"\b{w}\b", text_)}
        assert len(found) == 1
        return found.pop()
    if name in ("word_topic", "sentence_topic"):
        text_ = ex.get("word") or ex["text"]
        found = {t for t, words in lexicon.TOPICS.items() for w in words if re.search(rf"\b{w}\b", text_)}
        assert len(found) == 1
        return found.pop()
    if name == "keyword":
        return next(w for w in lexicon.TOPICS[ex["topic"]] if re.search(rf"\b{w}\b", ex["sentence"]))
    if name == "entailment":
        return "yes" if ex["hypothesis"] in ex["premise"].rstrip(".").split(" and ") else "no"
    if name == "sort":
        return " ".join(sorted(ex["letters"].split()))
    return " ".join(ex["digits"].split()[::-1])


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_family_examples_are_correct_deterministic_and_balanced(name):
    family = FAMILY_BY_NAME[name]
    train, validation = families.generate(name, "train"), families.generate(name, "validation")
    assert (len(train), len(validation)) == (families.SPLIT_SIZES["train"], families.SPLIT_SIZES["validation"])
    assert all(ex["label"] == _reference_label(name, ex) for ex in train + validation)
    if family.disjoint_splits:
        assert not {tuple(sorted(e.items())) for e in train} & {tuple(sorted(e.items())) for e in validation}
    families.generate.cache_clear()
    assert families.generate(name, "train") == train
    if family.verbalizer:
        shares = [sum(ex["label"] == c for ex in train) / len(train) for c in family.verbalizer.classes]
        assert max(shares) - min(shares) < 0.1


def test_families_templates_and_held_out_design():
    assert len(FAMILIES) >= 8
    held_out = [f for f in FAMILIES if f.held_out]
    assert len(held_out) >= 2 and all(f.verbalizer for f in held_out)
    assert any(f.verbalizer for f in FAMILIES if not f.held_out) and any(not f.verbalizer for f in FAMILIES)
    for family in FAMILIES:
        assert len(family.templates) >= 3 and len(set(family.templates)) == len(family.templates)
        example = families.generate(family.name, "validation")[0]
        assert all(t.format_inputs(example) for t in family.templates)
        if not family.held_out:
            assert family.train_templates and len(demo.eval_templates(family)) >= 1
            assert not set(family.train_templates) & {t for _, t in demo.eval_templates(family)}


def test_training_rows_use_only_training_templates(spm_model):
    for family in FAMILIES:
        if family.held_out:
            continue
        rows = demo.training_rows(family)
        prefixes = {t.inputs.split("{")[0] for t in family.train_templates}
        held_prefix = family.templates[-1].inputs.split("{")[0]
        assert all(any(r["inputs"].startswith(p) for p in prefixes) for r in rows)
        if held_prefix and held_prefix not in prefixes:
            assert not any(r["inputs"].startswith(held_prefix) for r in rows)


def test_registered_tasks_and_mixtures(spm_model):
    train_mixture = seqio.get_mixture_or_task(demo.TRAIN_MIXTURE)
    expected = {demo.PRETRAINING_TASK_NAME} | {demo.training_task_name(f) for f in FAMILIES if not f.held_out}
    assert {t.name for t in train_mixture.tasks} == expected
    rates = {t.name: train_mixture.get_rate(t) for t in train_mixture.tasks}
    assert rates[demo.PRETRAINING_TASK_NAME] == len(corpus.split_documents("train"))
    assert all(r == min(families.SPLIT_SIZES["train"], demo.MIXING_RATE_CAP)
               for n, r in rates.items() if n != demo.PRETRAINING_TASK_NAME)
    eval_names = {t.name for t in seqio.get_mixture_or_task(demo.EVAL_MIXTURE).tasks}
    for family in FAMILIES:
        names = {demo.eval_task_name(family, i) for i, _ in demo.eval_templates(family)}
        assert names <= eval_names
        assert len(names) == (len(family.templates) if family.held_out else family.held_out_templates)
    task = seqio.get_mixture_or_task(demo.eval_task_name(FAMILY_BY_NAME["review_sentiment"], 0))
    ex = next(task.get_dataset({"inputs": 64, "targets": 8}, split="validation", shuffle=False).as_numpy_iterator())
    assert text(ex["inputs_pretokenized"]).startswith("Is the following review positive or negative? ")
    assert text(ex["targets_pretokenized"]) in ("positive", "negative")


def test_few_shot_examples_are_class_balanced():
    for family in FAMILIES:
        if family.held_out:
            chosen = demo.few_shot_examples(family)
            assert len(chosen) == demo.FEW_SHOT_K
            counts = {c: sum(e["label"] == c for e in chosen) for c in family.verbalizer.classes}
            assert set(counts.values()) == {demo.FEW_SHOT_K // len(family.verbalizer.classes)}
