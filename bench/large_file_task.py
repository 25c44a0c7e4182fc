"""A ~2 GB TSV file task trains its first steps with flat memory: peak RSS and time to the first batch.

    nice .venv/bin/python bench/large_file_task.py [--gigabytes 2] [--steps 20] [--dir /tmp] [--keep]

Writes a sentiment-like TSV (header `sentence<TAB>label`, ~60-byte rows) of the given size under --dir, trains a
small SentencePiece vocabulary on its first rows, then runs `run.py`'s entry point in a worker process:
`models/tiny.gin` + `runs/finetune.gin` with `MIXTURE_OR_TASK_NAME = @custom.register_text_task_from_file()` on
the file, --steps steps of batch 32, no evaluation. The worker reports its peak RSS (ru_maxrss, the whole
process: Python, TensorFlow, JAX, model) and the time to the first training batch: seconds from its start, from
the task's registration and from the data iterator's first call (building the pipeline, then reading,
tokenizing and packing the first window of examples), and the process's CPU seconds by then, which a loaded
machine does not inflate. Targets (issue 14): peak RSS < 1.5 GB, first batch < 30 s. The file is deleted
afterwards unless --keep. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADJECTIVES = {"positive": ["wonderful", "moving", "sharp", "funny", "gorgeous", "clever", "warm", "tight"],
              "negative": ["dull", "clumsy", "tedious", "flat", "messy", "bland", "shallow", "hollow"]}
NOUNS = ["film", "plot", "cast", "script", "ending", "score", "pacing", "lead", "story", "camera work"]
ADVERBS = ["really", "quite", "rather", "truly", "mostly", "simply", "oddly", ""]
BLOCK_ROWS = 100_000


def _block(rng: random.Random) -> bytes:
    rows = []
    for _ in range(BLOCK_ROWS):
        label = rng.choice(("positive", "negative"))
        rows.append(f"the {rng.choice(NOUNS)} was {rng.choice(ADVERBS)} {rng.choice(ADJECTIVES[label])} and "
                    f"the {rng.choice(NOUNS)} {rng.choice(('felt', 'seemed', 'looked'))} "
                    f"{rng.choice(ADJECTIVES[label])}\t{label}".replace("  ", " "))
    return ("\n".join(rows) + "\n").encode()


def write_tsv(path: str, size_bytes: int) -> int:
    """Writes header + rows until the file holds `size_bytes`, cycling through 16 random blocks; returns the rows."""
    rng = random.Random(0)
    blocks = [_block(rng) for _ in range(16)]
    written, rows = 0, 0
    with open(path, "wb") as f:
        f.write(b"sentence\tlabel\n")
        while written < size_bytes:
            block = blocks[(rows // BLOCK_ROWS) % len(blocks)]
            f.write(block)
            written += len(block)
            rows += BLOCK_ROWS
    return rows


def worker(args: argparse.Namespace) -> None:
    """Runs the training through launch.main and prints one JSON line of timings and peak RSS."""
    start = time.time()
    sys.path.insert(0, REPO)
    from tasks import text_files
    from text2text import data, launch

    marks = {}
    source_init, next_batch = text_files.TextFileSource.__init__, data.DataIterator.__next__

    def timed_init(self, *a, **k):
        marks.setdefault("registered_at", time.time())
        source_init(self, *a, **k)

    def timed_next(self):
        marks.setdefault("first_next_at", time.time())  # the iterator builds its pipeline on the first call
        batch = next_batch(self)
        if "first_batch_at" not in marks:
            marks["first_batch_at"] = time.time()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            marks["rss_at_first_batch_mb"] = usage.ru_maxrss / 1024
            marks["cpu_s_at_first_batch"] = usage.ru_utime + usage.ru_stime
        return batch

    text_files.TextFileSource.__init__, data.DataIterator.__next__ = timed_init, timed_next
    task = ("--gin.MIXTURE_OR_TASK_NAME=@custom.register_text_task_from_file()",
            "--gin.custom.register_text_task_from_file.name='bench_large_file'",
            f"--gin.custom.register_text_task_from_file.path='{args.tsv}'",
            "--gin.custom.register_text_task_from_file.inputs='sentence'",
            "--gin.custom.register_text_task_from_file.targets='label'",
            "--gin.custom.register_text_task_from_file.prefix='sentiment'")
    code = launch.main(["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin", *task,
                        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}", f"--gin.TRAIN_STEPS={args.steps}",
                        "--gin.BATCH_SIZE=32", "--gin.EVAL_PERIOD=0", f"--gin.MODEL_DIR='{args.model_dir}'",
                        f"--gin.config.get_config.vocab_size={args.vocab_size}"])
    end = time.time()
    print(json.dumps({"exit_code": code, "wall_s": end - start,
                      "first_batch_from_start_s": marks["first_batch_at"] - start,
                      "first_batch_from_registration_s": marks["first_batch_at"] - marks["registered_at"],
                      "first_batch_pipeline_s": marks["first_batch_at"] - marks["first_next_at"],
                      "cpu_s_at_first_batch": marks["cpu_s_at_first_batch"],
                      "rss_at_first_batch_mb": marks["rss_at_first_batch_mb"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true", help="keep the generated TSV")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tsv", help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--vocab_size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    work = tempfile.mkdtemp(prefix="large_file_task_", dir=args.dir)
    tsv = os.path.join(work, "reviews.tsv")
    try:
        started = time.time()
        rows = write_tsv(tsv, int(args.gigabytes * 2**30))
        print(f"wrote {tsv}: {os.path.getsize(tsv) / 2**30:.2f} GiB, {rows} rows in {time.time() - started:.0f} s",
              flush=True)
        sys.path.insert(0, REPO)
        from tasks import vocab
        with open(tsv, encoding="utf-8") as f:
            sample = [next(f).split("\t")[0] for _ in range(5000)][1:]
        model = vocab.train_sentencepiece(sample, os.path.join(work, "spm"), vocab_size=256)
        env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                   T2T_VOCAB_PATH=model, PYTHONPATH=REPO)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", f"--tsv={tsv}",
                               f"--model_dir={os.path.join(work, 'model')}", "--vocab_size=256",
                               f"--steps={args.steps}"], cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"worker failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps({"file_gib": round(os.path.getsize(tsv) / 2**30, 2), "rows": rows, **result}, indent=1))
        print(f"peak RSS {result['peak_rss_mb']:.0f} MB (target < 1536), first batch "
              f"{result['first_batch_from_start_s']:.1f} s after start, "
              f"{result['first_batch_from_registration_s']:.1f} s after registration (target < 30 s)")
    finally:
        if args.keep:
            print(f"kept {tsv}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
