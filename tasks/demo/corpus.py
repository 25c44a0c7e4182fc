"""The demo's pre-training corpus: short English documents generated from the demo lexicon, shipped as a file.

`corpus.txt` (one document per line, UTF-8, "\\n" line ends) is the output of `build_corpus()` and is pinned by
its SHA-256, so pre-training text, and the vocabulary trained on it, are byte-identical on every machine. It is
this project's own text: sentences about topic words, opinions in reviews, and glossary lines stating a word's
topic or polarity, the kind of world knowledge a pre-training corpus gives a model before prompted training.
"""
from __future__ import annotations

import functools
import hashlib
import os
import random
from typing import List, Tuple

from tasks.demo import lexicon
from text2text.errors import UserError

CORPUS_PATH = os.path.join(os.path.dirname(__file__), "corpus.txt")
CORPUS_SHA256 = "4a08528d6e6e63723fb942aeeca0137dabffa47df8413240421375f1d6cc34bb"
NUM_DOCUMENTS = 3000
VALIDATION_EVERY = 20  # every 20th document is the pre-training task's validation split

_GLOSSARY_TOPIC = ("The word {word} has to do with {topic}.", "People connect the word {word} with {topic}.",
                   "The {word} is a common sight in {topic}.", "In {topic}, you often hear about the {word}.")
_GLOSSARY_POLARITY = {
    "positive": ("Calling something {word} means you liked it.", "{Word} is a kind word for a good experience.",
                 "When a day is {word}, people are happy about it."),
    "negative": ("Calling something {word} means you did not like it.", "{Word} is a harsh word for a bad "
                 "experience.", "When a day is {word}, people are unhappy about it."),
}


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    topic = rng.choice(sorted(lexicon.TOPICS))
    word = rng.choice(lexicon.TOPICS[topic])
    place, time = rng.choice(lexicon.PLACES), rng.choice(lexicon.TIMES)
    if kind < 0.3:
        return rng.choice(lexicon.TOPIC_FRAMES).format(word=word, place=place, time=time)
    polarity = rng.choice(sorted(lexicon.SENTIMENT))
    opinion = rng.choice(lexicon.SENTIMENT[polarity])
    if kind < 0.6:
        return rng.choice(lexicon.REVIEW_FRAMES).format(word=word, opinion=opinion, place=place, time=time,
                                                        time_cap=time[:1].upper() + time[1:])
    if kind < 0.75:
        return rng.choice(_GLOSSARY_TOPIC).format(word=word, topic=topic)
    if kind < 0.9:
        return rng.choice(_GLOSSARY_POLARITY[polarity]).format(word=opinion, Word=opinion.capitalize())
    return rng.choice(lexicon.FILLERS)


def build_corpus(num_documents: int = NUM_DOCUMENTS, seed: str = "demo-corpus") -> List[str]:
    """`num_documents` documents of 2-6 generated sentences each (what corpus.txt holds)."""
    rng = random.Random(seed)
    return [" ".join(_sentence(rng) for _ in range(rng.randint(2, 6))) for _ in range(num_documents)]


@functools.lru_cache(maxsize=1)
def load_corpus() -> Tuple[str, ...]:
    """The shipped corpus's documents; UserError if corpus.txt is missing or differs from the pinned SHA-256."""
    try:
        with open(CORPUS_PATH, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"demo corpus {CORPUS_PATH} cannot be read: {exc.strerror}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != CORPUS_SHA256:
        raise UserError(f"demo corpus {CORPUS_PATH} has SHA-256 {digest}, expected {CORPUS_SHA256}; "
                        "restore it with `git checkout -- tasks/demo/corpus.txt`")
    return tuple(data.decode("utf-8").splitlines())


def split_documents(split: str) -> List[str]:
    """The corpus documents of a split: every VALIDATION_EVERY-th one is validation, the rest train."""
    held_out = split == "validation"
    return [d for i, d in enumerate(load_corpus()) if (i % VALIDATION_EVERY == VALIDATION_EVERY - 1) == held_out]
