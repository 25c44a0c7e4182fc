"""The demo's task families: generators of labelled examples and their natural-language prompt templates.

Each family is a kind of problem (a word's polarity, a sentence's topic, alphabetical sorting, ...) with a
generator of examples (dicts of text fields plus `label`, a class for classification families or the target
text for generative ones) and several paraphrased T0/FLAN-style templates. Multitask prompted training (Sanh et
al. 2022, "T0"; Wei et al. 2022, "FLAN") trains on some families with all but their last template and
evaluates zero-shot on held-out families, whose every template is scored by rank classification over the
verbalizer's answer choices.
"""
from __future__ import annotations

import dataclasses
import functools
import random
import string
from typing import Callable, Dict, Optional, Tuple

from tasks.demo import lexicon
from tasks.prompting import Template, Verbalizer

Example = Dict[str, str]

SPLIT_SIZES = {"train": 3000, "validation": 200}


@dataclasses.dataclass(frozen=True)
class Family:
    """A task family: `generate(rng)` -> example fields + "label"; templates; a verbalizer if it classifies.

    `held_out` families are never trained on (zero-shot evaluation over all templates); training families
    train on all templates but the last `held_out_templates` ones, which test generalisation to new wording.
    `disjoint_splits=False` lets train repeat validation examples, for families with few distinct examples
    (a word-level family has one example per word), whose validation measures the held-out templates.
    """
    name: str
    generate: Callable[[random.Random], Example]
    templates: Tuple[Template, ...]
    verbalizer: Optional[Verbalizer] = None
    held_out: bool = False
    held_out_templates: int = 1
    disjoint_splits: bool = True

    @property
    def train_templates(self) -> Tuple[Template, ...]:
        return () if self.held_out else self.templates[:len(self.templates) - self.held_out_templates]

    def target(self, example: Example) -> str:
        """The target text of an example: its class's label words, or the generated answer."""
        return self.verbalizer.word(example["label"]) if self.verbalizer else example["label"]


def _t(inputs: str) -> Template:
    return Template(inputs, targets="{label}")


def _opinion(rng: random.Random, polarity: str) -> str:
    return " ".join(filter(None, (rng.choice(lexicon.INTENSIFIERS), rng.choice(lexicon.SENTIMENT[polarity]))))


def word_polarity(rng: random.Random) -> Example:
    """A sentiment word with an optional intensifier ("really great") -> positive / negative."""
    polarity = rng.choice(sorted(lexicon.SENTIMENT))
    return {"phrase": _opinion(rng, polarity), "label": polarity}


def word_topic(rng: random.Random) -> Example:
    """A topic word ("guitar") -> its topic (music)."""
    topic = rng.choice(sorted(lexicon.TOPICS))
    return {"word": rng.choice(lexicon.TOPICS[topic]), "label": topic}


def _topic_sentence(rng: random.Random, word: str) -> str:
    return rng.choice(lexicon.TOPIC_FRAMES).format(word=word, place=rng.choice(lexicon.PLACES),
                                                   time=rng.choice(lexicon.TIMES))


def keyword(rng: random.Random) -> Example:
    """A sentence with one topic word and the topic's name -> that word."""
    topic = rng.choice(sorted(lexicon.TOPICS))
    word = rng.choice(lexicon.TOPICS[topic])
    return {"sentence": _topic_sentence(rng, word), "topic": topic, "label": word}


def entailment(rng: random.Random) -> Example:
    """"A has an x and B has a y." + "C has a z" -> yes if the premise states it, else no (half each)."""
    first, second = rng.sample(lexicon.NAMES, 2)
    items = rng.sample(lexicon.OBJECTS, 3)
    premise = f"{first} has a {items[0]} and {second} has a {items[1]}."
    if rng.random() < 0.5:
        who, what = rng.choice(((first, items[0]), (second, items[1])))
        label = "yes"
    else:
        who, what = rng.choice(((first, items[1]), (second, items[0]), (rng.choice((first, second)), items[2])))
        label = "no"
    return {"premise": premise, "hypothesis": f"{who} has a {what}", "label": label}


def sort_letters(rng: random.Random) -> Example:
    """3-7 distinct letters -> the same letters in alphabetical order."""
    letters = rng.sample(string.ascii_lowercase, rng.randint(3, 7))
    return {"letters": " ".join(letters), "label": " ".join(sorted(letters))}


def reverse_digits(rng: random.Random) -> Example:
    """3-7 digits -> the digits in reverse order."""
    digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 7))]
    return {"digits": " ".join(digits), "label": " ".join(reversed(digits))}


def review(rng: random.Random) -> Example:
    """A short review: 1-2 opinion sentences of one polarity about topic words, maybe a neutral sentence."""
    polarity = rng.choice(sorted(lexicon.SENTIMENT))
    sentences = []
    for _ in range(rng.randint(1, 2)):
        time = rng.choice(lexicon.TIMES)
        sentences.append(rng.choice(lexicon.REVIEW_FRAMES).format(
            word=rng.choice(lexicon.TOPICS[rng.choice(sorted(lexicon.TOPICS))]), opinion=_opinion(rng, polarity),
            place=rng.choice(lexicon.PLACES), time=time, time_cap=time[:1].upper() + time[1:]))
    if rng.random() < 0.5:
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(lexicon.FILLERS))
    return {"review": " ".join(sentences), "label": polarity}


def topic_text(rng: random.Random) -> Example:
    """1-2 sentences about words of one topic, maybe a neutral sentence -> the topic."""
    topic = rng.choice(sorted(lexicon.TOPICS))
    words = rng.sample(lexicon.TOPICS[topic], rng.randint(1, 2))
    sentences = [_topic_sentence(rng, w) for w in words]
    if rng.random() < 0.5:
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(lexicon.FILLERS))
    return {"text": " ".join(sentences), "label": topic}


POLARITY = Verbalizer({"positive": "positive", "negative": "negative"})
TOPIC = Verbalizer({t: t for t in sorted(lexicon.TOPICS)})
YES_NO = Verbalizer({"yes": "yes", "no": "no"})

FAMILIES: Tuple[Family, ...] = (
    Family("word_polarity", word_polarity, (
        _t('Is the word "{phrase}" positive or negative?'),
        _t("{phrase}\nDoes this express a positive or a negative feeling?"),
        _t('Sentiment of "{phrase}" (positive or negative):'),
        _t('Tell me whether "{phrase}" sounds positive or negative.'),
    ), POLARITY, disjoint_splits=False),
    Family("word_topic", word_topic, (
        _t('Which topic does the word "{word}" belong to: sports, food, music or weather?'),
        _t("{word}\nIs this word about sports, food, music or weather?"),
        _t('Topic of the word "{word}":'),
        _t('Pick the topic of "{word}". Options: sports, food, music, weather.'),
    ), TOPIC, disjoint_splits=False),
    Family("entailment", entailment, (
        _t("{premise}\nQuestion: does it follow that {hypothesis}? Yes or no?"),
        _t("Premise: {premise} Hypothesis: {hypothesis}. Is the hypothesis true?"),
        _t("{premise} Based on this, is it true that {hypothesis}? Answer yes or no."),
        _t("Given that {premise} Can we conclude that {hypothesis}?"),
    ), YES_NO),
    Family("keyword", keyword, (
        _t("Which word in this sentence is about {topic}? {sentence}"),
        _t("{sentence}\nFind the {topic} word in the sentence above."),
        _t("Sentence: {sentence}\nThe word related to {topic} is:"),
        _t("Copy the word that has to do with {topic}: {sentence}"),
    )),
    Family("sort", sort_letters, (
        _t("Sort these letters alphabetically: {letters}"),
        _t("Put in alphabetical order: {letters}"),
        _t("{letters}\nWrite these letters from a to z."),
        _t("Arrange the letters {letters} in order."),
    )),
    Family("reverse", reverse_digits, (
        _t("Reverse the order of these digits: {digits}"),
        _t("{digits}\nWrite the digits backwards."),
        _t("Digits: {digits}. Reversed:"),
        _t("Read {digits} from right to left."),
    )),
    Family("review_sentiment", review, (
        _t("Is the following review positive or negative? {review}"),
        _t("{review}\nDid the writer of this review have a positive or a negative experience?"),
        _t("Review: {review}\nSentiment (positive or negative):"),
    ), POLARITY, held_out=True),
    Family("sentence_topic", topic_text, (
        _t("What is the topic of this text: sports, food, music or weather? {text}"),
        _t("{text}\nIs this text about sports, food, music or weather?"),
        _t("Text: {text}\nTopic:"),
    ), TOPIC, held_out=True),
)
FAMILY_BY_NAME: Dict[str, Family] = {f.name: f for f in FAMILIES}


@functools.lru_cache(maxsize=None)
def generate(name: str, split: str) -> Tuple[Example, ...]:
    """The fixed examples of one family split (sizes SPLIT_SIZES); with `disjoint_splits`, train never repeats a
    validation example.

    Seeded by "name/split" (Python's string seeding is stable across versions), so every machine gets the same
    examples. Raises KeyError for an unknown family or split.
    """
    if name not in FAMILY_BY_NAME or split not in SPLIT_SIZES:
        raise KeyError(f"no demo data for family={name!r} split={split!r}")
    family = FAMILY_BY_NAME[name]
    held = ({tuple(sorted(ex.items())) for ex in generate(name, "validation")}
            if split == "train" and family.disjoint_splits else set())
    rng = random.Random(f"{name}/{split}")
    examples = []
    while len(examples) < SPLIT_SIZES[split]:
        example = family.generate(rng)
        if tuple(sorted(example.items())) not in held:
            examples.append(example)
    return tuple(examples)
