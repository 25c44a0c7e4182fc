"""Vocabulary: lazy path resolution (env / gin), clear errors offline or for bad files, sentinel ids, trainer."""
import gin
import pytest
import sentencepiece as spm

from tasks import vocab
from tasks_fixtures import spm_model, tiny_corpus  # noqa: F401  (pytest fixture)
from text2text.errors import UserError


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(vocab.ENV_VAR, raising=False)
    gin.clear_config()
    yield
    gin.clear_config()


def test_default_path_offline_gives_download_instructions(no_override, monkeypatch):
    monkeypatch.setattr(vocab, "_gcs_reachable", lambda timeout=3.0: False)
    lazy = vocab.LazySentencePieceVocabulary()
    assert lazy.sentencepiece_model_file == vocab.DEFAULT_SPM_PATH
    with pytest.raises(UserError) as err:
        _ = lazy.vocab_size
    message = str(err.value)
    assert "gsutil cp gs://t5-data/vocabs/cc_all.32000/sentencepiece.model" in message
    assert vocab.ENV_VAR in message and "sentencepiece_model_path.path" in message


def test_missing_local_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.model")
    with pytest.raises(UserError, match="not found.*nope.model"):
        vocab.LazySentencePieceVocabulary(missing).encode("hi")


def test_non_sentencepiece_file_is_named(tmp_path):
    bad = tmp_path / "notes.model"
    bad.write_text("this is not a sentencepiece model\n" * 3)
    with pytest.raises(UserError, match="notes.model is not a valid SentencePiece model"):
        _ = vocab.LazySentencePieceVocabulary(str(bad)).vocab_size


def test_model_with_non_t5_special_ids_is_rejected(tmp_path):
    prefix = str(tmp_path / "wrong_ids")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(tiny_corpus()), model_prefix=prefix, vocab_size=100,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)  # unk=0 bos=1 eos=2
    with pytest.raises(UserError, match="pad=0 eos=1 unk=2"):
        _ = vocab.LazySentencePieceVocabulary(prefix + ".model").vocab_size


def test_env_var_then_gin_override_the_lazy_default(spm_model, tmp_path):
    default = vocab.get_default_vocabulary()
    assert default.sentencepiece_model_file == spm_model
    base = spm.SentencePieceProcessor(model_file=spm_model).get_piece_size()
    assert default.vocab_size == base + 100
    other = vocab.train_sentencepiece(tiny_corpus()[:300], str(tmp_path / "other"), vocab_size=120)
    try:
        gin.bind_parameter("sentencepiece_model_path.path", other)
        assert default.sentencepiece_model_file == other
        assert default.vocab_size == spm.SentencePieceProcessor(model_file=other).get_piece_size() + 100
    finally:
        gin.clear_config()
    assert default.vocab_size == base + 100


def test_sentinels_count_down_from_the_last_id(spm_model):
    v = vocab.get_default_vocabulary()
    assert v.encode("<extra_id_0>") == [v.vocab_size - 1]
    assert v.tokenizer.piece_to_id("▁<extra_id_99>") == v.vocab_size - 100
    assert (v.tokenizer.pad_id(), v.eos_id, v.unk_id, v.bos_id) == (0, 1, 2, -1)
    assert v.decode(v.encode("Tom asked Bob.")) == "Tom asked Bob."


def test_train_sentencepiece_is_deterministic(tmp_path):
    texts = tiny_corpus()[:400]
    a = vocab.train_sentencepiece(texts, str(tmp_path / "a"), vocab_size=150)
    b = vocab.train_sentencepiece(texts, str(tmp_path / "b"), vocab_size=150)
    pa, pb = spm.SentencePieceProcessor(model_file=a), spm.SentencePieceProcessor(model_file=b)
    pieces = [[m.id_to_piece(i) for i in range(m.get_piece_size())] for m in (pa, pb)]
    assert pieces[0] == pieces[1]
    assert (pa.pad_id(), pa.eos_id(), pa.unk_id(), pa.bos_id()) == (0, 1, 2, -1)
    with pytest.raises(UserError, match="no non-empty training texts"):
        vocab.train_sentencepiece(["", "  "], str(tmp_path / "c"))


def test_output_features_append_eos():
    features = vocab.output_features()
    assert features["inputs"].add_eos and features["targets"].add_eos
    assert not features["inputs"].required and features["targets"].required
    assert features["inputs"].vocabulary is vocab.get_default_vocabulary()
