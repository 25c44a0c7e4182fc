"""README.md works as written: every ```bash block is classified by RULES and either run (shortened by appended
flags where the real command takes long) or skipped for a stated reason; an unclassified block fails.

The blocks run in README order in one scratch directory, as a user would from a fresh clone: it holds links to
run.py, gin_configs/, text2text/, tasks/ and bench/ and `.venv` links to the Python environment running the
tests, so `.venv/bin/python run.py ...` runs as written and outputs (`runs/demo/...`) land in the scratch
directory. A block that depends on an earlier one (the PEFT and export commands use the demo's checkpoints)
names it in `after`; the shortened demo run is shared by all of them.

Classifying a new block (the test names it when it fails): add a Rule to RULES whose `pattern` (a regex
searched in the block text) matches it, before any more general rule. Either
  - `Rule(pattern, skip="needs network: ...")` with the reason it cannot run here (pip install, gs://, gcloud,
    srun, downloads through TFDS, placeholders such as BUCKET or `...`), or
  - `Rule(pattern, run=True, append="--gin.X=... ", drop=(...), after="rule name")`: `append` is added to every
    `run.py` command of the block (e.g. `--gin.demo.run_demo.train_steps=2`, `--gin.TRAIN_STEPS=2`) to keep
    the whole test within a few minutes on 2 cores; `drop` lists regexes of `&&`-separated steps not to run
    (venv creation and pip install: the test environment already has the packages), `after` the rule whose
    block must have run first.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # the shortened demo, a PEFT run and an export: ~2-4 min on 2 cores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_STEPS = (r"^python3 -m venv \.venv$", r"^\.venv/bin/pip install ")
DEMO_SHORT = "--gin.demo.run_demo.train_steps=2"


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    pattern: str
    run: bool = False
    skip: str = ""
    append: str = ""
    drop: tuple[str, ...] = ()
    after: str | None = None
    env: tuple[tuple[str, str], ...] = ()


RULES = [
    Rule("tests", r"-m pytest", skip="it is this test suite, after a pip install from the network"),
    Rule("demo", r"run\.py --gin_file=gin_configs/demo\.gin", run=True, append=DEMO_SHORT, drop=INSTALL_STEPS),
    Rule("help", r"^\.venv/bin/python run\.py --help$", run=True),
    Rule("peft", r"run\.py --gin_file=peft/", run=True, after="demo",
         append="--gin.TRAIN_STEPS=2 --gin.EVAL_PERIOD=0"),
    Rule("export", r"run\.py --gin_file=runs/export\.gin", run=True, after="demo"),
    Rule("fewshot", r"run\.py --gin_file=prompting/", run=True, after="demo",
         append="'--gin.SEEDS=[13]' --gin.STEPS=2 --gin.K=2 --gin.NUM_TEST=4 --gin.NUM_UNLABELLED=4 "
                "\"--gin.METHODS=['zero_shot', 'pet']\""),
    Rule("demo_eval_infer", r"run\.py .*--gin_file=runs/(eval|infer|score)\.gin.*runs/demo", run=True,
         after="demo"),
    Rule("beam_cache", r"-m tasks\.cache",
         skip="needs network: pip install, TFDS downloads of GLUE and C4 (c4_v220_span_corruption), gs:// buckets "
              "and Dataflow (tests/test_cache.py runs the cache on mock data)"),
    Rule("slurm", r"\bsrun\b", skip="needs a SLURM cluster (srun) and shared storage"),
    Rule("gcloud", r"\bgcloud\b", skip="needs network: gcloud and a Cloud TPU pod"),
    Rule("multi_host", r"coordinator_address", skip="a template for 4 hosts (`...` stands for the run's flags)"),
    Rule("gs_run", r"gs://", skip="needs network: gs:// buckets and the C4 dataset"),
]


def bash_blocks(text: str) -> list[str]:
    """The contents of every ```bash fenced block, in order."""
    return [m.group(1).strip() for m in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M)]


def classify(block: str) -> Rule | None:
    return next((rule for rule in RULES if re.search(rule.pattern, block, re.M)), None)


def command(block: str, rule: Rule) -> str:
    """The block as bash runs it: continuation lines joined, `drop` steps removed, `append` added to run.py."""
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    commands = []
    for line in lines:
        steps = [s.strip() for s in line.split(" && ") if not any(re.search(p, s.strip()) for p in rule.drop)]
        steps = [f"{s} {rule.append}" if rule.append and re.search(r"\brun\.py\b", s) else s for s in steps]
        commands.append(" && ".join(steps))
    return "\n".join(c for c in commands if c)


BLOCKS = bash_blocks(open(os.path.join(REPO, "README.md"), encoding="utf-8").read())


def _block_id(block: str) -> str:
    rule = classify(block)
    return f"{BLOCKS.index(block)}-{rule.name if rule else 'unclassified'}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory laid out like a fresh clone with its .venv; records which rules' blocks succeeded."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("run.py", "gin_configs", "text2text", "tasks", "bench"):
        os.symlink(os.path.join(REPO, name), root / name)
    os.symlink(sys.prefix, root / ".venv")
    return {"root": root, "done": set()}


def test_readme_has_the_commands_this_test_expects():
    names = {classify(b).name for b in BLOCKS if classify(b)}
    assert {"demo", "help", "peft", "export", "fewshot"} <= names


@pytest.mark.parametrize("block", BLOCKS, ids=_block_id)
def test_readme_block_runs_as_written(block, scratch):
    rule = classify(block)
    assert rule is not None, f"unclassified README block; add a Rule to tests/test_readme.py RULES:\n{block}"
    if rule.skip:
        assert re.search(r"pip install|gs://|gcloud|srun|\.\.\.|pytest", block), f"skip reason does not apply:\n{block}"
        return
    assert not re.search(r"(^|[\s;&|])python3?\s+(?!-m venv)", block, re.M), (
        f"project commands in the README use .venv/bin/python (bare python lacks the packages):\n{block}")
    if rule.after:
        assert rule.after in scratch["done"], f"this block needs the {rule.after!r} block to have run first"
    env = dict(os.environ, PYTHONPATH=REPO, **dict(rule.env))
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command(block, rule)], cwd=scratch["root"], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{command(block, rule)}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    scratch["done"].add(rule.name)
    if rule.name == "export":
        assert (scratch["root"] / "runs/demo/hf/model.safetensors").is_file()
        assert "exported step 2 of runs/demo/base to runs/demo/hf" in proc.stdout
    if rule.name == "help":
        assert proc.stdout.startswith("usage: .venv/bin/python run.py --gin_file=FILE")
