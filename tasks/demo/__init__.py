"""Offline demo tasks: a generated pre-training corpus and eight prompted task families (T0/FLAN in miniature).

Registers, with the shared lazy vocabulary of tasks.vocab (point it at the demo's vocabulary first: the pinned
`spm.model` shipped here, which `install_demo_vocabulary` copies, made by `train_demo_vocabulary`):
- `demo_corpus_span_corruption`: T5 span corruption on the shipped corpus (tasks/demo/corpus.txt);
- `demo_<family>` for each training family: its train and validation splits, each example under one of the
  family's training templates (chosen per example, seeded), target = the answer text, exact-match accuracy;
- `demo_multitask` (TRAIN_MIXTURE): span corruption + the training families, examples-proportional with a cap;
- `demo_<family>_t<i>` for every evaluation template (all templates of a held-out family, the held-out templates
  of a training family) on the validation split: rank classification over the verbalizer's answer choices for
  classification families, exact-match accuracy of the generated text otherwise; all in `demo_eval`
  (EVAL_MIXTURE);
- `demo_<family>_k<K>` for each held-out classification family: K class-balanced training examples under its
  first template, for few-shot adaptation from the multitask base (gin_configs/peft/demo_*.gin).
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from typing import Dict, List, Sequence, Tuple

import seqio
import tensorflow as tf

from tasks import c4, custom, metrics, prompting, vocab
from tasks.demo import corpus, families
from tasks.demo.families import FAMILIES, FAMILY_BY_NAME, Family
from tasks.mixtures import proportional, register_mixture
from text2text.errors import UserError

PRETRAINING_TASK_NAME = "demo_corpus_span_corruption"
TRAIN_MIXTURE = "demo_multitask"
EVAL_MIXTURE = "demo_eval"
MIXING_RATE_CAP = 3000  # examples-proportional mixing limit K: no task gets a larger rate
FEW_SHOT_K = 64
VOCABULARY_PATH = os.path.join(os.path.dirname(__file__), "spm.model")
VOCABULARY_SHA256 = "452fc64fdef7a3cfdd1c7a416e9b77dbedfec4f8f8afa675dae15715598b956a"
VOCABULARY_SIZE = 900


def training_task_name(family: Family) -> str:
    return f"demo_{family.name}"


def eval_task_name(family: Family, template_index: int) -> str:
    """The eval task of `family.templates[template_index]`."""
    return f"demo_{family.name}_t{template_index}"


def few_shot_task_name(family: Family, k: int = FEW_SHOT_K) -> str:
    return f"demo_{family.name}_k{k}"


def eval_templates(family: Family) -> List[Tuple[int, prompting.Template]]:
    """(index in family.templates, template) of each template the family is evaluated with."""
    first = 0 if family.held_out else len(family.templates) - family.held_out_templates
    return list(enumerate(family.templates))[first:]


def training_rows(family: Family, split: str = "train") -> List[Dict[str, str]]:
    """{'inputs', 'targets'} of a split, example i under train template random.Random(f"{name}/{i}")-chosen."""
    rows = []
    for i, example in enumerate(families.generate(family.name, split)):
        template = random.Random(f"{family.name}/{i}").choice(family.train_templates)
        rows.append({"inputs": template.format_inputs(example), "targets": family.target(example)})
    return rows


def few_shot_examples(family: Family, k: int = FEW_SHOT_K) -> List[families.Example]:
    """The first k/len(classes) training examples of each class, in split order (k must divide evenly)."""
    classes = family.verbalizer.classes
    per_class = k // len(classes)
    chosen = [ex for cls in classes for ex in [e for e in families.generate(family.name, "train")
                                               if e["label"] == cls][:per_class]]
    return sorted(chosen, key=families.generate(family.name, "train").index)


def _generative_task(name: str, rows_by_split: Dict[str, Sequence[Dict[str, str]]]) -> seqio.Task:
    return custom.add_task(
        name, source=prompting.in_memory_source(rows_by_split),
        preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        output_features=vocab.output_features(), metric_fns=[metrics.accuracy])


def vocabulary_corpus() -> List[str]:
    """Texts for the demo SentencePiece model: the corpus, and every family example under every template."""
    texts = list(corpus.load_corpus())
    for family in FAMILIES:
        for split in families.SPLIT_SIZES:
            for example in families.generate(family.name, split):
                target = family.target(example)
                texts += [f"{t.format_inputs(example)} {target}" for t in family.templates]
    return texts


def train_demo_vocabulary(output_prefix: str, vocab_size: int = VOCABULARY_SIZE) -> str:
    """Trains a SentencePiece model on `vocabulary_corpus()`; returns the .model path.

    With sentencepiece 0.2.2 (the test extra pins < 0.2.3) and the default size this gives the pieces of the shipped VOCABULARY_PATH
    (821 pieces: the corpus has fewer words than VOCABULARY_SIZE); other sentencepiece releases train other
    pieces from the same text, which is why the demo ships its model instead of training it.
    """
    return vocab.train_sentencepiece(vocabulary_corpus(), output_prefix, vocab_size=vocab_size)


def install_demo_vocabulary(path: str) -> str:
    """Copies the shipped, checksum-pinned demo SentencePiece model to `path` (folders created); returns `path`.

    Raises UserError if the shipped file is missing or differs from VOCABULARY_SHA256.
    """
    try:
        with open(VOCABULARY_PATH, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError as exc:
        raise UserError(f"demo vocabulary {VOCABULARY_PATH} cannot be read: {exc.strerror}") from exc
    if digest != VOCABULARY_SHA256:
        raise UserError(f"demo vocabulary {VOCABULARY_PATH} has SHA-256 {digest}, expected {VOCABULARY_SHA256}; "
                        "restore it with `git checkout -- tasks/demo/spm.model`")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    shutil.copyfile(VOCABULARY_PATH, path)
    return path


def _corpus_dataset(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": corpus.split_documents(split)})


def register() -> None:
    """Registers the corpus task, every family's tasks, and the two mixtures (see the module docstring)."""
    c4.register_span_corruption_task(PRETRAINING_TASK_NAME, seqio.FunctionDataSource(
        _corpus_dataset, splits=("train", "validation"),
        num_input_examples={s: len(corpus.split_documents(s)) for s in ("train", "validation")}))
    training, evaluation = [PRETRAINING_TASK_NAME], []
    for family in FAMILIES:
        if not family.held_out:
            _generative_task(training_task_name(family), {split: training_rows(family, split)
                                                          for split in families.SPLIT_SIZES})
            training.append(training_task_name(family))
        validation = families.generate(family.name, "validation")
        for index, template in eval_templates(family):
            name = eval_task_name(family, index)
            if family.verbalizer:
                prompting.register_rank_classification_task(name, {"validation": validation}, template,
                                                            family.verbalizer)
            else:
                _generative_task(name, {"validation": [{"inputs": template.format_inputs(ex),
                                                        "targets": family.target(ex)} for ex in validation]})
            evaluation.append(name)
        if family.held_out and family.verbalizer:
            prompting.register_prompted_task(
                few_shot_task_name(family),
                {"train": few_shot_examples(family), "validation": validation}, family.templates[0],
                family.verbalizer)
    register_mixture(TRAIN_MIXTURE, training, default_rate=proportional(maximum=MIXING_RATE_CAP))
    register_mixture(EVAL_MIXTURE, evaluation, default_rate=1.0)


register()
