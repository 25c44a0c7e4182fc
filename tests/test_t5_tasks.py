"""The `t5` library's task names beyond the paper's benchmarks: each is registered and yields t5's strings/tokens.

Expected values are written from t5 0.9.4's behaviour (tasks.py, preprocessors.py, postprocessors.py,
evaluation/metrics.py); everything runs on tfds mock data or hand-written rows with a test-trained vocabulary.
"""
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks  # noqa: F401  (registers every task)
from tasks import c4, metrics, preprocessors, prefix_lm_objective, sentinels, wnli
from tasks_fixtures import skipping_invalid_examples, spm_model, task_examples, text  # noqa: F401  (pytest fixture)
from text2text.errors import UserError

EOS = 1
LENGTHS = {"inputs": 64, "targets": 32}

T5_TASK_NAMES = """
c4_v020_unsupervised c4_noclean_v020_unsupervised c4_realnewslike_v020_unsupervised c4_webtextlike_v020_unsupervised
c4_v220_span_corruption c4_v220_iid_denoising c4_v220_prefix_lm c4_v220_full_lm
c4_prefix_lm_objective_encoder_decoder_architecture c4_prefix_lm_objective_decoder_architecture
wikipedia_20190301.en_v003_unsupervised cnn_dailymail_v002 dpr_v001_simple dpr_v001_simple_1_sentinel
glue_ax_v002 glue_cola_v002 glue_mnli_matched_v002 glue_mnli_mismatched_v002 glue_mnli_v002 glue_mrpc_v002
glue_qnli_v002 glue_qqp_v002 glue_rte_v002 glue_sst2_v002 glue_stsb_v002 glue_wnli_v002 glue_wnli_v002_simple_eval
squad_v010 squad_v010_allanswers squad_v010_allanswers_span squad_v010_context_free
super_glue_axb_v102 super_glue_axb_v102_1_sentinel super_glue_axg_v102 super_glue_axg_v102_1_sentinel
super_glue_boolq_v102 super_glue_boolq_v102_1_sentinel super_glue_cb_v102 super_glue_cb_v102_1_sentinel
super_glue_copa_v102 super_glue_copa_v102_1_sentinel super_glue_multirc_v102 super_glue_multirc_v102_1_sentinel
super_glue_record_v102 super_glue_record_v102_1_sentinel super_glue_rte_v102 super_glue_rte_v102_1_sentinel
super_glue_wic_v102 super_glue_wic_v102_1_sentinel super_glue_wsc_v102_simple_1_sentinel_eval
super_glue_wsc_v102_simple_1_sentinel_train super_glue_wsc_v102_simple_eval super_glue_wsc_v102_simple_train
trivia_qa_v010 wmt14_ende_v003 wmt14_enfr_v003 wmt15_enfr_v003 wmt16_enro_v003 wmt19_ende_v003 wmt_t2t_ende_v003
""".split()


def test_every_t5_task_name_is_registered():
    assert len(T5_TASK_NAMES) == 60  # t5 0.9.4 registers 60 tasks
    assert set(T5_TASK_NAMES) <= set(seqio.TaskRegistry.names())
    assert len(sentinels.TASK_NAMES) == 12


# ----------------------------------------------------------------------------------------------- SQuAD
def squad_row(context, question="q", answers=("a",)):
    return {"id": "x", "title": "t", "context": context, "question": question,
            "answers": {"text": list(answers), "answer_start": [0] * len(answers)}}


def test_pad_punctuation_is_posix_ascii_punct():
    pad = lambda s: preprocessors.pad_punctuation(tf.constant(s)).numpy().decode()  # noqa: E731
    assert pad("–") == "–"  # non-ASCII punctuation is not padded (t5 since 2022)
    assert pad("café_au") == "café _ au"  # '_' is ASCII punctuation, 'é' a plain character
    assert pad("a,b$[c]") == "a , b $ [ c ] "


def test_squad_variants_inputs_targets(spm_model):
    rows = [squad_row("–", "", ["–"]), squad_row("Tom (born 1990) lives in Paris.", "Where does  Tom live?",
                                                   ["Paris", "in Paris."])]
    dash, tom = task_examples("squad_v010_allanswers", "validation", rows, lengths=LENGTHS)
    assert text(dash["inputs_pretokenized"]) == "question: context: –"
    assert text(dash["targets_pretokenized"]) == "–"
    _, tom_free = task_examples("squad_v010_context_free", "validation", rows, lengths=LENGTHS)
    assert text(tom_free["inputs_pretokenized"]) == "squad trivia question: Where does Tom live ? "
    assert text(tom_free["targets_pretokenized"]) == "Paris"
    _, tom_v010 = task_examples("squad_v010", "validation", rows, lengths=LENGTHS)
    assert text(tom_v010["inputs_pretokenized"]) == text(tom["inputs_pretokenized"])
    v010 = seqio.get_mixture_or_task("squad_v010")
    assert v010.postprocessor is None
    assert v010.metric_fns[0](["the big cat"], ["big cat"]) == {"em": 100.0, "f1": 100.0}


def test_squad_span_targets_count_empty_space_tokens(spm_model):
    rows = [
        squad_row("a , b and c d.", answers=["c d"]),  # words: a '' '' b and c d '' '' '' -> c at 5
        squad_row("The answer is at the end", answers=["end"]),  # last possible start: never found (as t5)
        squad_row("x", answers=["x"]),  # the answer is the whole context: not found either
        squad_row("Tom (born 1990) lives in Paris.", answers=["Paris"]),
        squad_row("no match here", answers=["absent"]),
    ]
    examples = task_examples("squad_v010_allanswers_span", "validation", rows, lengths=LENGTHS)
    assert [text(ex["targets_pretokenized"]) for ex in examples] == ["start: 5 end: 6", "start: 9 end: 9"]
    assert text(examples[0]["inputs_pretokenized"]) == "question: q context: a , b and c d . "
    task = seqio.get_mixture_or_task("squad_v010_allanswers_span")
    assert task.postprocess_fn("start: 5 end: 6", example=examples[0], is_target=True) == {
        "answers": ["c d"], "context": "a , b and c d . "}


def test_span_squad_metric():
    targets = [{"answers": ["c d", "x"], "context": "a , b and c d ."},
               {"answers": ["é"], "context": "café é naïve"}]
    # Python's \W keeps 'é' in words and split() drops empty words: 'c d' is words 3..4 here.
    assert metrics.span_squad(targets, ["start: 3 end: 4", "start: 1 end: 1"]) == {"em": 100.0, "f1": 100.0}
    assert metrics.span_squad(targets[:1], ["start: 0 end: 100"]) == {"em": 0.0, "f1": pytest.approx(200 / 3)}
    for garbage in ("1 2 3", "", "start: x end: 2"):
        assert metrics.span_squad(targets[:1], [garbage]) == {"em": 0.0, "f1": 0.0}


# ----------------------------------------------------------------------------------------------- TriviaQA
def trivia_row(question, aliases, wiki=(), search=()):
    return {
        "question": question, "question_id": "q", "question_source": "s",
        "answer": {"aliases": list(aliases), "normalized_aliases": list(aliases), "matched_wiki_entity_name": "",
                   "normalized_matched_wiki_entity_name": "", "normalized_value": "", "type": "", "value": ""},
        "entity_pages": {"doc_source": ["d"] * len(wiki), "filename": ["f"] * len(wiki), "title": ["t"] * len(wiki),
                         "wiki_context": list(wiki)},
        "search_results": {"description": ["d"] * len(search), "filename": ["f"] * len(search),
                           "rank": [1] * len(search), "search_context": list(search), "title": ["t"] * len(search),
                           "url": ["u"] * len(search)},
    }


def test_trivia_qa_pairs_every_context_with_every_found_answer(spm_model):
    rows = [trivia_row("Who was Tom?", ["tom smith", "tom"], wiki=["Tom Smith was a cat.", "Nothing here."],
                       search=["TOM the cat", "tomato"]),
            trivia_row("Q?", ["x"], search=["no match"])]
    examples = task_examples("trivia_qa_v010", "train", rows, lengths={"inputs": 512, "targets": 16})
    vocab = seqio.get_mixture_or_task("trivia_qa_v010").output_features["targets"].vocabulary
    decoded = [(vocab.decode(ex["inputs"].tolist()), vocab.decode(ex["targets"].tolist())) for ex in examples]
    assert decoded == [
        ("question: Who was Tom ? context: Tom Smith was a cat .", "tom smith"),
        ("question: Who was Tom ? context: Tom Smith was a cat .", "tom"),
        ("question: Who was Tom ? context: TOM the cat", "tom"),
        ("question: Who was Tom ? context: tomato", "tom"),
    ]
    assert set(examples[0]) == {"inputs", "targets"}  # t5's truncation step keeps only the token features


def test_trivia_qa_truncation_keeps_the_answer(spm_model):
    filler = "Some words about nothing at all. " * 20
    rows = [trivia_row("What, again?", ["again"], wiki=[filler + " again " + filler, "end " * 60 + "again"])]
    window = 32
    examples = task_examples("trivia_qa_v010", "train", rows, lengths={"inputs": window, "targets": 8})
    vocab = seqio.get_mixture_or_task("trivia_qa_v010").output_features["targets"].vocabulary
    answer = vocab.encode("again")
    assert len(examples) == 2
    for ex in examples:
        inputs = ex["inputs"].tolist()
        assert len(inputs) == window and inputs[-1] == EOS  # window tokens, the last replaced by EOS
        assert any(inputs[i:i + len(answer)] == answer for i in range(window))
    paris = [trivia_row("Where?", ["paris"], wiki=[filler + "Paris is in France."])]
    # The text match ignores case, the token match does not: kept whole, dropped when it must be cut.
    assert len(task_examples("trivia_qa_v010", "train", paris, lengths={"inputs": 4096, "targets": 8})) == 1
    assert task_examples("trivia_qa_v010", "train", paris, lengths={"inputs": window, "targets": 8}) == []
    # An answer longer than the window cannot be kept in it: dropped (t5 fails on it).
    long_answer = [trivia_row("Q?", ["some words about nothing at all"], wiki=[filler])]
    assert task_examples("trivia_qa_v010", "train", long_answer, lengths={"inputs": 3, "targets": 8}) == []

# ----------------------------------------------------------------------------------------------- WNLI
@pytest.mark.parametrize("premise,hypothesis,inputs,targets", [
    ("The fish ate the worm. It was tasty.", "The worm was tasty.",
     "wsc: The fish ate the worm. *It* was tasty.", "The worm"),
    ("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.", "The carrot had a hole.",
     "wsc: I stuck a pin through a carrot. When I pulled the pin out, *it* had a hole.", "The carrot"),
    ("Bob paid for Charlie's college education. He is very generous.", "Charlie is very generous.",
     "wsc: Bob paid for Charlie's college education. *He* is very generous.", "Charlie"),
    ("Lily spoke to Donna, breaking her silence.", "Lily spoke to Donna, breaking Lily's silence.",
     "wsc: Lily spoke to Donna, breaking *her* silence.", "Lily"),
    ("A U.S. firm sued it. It lost.", "The U.S. firm lost.", "wsc: A U.S. firm sued it. *It* lost.", "The U.S. firm"),
])
def test_wnli_simple_strings(premise, hypothesis, inputs, targets):
    assert wnli.wnli_inputs_and_targets(premise, hypothesis) == (inputs, targets)


def test_wnli_simple_task(spm_model):
    rows = [{"sentence1": "The man couldn't lift his son because he was so weak.", "sentence2": "The son was so weak.",
             "label": 0, "idx": 7}]
    [ex] = task_examples(wnli.TASK_NAME, "validation", rows, lengths=LENGTHS)
    assert text(ex["inputs_pretokenized"]) == "wsc: The man couldn't lift his son because *he* was so weak."
    assert text(ex["targets_pretokenized"]) == "The son"
    assert (int(ex["label"]), int(ex["idx"]), text(ex["premise"])) == (0, 7, rows[0]["sentence1"])
    task = seqio.get_mixture_or_task(wnli.TASK_NAME)
    assert task.postprocess_fn("the son", example=ex, is_target=False) == 1
    assert task.postprocess_fn("x", example=ex, is_target=True) == 0
    assert task.splits == ("validation", "test")


@pytest.mark.parametrize("premise,hypothesis", [("No pronoun here.", "Nothing."), ("It  rained.  Then it stopped.",
                                                                                     "The rain stopped.")])
def test_wnli_simple_unusable_rows_raise(premise, hypothesis):
    with pytest.raises(ValueError, match="WNLI simple"):
        wnli.wnli_inputs_and_targets(premise, hypothesis)


# ----------------------------------------------------------------------------------------------- C4 / Wikipedia
C4_ROWS = [{"text": t, "timestamp": "", "url": "", "content-length": "", "content-type": ""}
           for t in ["Tom sat on the mat.", "", " ".join(f"w{i} cat dog" for i in range(30)), "A big red dog."]]


def test_unsupervised_tasks_yield_whole_documents(spm_model):
    vocab = seqio.get_mixture_or_task("c4_v020_unsupervised").output_features["targets"].vocabulary
    for name in ("c4_v020_unsupervised", "c4_noclean_v020_unsupervised", "c4_realnewslike_v020_unsupervised",
                 "c4_webtextlike_v020_unsupervised"):
        examples = task_examples(name, "train", C4_ROWS, lengths=LENGTHS)
        assert len(examples) == len(C4_ROWS)
        for row, ex in zip(C4_ROWS, examples):
            assert ex["inputs"].tolist() == [EOS] and text(ex["inputs_pretokenized"]) == ""
            assert ex["targets"].tolist() == vocab.encode(row["text"])[:LENGTHS["targets"] - 1] + [EOS]
    assert seqio.get_mixture_or_task("c4_realnewslike_v020_unsupervised").source.tfds_dataset.name == \
        "c4/realnewslike:2.2.0"
    wiki = task_examples("wikipedia_20190301.en_v003_unsupervised", "train",
                         [{"text": "Tom sat.", "title": "T"}], lengths=LENGTHS)
    assert [ex["targets"].tolist() for ex in wiki] == [vocab.encode("Tom sat.") + [EOS]]


def _uncorrupt(inputs, targets, vocab_size):
    """Original tokens from span-corrupted (inputs, targets) without EOS: each sentinel takes its targets span."""
    spans, current = {}, None
    for token in targets:
        if token >= vocab_size - 100:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in inputs:
        out.extend(spans.get(token, []) if token >= vocab_size - 100 else [token])
    return out


def test_c4_v220_objectives_reassemble_to_the_concatenated_text(spm_model):
    vocab = seqio.get_mixture_or_task("c4_v220_iid_denoising").output_features["targets"].vocabulary
    documents = [t for t in (vocab.encode(r["text"]) for r in C4_ROWS) if t]
    concatenated = sum(documents, [])
    for name in ("c4_v220_span_corruption", "c4_v220_iid_denoising"):
        examples = task_examples(name, "train", C4_ROWS, lengths=LENGTHS)
        assert all(ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS for ex in examples)
        pieces = [_uncorrupt(ex["inputs"][:-1].tolist(), ex["targets"][:-1].tolist(), vocab.vocab_size)
                  for ex in examples]
        assert sum(pieces, []) == concatenated, name
    prefix = task_examples("c4_v220_prefix_lm", "train", C4_ROWS, lengths={"inputs": 64, "targets": 64})
    # prefix LM does not concatenate documents: pieces of at most inputs length - 1 tokens per document
    assert sum((ex["inputs"][:-1].tolist() + ex["targets"][:-1].tolist() for ex in prefix), []) == concatenated
    assert all(len(ex["inputs"]) >= 2 for ex in prefix)  # at least one prefix token when the piece has two


def test_c4_v220_full_lm_cuts_eos_separated_documents(spm_model):
    vocab = seqio.get_mixture_or_task("c4_v220_full_lm").output_features["targets"].vocabulary
    stream = sum((vocab.encode(r["text"]) + [EOS] for r in C4_ROWS if r["text"]), [])
    examples = task_examples("c4_v220_full_lm", "train", C4_ROWS, lengths={"targets": 16})
    assert [ex["targets"].tolist() for ex in examples] == [stream[i:i + 16] for i in range(0, len(stream), 16)]
    assert set(examples[0]) == {"targets"}


def test_prefix_lm_objective_tasks(spm_model):
    length = 16
    names = prefix_lm_objective.ENCODER_DECODER_FEATURES + ("targets",)
    packed = task_examples(prefix_lm_objective.ENCODER_DECODER_TASK, "train", C4_ROWS,
                           lengths={name: length for name in names})
    vocab = seqio.get_mixture_or_task("c4_v220_full_lm").output_features["targets"].vocabulary
    stream = sum((vocab.encode(r["text"]) + [EOS] for r in C4_ROWS if r["text"]), [])
    pieces = [stream[i:i + length] for i in range(0, len(stream), length)]
    pieces = [p + [0] * (length - len(p)) for p in pieces]
    assert len(packed) == len(pieces) // 2  # an unpaired last piece is dropped
    for i, ex in enumerate(packed):
        first, second = pieces[2 * i], pieces[2 * i + 1]
        split = int(np.sum(ex["encoder_segment_ids"] == 1))
        assert 1 <= split < length
        assert ex["encoder_input_tokens"].tolist() == first[:split] + second[:length - split]
        assert ex["decoder_target_tokens"].tolist() == first[split:] + second[length - split:]
        assert ex["decoder_positions"].tolist() == list(range(length - split)) + list(range(split))
        assert ex["encoder_positions"].tolist() == list(range(split)) + list(range(length - split))
        assert ex["decoder_input_tokens"][0] == 0 and ex["decoder_input_tokens"][length - split] == 0
    decoder = task_examples(prefix_lm_objective.DECODER_TASK, "train", C4_ROWS,
                            lengths={n: length for n in prefix_lm_objective.DECODER_FEATURES + ("targets",)})
    assert [ex["decoder_target_tokens"].tolist() for ex in decoder] == pieces
    for ex in decoder:
        split = int(np.sum(ex["decoder_causal_attention"])) - 1
        assert ex["decoder_loss_weights"].tolist() == [
            int(i >= split and token != 0) for i, token in enumerate(ex["decoder_target_tokens"])]
        assert ex["decoder_input_tokens"].tolist() == [0] + ex["decoder_target_tokens"].tolist()[:-1]
    with pytest.raises(UserError, match="one even length"):
        prefix_lm_objective.pack_decoder_only(tf.data.Dataset.range(1), {"a": 15, "b": 15})


def test_c4_v220_span_corruption_is_the_readme_cache_task():
    task = seqio.get_mixture_or_task("c4_v220_span_corruption")
    assert task.source.tfds_dataset.name == c4.C4_V220_TFDS_NAME == "c4/en:2.2.0"


# ----------------------------------------------------------------------------------------------- sentinels, WMT19
def test_sentinel_variant_adds_and_strips_extra_id_0(spm_model):
    rows = [{"question": "is it", "passage": "yes it is", "label": 1, "idx": 0}]
    [plain] = task_examples("super_glue_boolq_v102", "validation", rows, lengths=LENGTHS)
    [ex] = task_examples("super_glue_boolq_v102_1_sentinel", "validation", rows, lengths=LENGTHS)
    task = seqio.get_mixture_or_task("super_glue_boolq_v102_1_sentinel")
    sentinel = task.output_features["targets"].vocabulary.vocab_size - 1
    assert ex["inputs"].tolist() == plain["inputs"][:-1].tolist() + [sentinel, EOS]
    assert ex["targets"].tolist() == [sentinel] + plain["targets"].tolist()
    assert task.postprocess_fn("<extra_id_0> True", example=ex, is_target=False) == 1
    assert "super_glue_wsc_v102_simple_1_sentinel_train" in sentinels.TASK_NAMES


def test_wmt19_ende(spm_model):
    [ex] = task_examples("wmt19_ende_v003", "validation", [{"de": "Das ist gut.", "en": "That is good."}])
    assert text(ex["inputs_pretokenized"]) == "translate English to German: That is good."
    assert text(ex["targets_pretokenized"]) == "Das ist gut."


DPR_ROWS = [{"sentence": "Bob asked Tom if he can lend money.", "pronoun": "he", "candidates": ["Bob", "Tom"],
             "label": 1},
            {"sentence": "Bob asked Tom for money.", "pronoun": "he", "candidates": ["Bob", "Tom"], "label": 0}]


@pytest.mark.parametrize("name", ["super_glue_record_v102_1_sentinel", "super_glue_multirc_v102_1_sentinel",
                                  "dpr_v001_simple_1_sentinel", "c4_v220_iid_denoising",
                                  "wikipedia_20190301.en_v003_unsupervised", "squad_v010_context_free"])
def test_new_tasks_under_tfds_mock_data(spm_model, name):
    if name.startswith("dpr_"):  # a random mock row's pronoun is not in its sentence: a valid and an invalid row
        with skipping_invalid_examples("dpr") as skipped:
            examples = task_examples(name, "train", DPR_ROWS, lengths=LENGTHS)
        assert skipped() == 1
        assert [text(ex["inputs_pretokenized"]) for ex in examples] == ["wsc: Bob asked Tom if *he* can lend money."]
    else:
        examples = task_examples(name, "train", num_examples=2, lengths=LENGTHS)
    sentinel = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary.vocab_size - 1
    assert examples
    for ex in examples:
        assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS
        assert 0 < len(ex["inputs"]) <= LENGTHS["inputs"] and 0 < len(ex["targets"]) <= LENGTHS["targets"]
        if "sentinel" in name:
            assert ex["inputs"][-2] == sentinel and ex["targets"][0] == sentinel
