"""Gin mistakes through the command line: each is exactly one `error:` line on stderr and exit code 2, naming
where it is (file:line or the --gin flag), the binding or macro, the offending token and the fix. All of them
fail while the config is read, before any model is built."""
import os
import subprocess
import sys

import gin
import pytest

from text2text import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {
    "no_import.gin": "from __gin__ import dynamic_registration\nfrom text2text import models\n\n"
                     "config.get_config.vocab_size = 512\n",
    "bad_include.gin": 'include "runs/finetun.gin"\n',
    "unquoted.gin": 'include "models/tiny.gin"\ninclude "runs/finetune.gin"\nMODEL_DIR = runs/x\n',
    "syntax.gin": "TRAIN_STEPS = 3\nBATCH_SIZE = = 4\n",
    "bad_module.gin": "from __gin__ import dynamic_registration\nfrom text2text import confg\n",
    "bad_macro.gin": 'include "models/tiny.gin"\ninclude "runs/finetune.gin"\ntrainer.train.batch_size = %BATCH_SZE\n',
    "unclosed.gin": 'TASK_FEATURE_LENGTHS = {"inputs": 32,\nTRAIN_STEPS = 3\n',
    "unquoted_include.gin": "include runs/finetune.gin\n",
    "unused_macro.gin": "EVAL_PERIODS = 100\n",
}
BASE = ["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin", "--gin.MIXTURE_OR_TASK_NAME='demo_reverse'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.TRAIN_STEPS=3"]

# (id, flags (FILE/ is the directory of FILES; MODEL_DIR is added), fragments the one error line must contain)
CASES = [
    ("unquoted_string_flag", [*BASE, "--gin.MIXTURE_OR_TASK_NAME=glue_cola_v002"],
     ["--gin.MIXTURE_OR_TASK_NAME=glue_cola_v002: unquoted string 'glue_cola_v002'",
      "quote it: --gin.MIXTURE_OR_TASK_NAME='\"glue_cola_v002\"'"]),
    ("unquoted_path_flag", [*BASE, "--gin.MODEL_DIR=runs/x"],
     ["--gin.MODEL_DIR=runs/x: unquoted string 'runs/x'", "--gin.MODEL_DIR='\"runs/x\"'"]),
    ("unquoted_text_with_space", [*BASE, "--gin.MODEL_DIR=my runs"],
     ["--gin.MODEL_DIR=my runs: unquoted string 'my runs'"]),
    ("lowercase_true", [*BASE, "--gin.trainer.train.pack=true"],
     ["--gin.trainer.train.pack=true: 'true' is not a gin value", "write True"]),
    ("configurable_without_at", [*BASE, "--gin.trainer.train.optimizer=SentencePieceVocabulary()"],
     ["--gin.trainer.train.optimizer=SentencePieceVocabulary()", "'SentencePieceVocabulary' is not a gin value",
      "written with '@': @SentencePieceVocabulary()"]),
    ("empty_value", [*BASE, "--gin.TRAIN_STEPS="], ["--gin.TRAIN_STEPS=: no value after '='"]),
    ("misspelt_macro", [*BASE, "--gin.TRAIN_STEP=10"],
     ["--gin.TRAIN_STEP=10: no binding uses macro TRAIN_STEP", "did you mean TRAIN_STEPS?"]),
    ("unused_macro_in_file", [*BASE, "--gin_file=FILE/unused_macro.gin"],
     ["unused_macro.gin:1: EVAL_PERIODS = 100: no binding uses macro EVAL_PERIODS", "did you mean EVAL_PERIOD?"]),
    ("unbound_macro_reference", [*BASE, "--gin.trainer.train.batch_size=%BATCH_SZE"],
     ["--gin.trainer.train.batch_size=%BATCH_SZE: macro %BATCH_SZE is used but never bound",
      "did you mean BATCH_SIZE?"]),
    ("unbound_macro_reference_in_file", [*BASE, "--gin_file=FILE/bad_macro.gin"],
     ["bad_macro.gin:3: trainer.train.batch_size = %BATCH_SZE: macro %BATCH_SZE", "did you mean BATCH_SIZE?"]),
    ("missing_model_file", ["--gin_file=runs/eval.gin", *BASE[2:4]],
     ["runs/eval.gin:16: modes.evaluate_checkpoints.model = %MODEL: macro %MODEL is used but never bound",
      "models/t5_1_1/small.gin"]),
    ("required_macro_unbound", [f for f in BASE if "TASK_FEATURE_LENGTHS" not in f],
     ["gin macro TASK_FEATURE_LENGTHS is %gin.REQUIRED", "runs/finetune.gin:10", "--gin.TASK_FEATURE_LENGTHS="]),
    ("dynamic_registration_without_import", [*BASE, "--gin_file=FILE/no_import.gin"],
     ["no_import.gin:4: config.get_config.vocab_size = 512: 'config' is not imported",
      "add `from text2text import config`"]),
    ("unknown_module_import", [*BASE, "--gin_file=FILE/bad_module.gin"],
     ["bad_module.gin:2: from text2text import confg: no module named 'text2text.confg'",
      "did you mean text2text.config"]),
    ("unknown_configurable", [*BASE, "--gin.trainer.trian.train_steps=3"],
     ["--gin.trainer.trian.train_steps=3: no configurable named 'trainer.trian'", "closest: text2text.trainer.train"]),
    ("unknown_parameter", [*BASE, "--gin.trainer.train.trian_steps=3"],
     ["--gin.trainer.train.trian_steps=3: configurable 'trainer.train' has no parameter 'trian_steps'",
      "closest: text2text.trainer.train.train_steps"]),
    ("unknown_reference", [*BASE, "--gin.trainer.train.optimizer=@optim.adafactr()"],
     ["--gin.trainer.train.optimizer=@optim.adafactr(): no configurable named 'optim.adafactr'",
      "closest: text2text.optim.adafactor"]),
    ("missing_include", [*BASE, "--gin_file=FILE/bad_include.gin"],
     ['bad_include.gin:1: include "runs/finetun.gin": gin file \'runs/finetun.gin\' not found',
      "closest: runs/finetune.gin"]),
    ("unquoted_include_path", [*BASE, "--gin_file=FILE/unquoted_include.gin"],
     ["unquoted_include.gin:1: include runs/finetune.gin: include needs a quoted path"]),
    ("unquoted_string_in_file", [*BASE, "--gin_file=FILE/unquoted.gin"],
     ["unquoted.gin:3: MODEL_DIR = runs/x: unquoted string 'runs/x'", 'quote it: MODEL_DIR = "runs/x"']),
    ("syntax_error_in_file", [*BASE, "--gin_file=FILE/syntax.gin"],
     ["syntax.gin:2: BATCH_SIZE = = 4: gin cannot parse the value '= 4'"]),
    ("unclosed_bracket_in_file", [*BASE, "--gin_file=FILE/unclosed.gin"],
     ["unclosed.gin:1: a bracket opened on this line is not closed before line 2"]),
    ("unclosed_bracket_in_flag", [*BASE, "--gin.TRAIN_STEPS=[1,"],
     ["--gin.TRAIN_STEPS=[1,: unclosed bracket or string in the value"]),
    ("bad_binding_key", [*BASE, "--gin.trainer-train.x=1"],
     ["--gin.trainer-train.x=1: gin syntax error"]),
    ("missing_gin_file", [*BASE, "--gin_file=runs/finetun.gin"],
     ["gin file 'runs/finetun.gin' not found", "closest: runs/finetune.gin"]),
]


@pytest.fixture(scope="module")
def gin_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gin_mistakes")
    for name, text in FILES.items():
        (root / name).write_text(text)
    return root


def _args(flags, gin_dir, model_dir):
    return [f"--gin.MODEL_DIR='{model_dir}'", *(f.replace("FILE/", f"{gin_dir}/") for f in flags)]


def test_there_are_at_least_twelve_cases():
    assert len(CASES) >= 12 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id, flags, fragments", CASES, ids=[c[0] for c in CASES])
def test_gin_mistake_is_one_error_line(case_id, flags, fragments, gin_dir, tmp_path, capfd):
    gin.clear_config()
    try:
        code = launch.main(_args(flags, gin_dir, tmp_path / "model"))
    finally:
        gin.clear_config()
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not (tmp_path / "model").exists()  # failed before the run started
    assert out == ""


@pytest.mark.parametrize("case_id", ["unquoted_string_flag", "dynamic_registration_without_import"])
def test_run_py_prints_only_the_error_line(case_id, gin_dir, tmp_path):
    """The whole stderr of a fresh process (TensorFlow's native start-up lines included) is the one line."""
    flags, fragments = next((c[1], c[2]) for c in CASES if c[0] == case_id)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *_args(flags, gin_dir, tmp_path / "model")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert fragments[0] in proc.stderr
