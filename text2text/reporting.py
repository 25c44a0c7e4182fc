"""What a training run shows and leaves behind: progress line, TensorBoard, metrics.jsonl, loss.png."""
from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time
from typing import Iterator, Mapping, TextIO

import jax


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """A one-line progress bar on a TTY (step, loss, tokens/s, ETA); plain log lines otherwise."""

    def __init__(self, total_steps: int, start_step: int, stream: TextIO | None = None, width: int = 24):
        self.total_steps = total_steps
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._start_step = start_step
        self._start_time = self._last_time

    def update(self, step: int, loss: float, tokens: float) -> str:
        """Reports `tokens` processed since the previous update; returns the line shown."""
        now = time.perf_counter()
        tokens_per_s = tokens / max(now - self._last_time, 1e-9)
        steps_per_s = (step - self._start_step) / max(now - self._start_time, 1e-9)
        eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
        self._last_step, self._last_time = step, now
        done = int(self.width * step / max(self.total_steps, 1))
        bar = "#" * done + "-" * (self.width - done)
        line = f"step {step}/{self.total_steps} loss {loss:.4f} {tokens_per_s:,.0f} tok/s ETA {_format_duration(eta)}"
        if self.tty:
            self.stream.write(f"\r[{bar}] {line}\x1b[K")
            if step >= self.total_steps:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return line

    def message(self, text: str) -> None:
        """Prints a line without breaking the progress bar."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """{native thread id (`threading.get_native_id()`): (OS thread name, CPU seconds)} of this process's live
    threads: user + system time (float, clock-tick resolution, 10 ms on most Linux systems) and Linux's `comm`
    name (at most 15 characters; XLA:CPU's compute threads are 'tf_XLAEigen', and a thread started without a
    name inherits its creator's). Read from /proc/self/task; {} where that does not exist (not Linux). Raises
    nothing: a thread that ends while being read, or whose stat line cannot be parsed, is skipped."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    threads = {}
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="utf-8", errors="replace") as stat:
                text = stat.read()
            fields = text[text.rindex(")") + 2:].split()  # fields 14 and 15 of proc(5) are utime and stime
            threads[int(task)] = (text[text.index("(") + 1:text.rindex(")")],
                                  (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, ValueError, IndexError):
            continue
    return threads


def cpu_seconds_by_thread_name(start: Mapping[int, tuple[str, float]],
                               end: Mapping[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two `thread_cpu_seconds` readings, summed by thread name at `end` (threads
    started in between count from 0; threads that ended in between are not counted)."""
    totals: dict[str, float] = collections.defaultdict(float)
    for thread, (name, seconds) in end.items():
        totals[name] += seconds - start.get(thread, (name, 0.0))[1]
    return dict(totals)


class HostTimer:
    """Wall seconds of the training loop's host-side phases (data, dispatch, logging, checkpoints...) against
    the loop's total, to tell how much of a step the host adds (the jitted step itself runs asynchronously),
    and the CPU seconds each group of threads spent meanwhile (`thread_cpu_seconds`)."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self._start = time.perf_counter()
        self._start_cpu = time.process_time()
        self._start_threads = thread_cpu_seconds()

    def reset(self) -> None:
        """Starts over (e.g. after the first step, whose dispatch includes compilation)."""
        self.__init__()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def summary(self, steps: int, overhead: tuple[str, ...]) -> dict:
        """{'steps', 'loop_seconds', 'loop_cpu_seconds', 'seconds': {phase: s}, 'overhead_fraction',
        'thread_cpu_seconds': {thread name: s}}: wall and process CPU seconds (all threads: host and, on CPU
        backends, the step itself) since the start or `reset`, the `overhead` phases' share of the loop's wall
        time (an upper bound on what they cost: data fetched while the device runs the previous step), and the
        CPU seconds of each group of same-named threads (`cpu_seconds_by_thread_name`: threads that ended before
        this call are not counted, so call it before stopping e.g. a prefetch thread)."""
        total = time.perf_counter() - self._start
        spent = sum(self.seconds[name] for name in overhead)
        threads = cpu_seconds_by_thread_name(self._start_threads, thread_cpu_seconds())
        return {"steps": steps, "loop_seconds": total, "loop_cpu_seconds": time.process_time() - self._start_cpu,
                "seconds": dict(self.seconds), "overhead_fraction": spent / total if total > 0 else 0.0,
                "thread_cpu_seconds": threads}


class MetricsLog:
    """Appends scalars to MODEL_DIR/metrics.jsonl and TensorBoard (clu writers), on the first host only."""

    def __init__(self, model_dir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self._writer = None
        if self.enabled and tensorboard:
            from clu import metric_writers  # pylint: disable=import-outside-toplevel

            self._writer = metric_writers.create_default_writer(model_dir, just_logging=False, asynchronous=False)

    def write(self, step: int, scalars: Mapping[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            self._writer.write_scalars(int(step), {f"{kind}/{k}": float(v) for k, v in scalars.items()})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def read_metrics(model_dir: str, kind: str = "train") -> list[dict]:
    """Records of one kind from MODEL_DIR/metrics.jsonl, in order."""
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get("kind") == kind]


def plot_loss(model_dir: str) -> str | None:
    """Draws MODEL_DIR/loss.png from the train records of metrics.jsonl; returns its path."""
    records = [r for r in read_metrics(model_dir) if "loss" in r]
    if not records or jax.process_index() != 0:
        return None
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(os.path.basename(os.path.normpath(model_dir)))
    path = os.path.join(model_dir, "loss.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
