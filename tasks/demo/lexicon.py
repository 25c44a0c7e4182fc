"""The demo's hand-written lexicon: topic words, sentiment words, names, objects and sentence frames.

Everything the demo generates (its corpus and its task families) is built from these lists, so a word's topic
or polarity is the same fact wherever the model meets it: in pre-training text, in a training family, and in a
held-out family it is asked about zero-shot.
"""
from __future__ import annotations

from typing import Dict, Tuple

TOPICS: Dict[str, Tuple[str, ...]] = {
    "sports": ("football", "tennis", "goal", "team", "match", "coach", "stadium", "player", "race", "referee",
               "league", "runner", "trophy", "bicycle"),
    "food": ("bread", "soup", "cheese", "pasta", "salad", "cake", "rice", "apple", "chef", "kitchen", "pizza",
             "butter", "recipe", "dessert"),
    "music": ("guitar", "song", "piano", "concert", "band", "singer", "drum", "album", "melody", "violin", "choir",
              "orchestra", "rhythm", "lyrics"),
    "weather": ("rain", "snow", "storm", "wind", "cloud", "sunshine", "fog", "thunder", "forecast", "frost",
                "breeze", "hail", "drizzle", "rainbow"),
}

SENTIMENT: Dict[str, Tuple[str, ...]] = {
    "positive": ("great", "wonderful", "excellent", "lovely", "brilliant", "delightful", "superb", "fantastic",
                 "pleasant", "charming", "amazing", "perfect", "enjoyable", "marvellous"),
    "negative": ("awful", "terrible", "boring", "dreadful", "horrible", "disappointing", "poor", "bad", "dull",
                 "annoying", "mediocre", "painful", "unpleasant", "miserable"),
}

# Degree words that keep a sentiment word's polarity ("really great" is still positive).
INTENSIFIERS: Tuple[str, ...] = ("", "really", "very", "truly", "quite", "rather", "simply", "so", "absolutely",
                                 "pretty")

NAMES: Tuple[str, ...] = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas",
                          "Kira", "Leo", "Maya", "Noah", "Olga", "Paul")

OBJECTS: Tuple[str, ...] = ("book", "lamp", "kite", "clock", "chair", "pencil", "basket", "camera", "wallet",
                            "blanket", "ladder", "mirror", "candle", "bucket", "hammer", "umbrella")

PLACES: Tuple[str, ...] = ("in the garden", "at the station", "near the river", "in the old town", "at home",
                           "in the park", "at the market", "by the lake")

TIMES: Tuple[str, ...] = ("yesterday", "last week", "on Sunday", "this morning", "in the evening", "last summer",
                          "on Friday", "today")

# Sentence frames about a topic word ({word}), with optional {place} / {time}; no sentiment words.
TOPIC_FRAMES: Tuple[str, ...] = (
    "We talked about the {word} {time}.",
    "There was a {word} {place}.",
    "Everyone was thinking about the {word} {time}.",
    "The {word} was the main news {time}.",
    "She wrote a short note about the {word}.",
    "He asked a question about the {word} {place}.",
    "The children saw the {word} {place}.",
    "A new story about the {word} appeared {time}.",
)

# Review frames: {word} is a topic word, {opinion} a sentiment word with an optional intensifier.
REVIEW_FRAMES: Tuple[str, ...] = (
    "The {word} was {opinion}.",
    "I thought the {word} {place} was {opinion}.",
    "{time_cap}, the {word} was {opinion}.",
    "I found the {word} {opinion}.",
    "Honestly, the {word} felt {opinion} to me.",
    "Our {word} {time} was {opinion}.",
    "The {word} {place} turned out {opinion}.",
    "My friends found the {word} {opinion}.",
)

# Neutral sentences with no topic or sentiment word, to pad longer reviews and texts.
FILLERS: Tuple[str, ...] = (
    "We arrived a little late.",
    "It took about two hours.",
    "I went there with a friend.",
    "The tickets were easy to find.",
    "We took the bus back.",
    "I might tell my sister about it.",
    "It was my first visit.",
    "We stayed until the end.",
)
