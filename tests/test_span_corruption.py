"""Span corruption and prefix LM: T5's length arithmetic, noise statistics, sentinels, exact reconstruction."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from tasks import span_corruption as sc
from text2text.errors import UserError

VOCAB_SIZE = 32100  # 32000 SentencePiece pieces + 100 sentinels, as in T5


def _corrupt_all(sequences, seed):
    """Noise mask, inputs and targets for each sequence, drawn with seqio's stateless map seeds."""

    @seqio.map_over_dataset(num_seeds=2)
    def corrupt(x, seeds):
        mask = sc.random_spans_noise_mask(tf.size(x["tokens"]), sc.NOISE_DENSITY, seeds)
        inputs, targets = sc.corrupt_spans(x["tokens"], mask, VOCAB_SIZE)
        return {"mask": mask, "inputs": inputs, "targets": targets}

    ds = tf.data.Dataset.from_generator(
        lambda: ({"tokens": s} for s in sequences), output_signature={"tokens": tf.TensorSpec([None], tf.int32)})
    with seqio.map_seed_manager(seed):
        return list(corrupt(ds).as_numpy_iterator())


def _is_sentinel(token):
    return token >= VOCAB_SIZE - 100


def _reconstruct(inputs, targets):
    """Inverse of span corruption: replace each input sentinel by the span that follows it in the targets."""
    spans, current = {}, None
    for token in targets:
        if _is_sentinel(token):
            current = spans.setdefault(int(token), [])
        else:
            current.append(int(token))
    out = []
    for token in inputs:
        out.extend(spans[int(token)] if _is_sentinel(token) else [int(token)])
    return out


def _runs(mask):
    """Lengths of the runs of True in a boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]


@pytest.fixture(scope="module")
def corrupted():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, VOCAB_SIZE - 100, size=rng.integers(20, 600)).astype(np.int32)
                 for _ in range(1000)]
    return sequences, _corrupt_all(sequences, seed=7)


def test_random_spans_helper_matches_t5():
    assert sc.random_spans_helper(512) == (568, 114)
    assert sc.random_spans_helper(inputs_length=512, noise_density=0.15, mean_noise_span_length=3.0,
                                  extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1) == (568, 114)


def test_noise_density_and_mean_span_length(corrupted):
    _, outputs = corrupted
    masks = [o["mask"] for o in outputs]
    density = sum(m.sum() for m in masks) / sum(m.size for m in masks)
    spans = np.concatenate([_runs(m) for m in masks])
    assert abs(density - 0.15) <= 0.02
    assert abs(spans.mean() - 3.0) <= 0.5
    assert not any(m[0] for m in masks)  # spans alternate starting with kept tokens


def test_sentinels_count_down_from_extra_id_0(corrupted):
    _, outputs = corrupted
    for o in outputs:
        input_sentinels = [t for t in o["inputs"] if _is_sentinel(t)]
        target_sentinels = [t for t in o["targets"] if _is_sentinel(t)]
        assert input_sentinels == list(range(VOCAB_SIZE - 1, VOCAB_SIZE - 1 - len(input_sentinels), -1))
        assert target_sentinels[:len(input_sentinels)] == input_sentinels
        assert _is_sentinel(o["targets"][0])
        assert len(_runs(o["mask"])) == len(input_sentinels)


def test_inputs_and_targets_reconstruct_the_original(corrupted):
    sequences, outputs = corrupted
    for tokens, o in zip(sequences, outputs):
        assert _reconstruct(o["inputs"], o["targets"]) == tokens.tolist()


def test_same_seed_same_corruption_and_new_seed_differs(corrupted):
    sequences, outputs = corrupted
    again = _corrupt_all(sequences[:20], seed=7)
    other = _corrupt_all(sequences[:20], seed=8)
    assert all(np.array_equal(a["inputs"], o["inputs"]) for a, o in zip(again, outputs))
    assert not all(np.array_equal(a["mask"], o["mask"]) for a, o in zip(other, outputs))


def _int_task_dataset(preprocessor, documents, sequence_length, seed=3):
    """Run a token preprocessor the way a seqio Task does, on integer 'documents' (vocab of VOCAB_SIZE)."""
    vocab = seqio.PassThroughVocabulary(size=VOCAB_SIZE)
    features = {"inputs": seqio.Feature(vocab, add_eos=True, required=False), "targets": seqio.Feature(vocab)}
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": d} for d in documents), output_signature={"targets": tf.TensorSpec([None], tf.int32)})
    with seqio.map_seed_manager(seed):
        return list(preprocessor(ds, sequence_length=sequence_length, output_features=features).as_numpy_iterator())


def test_span_corruption_preprocessor_concatenates_and_splits_to_raw_length():
    rng = np.random.default_rng(1)
    documents = [rng.integers(3, 1000, size=n).astype(np.int32) for n in rng.integers(10, 300, size=40)]
    lengths = {"inputs": 64, "targets": 32}
    tokens_length, targets_length = sc.random_spans_helper(64)
    examples = _int_task_dataset(sc.span_corruption, documents, lengths)
    pieces = [_reconstruct(e["inputs"], e["targets"]) for e in examples]
    assert [len(p) for p in pieces[:-1]] == [tokens_length] * (len(pieces) - 1)
    assert sum(pieces, []) == np.concatenate(documents).tolist()
    assert all(len(e["inputs"]) <= 63 and len(e["targets"]) <= targets_length - 1 for e in examples)


def test_span_corruption_rejects_too_short_targets():
    with pytest.raises(UserError, match=r"sequence_length\['targets'\] >= 114"):
        _int_task_dataset(sc.span_corruption, [np.arange(3, 50, dtype=np.int32)], {"inputs": 512, "targets": 64})


def test_prefix_lm_splits_each_piece_into_prefix_and_rest():
    rng = np.random.default_rng(2)
    documents = [rng.integers(3, 1000, size=n).astype(np.int32) for n in (5, 40, 130, 2)]
    examples = _int_task_dataset(sc.prefix_lm, documents, {"inputs": 32, "targets": 32})
    assert all(len(e["inputs"]) >= 1 and len(e["targets"]) >= 1 for e in examples)
    assert all(len(e["inputs"]) + len(e["targets"]) <= 31 for e in examples)
    assert np.concatenate([np.concatenate([e["inputs"], e["targets"]]) for e in examples]).tolist() == \
        np.concatenate(documents).tolist()
