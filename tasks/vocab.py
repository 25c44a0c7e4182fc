"""T5 SentencePiece vocabulary: lazy path resolution (gin / env var), clear errors, tiny-model trainer."""
import os
import socket
from typing import Iterable, Optional

import gin
import seqio
import tensorflow as tf

from text2text.errors import UserError

DEFAULT_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100
ENV_VAR = "T2T_VOCAB_PATH"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_GCS_HOST = "storage.googleapis.com"


@gin.configurable
def sentencepiece_model_path(path: Optional[str] = None) -> str:
    """Path of the SentencePiece model: gin `sentencepiece_model_path.path`, else $T2T_VOCAB_PATH, else T5's default."""
    return os.path.expanduser(path or os.environ.get(ENV_VAR) or DEFAULT_SPM_PATH)


def _how_to_fix(path: str) -> str:
    return (
        f"Download it with `gsutil cp {DEFAULT_SPM_PATH} /path/to/sentencepiece.model` "
        f"(or use any T5-style .model file), then either `export {ENV_VAR}=/path/to/sentencepiece.model` "
        f"or add the gin binding `sentencepiece_model_path.path = '/path/to/sentencepiece.model'`. "
        f"Path tried: {path}"
    )


def _gcs_reachable(timeout: float = 3.0) -> bool:
    """True if Google Cloud Storage accepts a TCP connection (avoids TF's long gs:// retry loop offline)."""
    try:
        with socket.create_connection((_GCS_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_model_file(path: str) -> None:
    """Raise UserError unless `path` looks reachable/existing (gs:// needs network, local needs the file)."""
    if path.startswith("gs://"):
        if not _gcs_reachable():
            raise UserError(
                f"Cannot reach Google Cloud Storage to read the SentencePiece vocabulary. {_how_to_fix(path)}")
        return
    if not os.path.isfile(path):
        raise UserError(f"SentencePiece vocabulary file not found. {_how_to_fix(path)}")


class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """seqio.SentencePieceVocabulary whose model path is resolved at use time, so gin/env overrides work after import.

    A later change of the gin binding or $T2T_VOCAB_PATH makes the next use load the newly named model.
    """

    def __init__(self, path: Optional[str] = None, extra_ids: int = DEFAULT_EXTRA_IDS):
        super().__init__(sentencepiece_model_file=path or "", extra_ids=extra_ids)
        self._explicit_path = path

    @property
    def sentencepiece_model_file(self) -> str:
        return self._explicit_path or sentencepiece_model_path()

    def __getstate__(self):
        state = super().__getstate__()
        state["_sentencepiece_model_file"] = self.sentencepiece_model_file
        return state

    def _model_context(self):
        path = self.sentencepiece_model_file
        if self._model is not None and path == self._sentencepiece_model_file:
            return self._model
        self._model = None
        check_model_file(path)
        self._sentencepiece_model_file = path
        try:
            context = super()._model_context()
        except (OSError, tf.errors.OpError) as e:
            raise UserError(f"Could not read the SentencePiece vocabulary {path} ({e}). {_how_to_fix(path)}") from e
        except Exception as e:  # protobuf DecodeError, sentencepiece RuntimeError
            raise UserError(
                f"{path} is not a valid SentencePiece model file ({type(e).__name__}: {e}). "
                f"Expected a .model file written by the SentencePiece trainer. {_how_to_fix(path)}"
            ) from e
        tok = context.tokenizer
        if (tok.pad_id(), tok.eos_id(), tok.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
            self._model = None
            raise UserError(
                f"{path}: SentencePiece ids pad={tok.pad_id()} eos={tok.eos_id()} unk={tok.unk_id()}; "
                f"T5 requires pad={PAD_ID} eos={EOS_ID} unk={UNK_ID} (train with pad_id=0 eos_id=1 unk_id=2 bos_id=-1)."
            )
        return context


_DEFAULT_VOCAB = LazySentencePieceVocabulary()


def get_default_vocabulary() -> seqio.Vocabulary:
    """The shared T5 vocabulary (cc_all.32000 + 100 sentinels) used by every registered task."""
    return _DEFAULT_VOCAB


def output_features(vocab: Optional[seqio.Vocabulary] = None) -> dict:
    """T5 output features: optional 'inputs' and required 'targets', both with EOS appended."""
    vocab = vocab or get_default_vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
    }


def train_sentencepiece(
    texts: Iterable[str],
    output_prefix: str,
    vocab_size: int = 256,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    **trainer_kwargs,
) -> str:
    """Train a T5-convention SentencePiece model in-process (pad=0, eos=1, unk=2, no bos); returns the .model path.

    Single-threaded and unshuffled so the same texts always give the same model; vocab_size is an upper bound.
    """
    import sentencepiece as spm

    options = dict(
        model_prefix=output_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    options.update(trainer_kwargs)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise UserError(f"train_sentencepiece({output_prefix!r}): no non-empty training texts were given.")
    directory = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(directory, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), **options)
    return output_prefix + ".model"
