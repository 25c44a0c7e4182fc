"""Prompt-based learning: templates, verbalizers, rank classification, demonstrations, multi-template mixtures."""
import flax
import jax
import numpy as np
import pytest
import seqio

from tasks import prompting, vocab
from tasks.prompting import Template, Verbalizer
from tasks_fixtures import spm_model  # noqa: F401
from text2text import evaluation
from text2text.config import get_config
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel

LENGTHS = {'inputs': 32, 'targets': 8}
TEMPLATE = Template('{sentence} It was <extra_id_0>.')
VERBALIZER = Verbalizer({'pos': 'big', 'neg': 'small', 'neu': 'not red'})  # 'not red' spans several tokens
ROWS = [{'sentence': s, 'label': l} for s, l in [
    ('the cat sat on the mat', 'pos'), ('a dog is not fun', 'neg'), ('the bird was blue', 'neu'),
    ('Tom asked if she could lend some money', 'pos'), ('the house is small', 'neg'), ('it was red', 'neu'),
    ('Bob sat on a big mat', 'pos')]]
MODEL = EncoderDecoderModel(get_config('tiny', vocab_size=512))


@pytest.fixture(scope='module')
def params():
    variables = MODEL.init_variables(jax.random.PRNGKey(0), {'inputs': (1, 32), 'targets': (1, 8)})
    return flax.core.meta.unbox(variables)['params']


def test_template_and_verbalizer_formatting():
    assert TEMPLATE.format_inputs(ROWS[0]) == 'the cat sat on the mat It was <extra_id_0>.'
    assert TEMPLATE.format_targets('not red') == '<extra_id_0> not red <extra_id_1>'
    assert TEMPLATE.filled(ROWS[0], 'big') == 'the cat sat on the mat It was big.'
    examples = prompting.rank_classification_examples(ROWS[:2], TEMPLATE, VERBALIZER)
    assert [(e['idx'], e['label'], e['is_correct']) for e in examples] == [
        (0, 0, 1), (0, 1, 0), (0, 2, 0), (1, 0, 0), (1, 1, 1), (1, 2, 0)]
    with pytest.raises(UserError, match="uses field 'sentence'"):
        TEMPLATE.format_inputs({'text': 'x'})
    with pytest.raises(UserError, match="label 'maybe' is not a verbalizer class"):
        VERBALIZER.word('maybe')


def test_sentinel_and_multi_token_label_words_tokenize(spm_model):
    ids = prompting.label_token_ids(['<extra_id_0>', 'not red'])
    assert ids[0] == (vocab.get_default_vocabulary().vocab_size - 1,)  # T5: <extra_id_0> is the last id
    assert len(ids[1]) >= 2


def _direct_log_likelihood(params, inputs: str, target: str) -> float:
    """Sum of log p(target token) from the teacher-forced logits (independent of score_batch)."""
    v = vocab.get_default_vocabulary()
    enc = np.zeros((1, LENGTHS['inputs']), np.int32)
    ids = list(v.encode(inputs)) + [1]
    enc[0, :len(ids)] = ids
    tgt = list(v.encode(target)) + [1]
    dec_in = np.zeros((1, LENGTHS['targets']), np.int32)
    dec_in[0, 1:len(tgt)] = tgt[:-1]
    logits = _LOGITS(params, enc, dec_in)[0]
    log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    return float(sum(log_probs[i, t] for i, t in enumerate(tgt)))


_LOGITS = jax.jit(lambda p, enc, dec: MODEL.module.apply({'params': p}, enc, dec, enable_dropout=False))


def test_rank_classification_picks_the_highest_log_likelihood(spm_model, params):
    inputs = [TEMPLATE.format_inputs(r) for r in ROWS[:3]]
    targets = [TEMPLATE.format_targets(w) for _, w in VERBALIZER.words]
    predicted, scores = prompting.rank_classify(MODEL, params, inputs, targets, LENGTHS, batch_size=4)
    assert scores.shape == (3, 3)
    direct = np.array([[_direct_log_likelihood(params, x, t) for t in targets] for x in inputs])
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(predicted, direct.argmax(axis=1))
    assert np.ptp(scores, axis=1).min() > 1e-3  # the classes are really told apart
    lengths = np.array([len(vocab.get_default_vocabulary().encode(t)) + 1 for t in targets])
    normalised, _ = prompting.rank_classify(MODEL, params, inputs, targets, LENGTHS, batch_size=4,
                                            length_normalize=True)
    np.testing.assert_array_equal(normalised, (direct / lengths).argmax(axis=1))


def test_seqio_rank_classification_task_matches_direct_ranking(spm_model, params):
    prompting.register_rank_classification_task('peft_test_rank', {'validation': ROWS}, TEMPLATE, VERBALIZER)
    results = evaluation.evaluate(MODEL, params, 'peft_test_rank', LENGTHS, split='validation', batch_size=8)
    inputs = [TEMPLATE.format_inputs(r) for r in ROWS]
    targets = [TEMPLATE.format_targets(w) for _, w in VERBALIZER.words]
    predicted, _ = prompting.rank_classify(MODEL, params, inputs, targets, LENGTHS, batch_size=8)
    gold = [VERBALIZER.index(r['label']) for r in ROWS]
    accuracy = 100.0 * np.mean(predicted == np.array(gold))
    assert results['peft_test_rank']['accuracy'] == pytest.approx(accuracy)
    assert 0.0 <= results['peft_test_rank']['macro_f1'] <= 100.0
    metric = prompting.rank_classification_metric(3)
    assert metric([(0, 0, 1, 2), (0, 1, 0, 3), (0, 2, 0, 4), (1, 0, 0, 2), (1, 1, 1, 3), (1, 2, 0, 4)],
                  [-1.0, -2.0, -3.0, -1.0, -2.0, -0.5]) == {'accuracy': 50.0, 'macro_f1': pytest.approx(100 / 3)}


def test_demonstrations_are_seeded_per_class_and_exclude_the_query():
    train = ROWS
    out, template = prompting.add_demonstrations(ROWS[:3], train, TEMPLATE, VERBALIZER, k=1, seed=7)
    again, _ = prompting.add_demonstrations(ROWS[:3], train, TEMPLATE, VERBALIZER, k=1, seed=7)
    other, _ = prompting.add_demonstrations(ROWS[:3], train, TEMPLATE, VERBALIZER, k=1, seed=8)
    assert out == again and out != other
    for example in out:
        text = template.format_inputs(example)
        assert text.count('<extra_id_0>') == 1
        assert text == f"{TEMPLATE.format_inputs(example)} {example['demonstrations']}"  # query first (LM-BFF)
        demos = example['demonstrations']
        assert sum(demos.count(f'It was {w}.') for w in ('big', 'small', 'not red')) == 3
        assert TEMPLATE.filled(example, VERBALIZER.word(example['label'])) not in demos
    with pytest.raises(UserError, match="class 'pos' has 2 training examples, fewer than k=4"):  # 3 minus the query
        prompting.add_demonstrations(ROWS[:1], train, TEMPLATE, VERBALIZER, k=4)


def test_multi_template_mixture_holds_out_a_task_for_zero_shot_eval(spm_model):
    topic = Verbalizer({'animal': 'cat', 'place': 'house'})
    topic_rows = [{'sentence': s, 'label': l} for s, l in [('a dog sat', 'animal'), ('paris is big', 'place')]]
    datasets = {
        'sent': prompting.PromptedDataset({'train': ROWS}, [TEMPLATE, Template('Review: {sentence} <extra_id_0>')],
                                          VERBALIZER),
        'topic': prompting.PromptedDataset({'validation': topic_rows}, [Template('{sentence} is about <extra_id_0>')],
                                           topic),
    }
    names = prompting.register_multi_template_mixture('peft_mt', datasets, held_out=['topic'])
    assert names == {'mixture': ['peft_mt'], 'train': ['peft_mt_sent_t0', 'peft_mt_sent_t1'],
                     'held_out': ['peft_mt_topic_t0_rank']}
    mixture = seqio.get_mixture_or_task('peft_mt')
    assert sorted(t.name for t in mixture.tasks) == names['train']
    held_out = seqio.get_mixture_or_task('peft_mt_topic_t0_rank')
    examples = list(held_out.get_dataset(LENGTHS, split='validation', shuffle=False).as_numpy_iterator())
    assert [(int(e['idx']), int(e['label']), int(e['is_correct'])) for e in examples] == [
        (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1)]
    indexed = prompting.register_prompted_task('peft_indexed', {'train': ROWS}, TEMPLATE, VERBALIZER, task_index=3)
    first = next(indexed.get_dataset(LENGTHS, split='train', shuffle=False).as_numpy_iterator())
    assert first['inputs'][0] == 3 and first['inputs'][-1] == 1
    assert vocab.get_default_vocabulary().decode(first['targets'].tolist()) == '<extra_id_0> big <extra_id_1>'
