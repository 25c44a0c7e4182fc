"""Bad input through the command line: each case ends in one `error: ...` line naming the file/line/key and
what was expected, exit code 2 and no traceback (a traceback only with --debug). Most fail before any compile."""

import errno
import os
import shutil
import subprocess
import sys
import textwrap

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from jax.experimental.compilation_cache import compilation_cache

from tasks_fixtures import spm_model  # noqa: F401
from text2text import checkpoints, config, launch, models, optim, trainer
from text2text.train_state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "bad_input_copy"
PREFIXED_TASK = "bad_input_prefixed"
VOCAB_SIZE = 260
LENGTHS = {"inputs": 16, "targets": 8}


def _copy_source(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": [f"copy {i}" for i in range(16)],
                                               "targets": [f"{i}" for i in range(16)]})


def _exact_match(targets, predictions):
    return {"exact_match": float(np.mean([t == p for t, p in zip(targets, predictions)]))}


@seqio.map_over_dataset
def _long_prefix(x):
    return {"inputs": tf.strings.join(["please summarize the following long document carefully: ", x["inputs"]]),
            "targets": x["targets"]}


def _register(name, preprocessors):
    if name not in seqio.TaskRegistry.names():
        vocab = seqio.ByteVocabulary()
        seqio.TaskRegistry.add(name, seqio.FunctionDataSource(_copy_source, splits=["train", "validation"]),
                               preprocessors=[*preprocessors, seqio.preprocessors.tokenize,
                                              seqio.preprocessors.append_eos_after_trim],
                               output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)},
                               metric_fns=[_exact_match])


def _abstract_state(model_config):
    """Shapes of the train state finetune.gin's optimizer builds for `model_config` (no compilation)."""
    model = models.EncoderDecoderModel(model_config)
    init = trainer.params_init_fn(model, LENGTHS)
    tx = optim.adafactor(learning_rate=optim.constant_schedule(1e-3))
    return jax.eval_shape(lambda: TrainState.create(jax.tree.map(lambda b: b.unbox(), init(jax.random.PRNGKey(0)),
                                                                 is_leaf=lambda b: hasattr(b, "unbox")), tx))


def _write_checkpoint(directory, **overrides):
    """A checkpoint (zeros) of the tiny model with `overrides`, as trainer.train would have saved it."""
    shapes = _abstract_state(config.get_config("tiny", **{"vocab_size": VOCAB_SIZE, **overrides}))
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    manager = checkpoints.CheckpointManager(directory, async_save=False)
    manager.save(2, state, {"batches_consumed": 2}, force=True)
    manager.close()
    return str(directory)


@pytest.fixture(scope="module")
def files(tmp_path_factory, spm_model):
    """Data files, gin files and checkpoints the cases point at (file tasks use `spm_model`'s vocabulary: their
    rows are checked as they are read, after the vocabulary is loaded)."""
    root = tmp_path_factory.mktemp("bad_input")
    tsv = {
        "good.tsv": "sentence\tlabel\nthe cat sat\tpositive\na dog\tnegative\n",
        "missing_column.tsv": "sentence\tscore\nthe cat sat\t1\n",
        "extra_tab.tsv": "sentence\tlabel\nthe cat sat\tpositive\nthe\tdog\tnegative\n",
        "empty_target.tsv": "sentence\tlabel\nthe cat sat\tpositive\na dog\t \n",
        "header_only.tsv": "sentence\tlabel\n",
        "data.csv": "sentence,label\nthe cat,positive\n",
        "bad_json.jsonl": '{"sentence": "a", "label": "b"}\n{"sentence": "a" "label": "b"}\n',
    }
    for name, text in tsv.items():
        (root / name).write_text(text)
    (root / "bad_utf8.tsv").write_bytes(b"sentence\tlabel\nthe cat\tpositive\ncaf\xe9 \xff\tnegative\n")
    (root / "syntax.gin").write_text("TRAIN_STEPS = 3\nBATCH_SIZE = = 4\n")
    (root / "binary.gin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    (root / "not_spm.model").write_text("this is not a SentencePiece model\n")
    hf = root / "hf_no_weights"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_heads": 2, '
                                    '"num_layers": 2, "vocab_size": 260, "feed_forward_proj": "gated-gelu", '
                                    '"tie_word_embeddings": false}')
    (root / "a_file").write_text("x")
    return {
        "root": root,
        "vocab_300": _write_checkpoint(root / "ckpt_vocab300", vocab_size=300),
        "mlp_128": _write_checkpoint(root / "ckpt_mlp128", mlp_dim=128),
        "layers_1": _write_checkpoint(root / "ckpt_layers1", num_encoder_layers=1, num_decoder_layers=1),
    }


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """The in-memory tasks; the few cases that compile (checkpoint shape checks after init) share a cache."""
    _register(TASK, [])
    _register(PREFIXED_TASK, [_long_prefix])
    settings = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                "jax_persistent_cache_min_entry_size_bytes")
    previous = {key: getattr(jax.config, key) for key in settings}
    for key, value in zip(settings, (str(tmp_path_factory.getbasetemp() / "reliability_jax_cache"), 0, 0)):
        jax.config.update(key, value)
    compilation_cache.reset_cache()
    yield
    for key, value in previous.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()


def _base(model_dir):
    return ["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
            f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.TRAIN_STEPS=2", f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=0", f"--gin.config.get_config.vocab_size={VOCAB_SIZE}"]


def _tsv_task(path, **overrides):
    settings = {"name": "'bad_input_tsv'", "path": f"'{path}'", "inputs": "'sentence'", "targets": "'label'",
                "prefix": "'sst'", **overrides}
    return ["--gin.MIXTURE_OR_TASK_NAME=@custom.register_text_task_from_file()",
            *[f"--gin.custom.register_text_task_from_file.{k}={v}" for k, v in settings.items()]]


def _main(argv, capsys):
    gin.clear_config()
    try:
        code = launch.main(argv)
    finally:
        gin.clear_config()
    return code, capsys.readouterr().err


# (id, extra flags (a function of the files fixture and a fresh MODEL_DIR), expected fragments of the error line)
CASES = [
    ("missing_gin_file", lambda f, d: ["--gin_file=runs/finetun.gin"],
     ["gin file 'runs/finetun.gin' not found", "closest: runs/finetune.gin"]),
    ("unreadable_gin_file", lambda f, d: [f"--gin_file={f['root'] / 'binary.gin'}"],
     ["binary.gin", "is not UTF-8 text"]),
    ("gin_syntax_error", lambda f, d: [*_base(d), f"--gin_file={f['root'] / 'syntax.gin'}"],
     ["syntax.gin:2"]),
    ("unknown_gin_parameter", lambda f, d: [*_base(d), "--gin.trainer.train.trian_steps=3"],
     ["configurable 'trainer.train' has no parameter 'trian_steps'", "closest: text2text.trainer.train.train_steps"]),
    ("unknown_configurable", lambda f, d: [*_base(d), "--gin.trainer.trian.train_steps=3"],
     ["trainer.trian"]),
    ("malformed_gin_flag", lambda f, d: [*_base(d), "--gin.TRAIN_STEPS"],
     ["flag '--gin.TRAIN_STEPS'", "expected --gin.KEY=VALUE"]),
    ("malformed_gin_value", lambda f, d: [*_base(d), "--gin.TRAIN_STEPS=[1,"],
     ["--gin.TRAIN_STEPS=[1,: unclosed bracket or string in the value"]),
    ("unknown_flag", lambda f, d: [*_base(d), "--gin_fle=x.gin"],
     ["unknown flag '--gin_fle'", "--gin_file"]),
    ("no_gin_file", lambda f, d: ["--gin.TRAIN_STEPS=3"],
     ["no --gin_file given"]),
    ("required_macro_unbound", lambda f, d: [a for a in _base(d) if "MODEL_DIR" not in a],
     ["MODEL_DIR is %gin.REQUIRED", "--gin.MODEL_DIR="]),
    ("unknown_mode", lambda f, d: [*_base(d), "--gin.launch.run.mode='trian'"],
     ["unknown mode 'trian'", "did you mean train"]),
    ("unknown_task", lambda f, d: [*_base(d), f"--gin.MIXTURE_OR_TASK_NAME='{TASK}_x'"],
     [f"unknown seqio task or mixture '{TASK}_x'", TASK]),
    ("unknown_model_preset", lambda f, d: [*_base(d), "--gin.config.get_config.name='t5_1_1_smal'"],
     ["unknown model preset 't5_1_1_smal'", "t5_1_1_small"]),
    ("unknown_config_field", lambda f, d: [*_base(d), "--gin.config.get_config.embed_dim=64"],
     ["unknown T5Config field(s) embed_dim", "emb_dim"]),
    ("zero_steps", lambda f, d: [*_base(d), "--gin.TRAIN_STEPS=0"],
     ["TRAIN_STEPS must be a positive integer, got 0"]),
    ("negative_steps", lambda f, d: [*_base(d), "--gin.TRAIN_STEPS=-5"],
     ["TRAIN_STEPS must be a positive integer, got -5"]),
    ("zero_batch_size", lambda f, d: [*_base(d), "--gin.BATCH_SIZE=0"],
     ["BATCH_SIZE must be a positive integer, got 0"]),
    ("microbatches_do_not_divide_batch", lambda f, d: [*_base(d), "--gin.trainer.train.num_microbatches=3"],
     ["num_microbatches=3 must divide BATCH_SIZE=4"]),
    ("mesh_larger_than_devices", lambda f, d: [*_base(d), "--gin.trainer.MeshConfig.data=4"],
     ["mesh data=4 x model=1 needs 4 devices but only 1 are available"]),
    ("unknown_partitioning_mode", lambda f, d: [*_base(d), "--gin.trainer.MeshConfig.mode='zp'"],
     ["partitioning mode 'zp' is unknown", "fsdp"]),
    ("model_dir_not_writable", lambda f, d: [*_base(d), f"--gin.MODEL_DIR='{f['root'] / 'a_file' / 'model'}'"],
     ["MODEL_DIR", "a_file/model", "cannot be created"]),
    ("feature_lengths_missing_targets", lambda f, d: [*_base(d), "--gin.TASK_FEATURE_LENGTHS={'inputs': 16}"],
     ["TASK_FEATURE_LENGTHS must map 'inputs' and 'targets' to positive integers"]),
    ("zero_checkpoint_period", lambda f, d: [*_base(d), "--gin.CHECKPOINT_PERIOD=0"],
     ["trainer.train.checkpoint_period must be an integer >= 1, got 0"]),
    ("inputs_length_leaves_only_the_prefix", lambda f, d: [*_base(d), f"--gin.MIXTURE_OR_TASK_NAME='{PREFIXED_TASK}'"],
     [PREFIXED_TASK, "TASK_FEATURE_LENGTHS['inputs']=16 keeps only 'please summariz'", "larger inputs length"]),
    ("tsv_missing_column", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "missing_column.tsv")],
     ["missing_column.tsv:1", "no column(s) ['label']", "sentence', 'score"]),
    ("tsv_extra_tab", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "extra_tab.tsv")],
     ["extra_tab.tsv:3", "expected 2 tab-separated fields", "found 3"]),
    ("tsv_empty_target", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "empty_target.tsv")],
     ["empty_target.tsv:3", "empty target 'label'"]),
    ("tsv_invalid_utf8", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "bad_utf8.tsv")],
     ["bad_utf8.tsv:3", "invalid UTF-8"]),
    ("empty_data_source", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "header_only.tsv")],
     ["header_only.tsv", "no usable rows"]),
    ("data_file_missing", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "nope.tsv")],
     ["cannot read data file", "nope.tsv"]),
    ("data_file_unknown_format", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "data.csv")],
     ["cannot tell the format of", "data.csv", ".tsv"]),
    ("jsonl_invalid_json", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "bad_json.jsonl")],
     ["bad_json.jsonl:2", "invalid JSON"]),
    ("unknown_metric", lambda f, d: [*_base(d), *_tsv_task(f["root"] / "good.tsv", metrics="['acuracy']")],
     ["unknown metric 'acuracy'", "accuracy"]),
    ("vocabulary_not_sentencepiece", lambda f, d: [
        *_base(d), *_tsv_task(f["root"] / "good.tsv"),
        f"--gin.vocab.sentencepiece_model_path.path='{f['root'] / 'not_spm.model'}'"],
     ["not_spm.model is not a valid SentencePiece model file"]),
    ("vocabulary_file_missing", lambda f, d: [
        *_base(d), *_tsv_task(f["root"] / "good.tsv"),
        f"--gin.vocab.sentencepiece_model_path.path='{f['root'] / 'missing.model'}'"],
     ["SentencePiece vocabulary file not found", "missing.model"]),
    ("initial_checkpoint_missing", lambda f, d: [*_base(d), f"--gin.INITIAL_CHECKPOINT_PATH='{f['root'] / 'nope'}'"],
     ["initial checkpoint", "nope", "does not exist"]),
    ("hf_directory_without_weights", lambda f, d: [
        *_base(d), f"--gin.INITIAL_CHECKPOINT_PATH='{f['root'] / 'hf_no_weights'}'"],
     ["hf_no_weights", "no HF weights file found", "model.safetensors"]),
    ("checkpoint_vocab_size_differs", lambda f, d: [*_base(d), f"--gin.MODEL_DIR='{f['vocab_300']}'"],
     ["ckpt_vocab300", "vocabulary size 300 in the checkpoint but 260 in the model"]),
    ("init_checkpoint_vocab_size_differs", lambda f, d: [
        *_base(d), f"--gin.INITIAL_CHECKPOINT_PATH='{f['vocab_300']}'"],
     ["ckpt_vocab300", "vocabulary size 300 in the checkpoint but 260 in the model"]),
    ("checkpoint_other_model_shape", lambda f, d: [*_base(d), f"--gin.MODEL_DIR='{f['mlp_128']}'"],
     ["ckpt_mlp128", "mlp/wi_0/kernel has shape (32, 128) in the checkpoint but (32, 64) in the model"]),
    ("checkpoint_fewer_layers", lambda f, d: [*_base(d), f"--gin.MODEL_DIR='{f['layers_1']}'"],
     ["ckpt_layers1", "the checkpoint has no params/decoder/layers_1/"]),
    ("eval_model_dir_without_checkpoints", lambda f, d: [
        "--gin_file=models/tiny.gin", "--gin_file=runs/eval.gin", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.MODEL_DIR='{f['root']}'",
        f"--gin.config.get_config.vocab_size={VOCAB_SIZE}"],
     ["holds no checkpoints"]),
    ("bad_decode_method", lambda f, d: [
        "--gin_file=models/tiny.gin", "--gin_file=runs/eval.gin", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.MODEL_DIR='{f['root']}'",
        f"--gin.CHECKPOINT_PATH='{f['layers_1']}'", f"--gin.config.get_config.vocab_size={VOCAB_SIZE}",
        "--gin.config.get_config.num_encoder_layers=1", "--gin.config.get_config.num_decoder_layers=1",
        "--gin.modes.evaluate_checkpoints.decode_kwargs={'method': 'beem'}"],
     ["method='beem'", "greedy, sample, beam"]),
]


@pytest.mark.parametrize("flags, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_clear_line_and_exit_code_2(flags, expected, files, tmp_path, capsys):
    code, err = _main(flags(files, tmp_path / "model"), capsys)
    last = err.rstrip("\n").splitlines()[-1] if err.strip() else ""
    assert code == 2, err
    assert last.startswith("error: "), err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in last, f"{fragment!r} not in {last!r}"


def test_offline_vocabulary_names_the_file_to_download(files, tmp_path, capsys, monkeypatch):
    from tasks import vocab

    monkeypatch.delenv(vocab.ENV_VAR, raising=False)
    monkeypatch.setattr(vocab, "_gcs_reachable", lambda timeout=3.0: False)
    code, err = _main([*_base(tmp_path), *_tsv_task(files["root"] / "good.tsv")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "Cannot reach Google Cloud Storage" in err
    assert "gsutil cp gs://t5-data/vocabs/cc_all.32000/sentencepiece.model" in err


def test_offline_initial_checkpoint_names_the_file_to_download(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(trainer.socket, "create_connection", offline)
    path = "gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000"
    code, err = _main([*_base(tmp_path), f"--gin.INITIAL_CHECKPOINT_PATH='{path}'"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"INITIAL_CHECKPOINT_PATH {path} is on Cloud Storage" in err and f"gsutil -m cp -r {path}" in err


def test_disk_full_outside_checkpoints_is_one_line_too(tmp_path, capsys, monkeypatch):
    def no_space(model_dir):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(model_dir, "config.gin"))

    monkeypatch.setattr(trainer, "write_gin_config", no_space)
    code, err = _main(_base(tmp_path / "model"), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.rstrip().splitlines()[-1] == (
        f"error: [Errno 28] No space left on device: '{tmp_path / 'model' / 'config.gin'}'; "
        "free space or fix the permissions, then rerun")


def test_debug_flag_shows_the_traceback(tmp_path):
    gin.clear_config()
    try:
        with pytest.raises(Exception, match="TRAIN_STEPS must be a positive integer"):
            launch.main([*_base(tmp_path), "--gin.TRAIN_STEPS=0", "--debug"])
    finally:
        gin.clear_config()


def test_batch_not_divisible_by_data_parallel_mesh_through_run_py(tmp_path):
    """Two forced CPU devices in a subprocess: a batch of 3 cannot be split over the 'data' axis of size 2."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{REPO!r}, {os.path.join(REPO, "tests")!r}]
        import test_bad_input
        from text2text import launch
        test_bad_input._register(test_bad_input.TASK, [])
        sys.exit(launch.cli(sys.argv[1:]))
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", script, *_base(tmp_path / "model"), "--gin.BATCH_SIZE=3"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "error: BATCH_SIZE=3 is not divisible by the data-parallel mesh size 2")
    assert "Traceback" not in proc.stderr


def test_failed_resume_keeps_the_runs_config_gin(files, tmp_path, capsys):
    model_dir = tmp_path / "run"
    shutil.copytree(files["vocab_300"], model_dir)
    (model_dir / "config.gin").write_text("# the run's own config\n")
    code, err = _main([*_base(tmp_path / "unused"), f"--gin.MODEL_DIR='{model_dir}'"], capsys)
    assert code == 2, err
    assert (model_dir / "config.gin").read_text() == "# the run's own config\n"
    assert not [name for name in os.listdir(model_dir) if name.endswith(".tmp")]
