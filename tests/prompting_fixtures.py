"""Shared helpers for the prompt-based method tests: a tiny T5 on the demo's shipped vocabulary, toy data."""
import functools

import seqio

import tasks.demo as demo_tasks
from tasks.prompting import engine
from text2text.config import get_config
from text2text.models import EncoderDecoderModel

LENGTHS = {"inputs": 24, "targets": 6}
CONFIG = get_config("tiny", vocab_size=1024)  # 900 SentencePiece pieces + 100 sentinels, padded


@functools.lru_cache(maxsize=None)
def vocabulary() -> seqio.SentencePieceVocabulary:
    return seqio.SentencePieceVocabulary(demo_tasks.VOCABULARY_PATH, extra_ids=100)


@functools.lru_cache(maxsize=None)
def prompt_model(batch_size: int = 32) -> engine.PromptModel:
    """The tiny T5 (random) as a PromptModel; one object per batch size, so compiled programs are shared."""
    return engine.PromptModel(EncoderDecoderModel(CONFIG), vocabulary(), LENGTHS, batch_size=batch_size)


def toy_examples(n: int = 16):
    """n reviews-like rows: label "positive" iff the text says good."""
    words = ["good", "bad"]
    things = ["food", "game", "song", "rain"]
    return [{"text": f"the {things[i % 4]} was {words[(i // 4 + i) % 2]}",
             "label": "positive" if words[(i // 4 + i) % 2] == "good" else "negative"} for i in range(n)]
