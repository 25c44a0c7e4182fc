"""Tests for text2text.data: packing, deterministic order, exact iterator resume, host sharding, name errors."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from text2text import data
from text2text.errors import UserError

TASK = 'text2text_test_tiny_task'
TASK_B = 'text2text_test_tiny_task_b'
MIXTURE = 'text2text_test_tiny_mixture'
LENGTHS = {'inputs': 16, 'targets': 8}


def _dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    inputs = [f'in {i} ' + 'x' * (i % 7) for i in range(48)]
    targets = [f't{i}' for i in range(48)]
    return tf.data.Dataset.from_tensor_slices({'inputs': inputs, 'targets': targets})


def _register(name):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    vocab = seqio.ByteVocabulary()
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn, splits=['train', 'validation']),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={'inputs': seqio.Feature(vocab), 'targets': seqio.Feature(vocab)})


@pytest.fixture(scope='module', autouse=True)
def tiny_tasks():
    _register(TASK)
    _register(TASK_B)
    if MIXTURE in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(MIXTURE)
    seqio.MixtureRegistry.add(MIXTURE, [(TASK, 1.0), (TASK_B, 1.0)])
    yield


def _take(ds, n):
    it = ds.as_numpy_iterator()
    return [next(it) for _ in range(n)]


def _train(seed=7, pack=False, name=TASK, **kwargs):
    return data.get_dataset(name, LENGTHS, 'train', batch_size=4, shuffle=True, seed=seed, pack=pack, **kwargs)


def test_unpacked_batches_have_encdec_features():
    batch = _take(_train(), 1)[0]
    assert set(batch) == {'encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                          'decoder_loss_weights'}
    assert batch['encoder_input_tokens'].shape == (4, 16)
    assert batch['decoder_target_tokens'].shape == (4, 8)
    assert batch['encoder_input_tokens'].dtype == np.int32
    # decoder inputs are targets shifted right, starting with 0
    np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:], batch['decoder_target_tokens'][:, :-1])
    assert (batch['decoder_input_tokens'][:, 0] == 0).all()


def test_packing_puts_several_examples_in_a_row():
    batch = _take(_train(pack=True), 1)[0]
    for key in ('encoder_segment_ids', 'encoder_positions', 'decoder_segment_ids', 'decoder_positions'):
        assert key in batch
    assert batch['encoder_segment_ids'].max() >= 2


def test_same_seed_same_order_other_seed_other_order():
    first = _take(_train(seed=3), 3)
    again = _take(_train(seed=3), 3)
    other = _take(_train(seed=4), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a['encoder_input_tokens'], b['encoder_input_tokens'])
    assert any(not np.array_equal(a['encoder_input_tokens'], c['encoder_input_tokens'])
               for a, c in zip(first, other))


def test_iterator_restore_skips_exactly():
    fingerprint = {'task': TASK, 'seed': 5, 'lengths': (16, 8)}
    it = data.DataIterator(lambda: _train(seed=5), fingerprint=fingerprint)
    for _ in range(3):
        next(it)
    state = it.state()
    assert state['batches_consumed'] == 3
    expected = [next(it) for _ in range(2)]
    resumed = data.DataIterator(lambda: _train(seed=5), fingerprint=fingerprint)
    resumed.restore(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got['encoder_input_tokens'], want['encoder_input_tokens'])
    assert resumed.state()['batches_consumed'] == 5


def test_iterator_restore_after_iterating_rewinds_exactly():
    it = data.DataIterator(lambda: _train(seed=5))
    first = [next(it) for _ in range(4)]
    it.restore({'batches_consumed': 2})
    np.testing.assert_array_equal(next(it)['encoder_input_tokens'], first[2]['encoder_input_tokens'])


def test_iterator_restore_rejects_other_fingerprint():
    it = data.DataIterator(lambda: _train(seed=5), fingerprint={'seed': 5})
    with pytest.raises(UserError, match='seed'):
        it.restore({'batches_consumed': 1, 'fingerprint': {'seed': 6}})


def test_host_shards_split_the_global_batch():
    shards = [data.get_dataset(TASK, LENGTHS, 'validation', batch_size=4, shuffle=False, seed=0, pack=False,
                               shard_info=seqio.ShardInfo(index=i, num_shards=2), num_epochs=1) for i in range(2)]
    rows = [np.concatenate([b['encoder_input_tokens'] for b in s.as_numpy_iterator()]) for s in shards]
    assert _take(shards[0], 1)[0]['encoder_input_tokens'].shape[0] == 2
    assert len(rows[0]) + len(rows[1]) == 48
    assert not {r.tobytes() for r in rows[0]} & {r.tobytes() for r in rows[1]}


def test_eval_keeps_final_partial_batch_and_pad_batch():
    batches = list(data.get_dataset(TASK, LENGTHS, 'validation', batch_size=5, shuffle=False, seed=None,
                                    pack=False, num_epochs=1).as_numpy_iterator())
    assert [len(b['encoder_input_tokens']) for b in batches][-1] == 48 % 5
    padded, real = data.pad_batch(batches[-1], 5)
    assert real == 3 and padded['decoder_loss_weights'].shape == (5, 8)
    assert (padded['decoder_loss_weights'][3:] == 0).all()


def test_mixture_builds():
    batch = _take(_train(name=MIXTURE), 1)[0]
    assert batch['encoder_input_tokens'].shape == (4, 16)


def test_unknown_name_lists_close_names():
    with pytest.raises(UserError, match='text2text_test_tiny_task') as info:
        _train(name='text2text_test_tiny_tsak')
    assert 'text2text_test_tiny_tsak' in str(info.value)


def test_batch_size_must_divide_over_hosts():
    with pytest.raises(UserError, match='batch_size 3'):
        data.get_dataset(TASK, LENGTHS, 'train', batch_size=3, shuffle=True, seed=0, pack=False,
                         shard_info=seqio.ShardInfo(index=0, num_shards=2))
