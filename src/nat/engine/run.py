"""A training run's output directory: its lock, the epoch log, the summary and the checkpoints.

``<output>/``
  ``last.pt``        the checkpoint after the latest finished epoch (everything needed to resume)
  ``best.pt``        a separate copy of the checkpoint of the best epoch so far
  ``metrics.jsonl``  one JSON object per finished epoch (valid JSON: non-finite numbers are null)
  ``summary.json``   written when the run ends
  ``.lock``          locked (``fcntl.lockf``) by the process of rank 0 while the run lives, so a
                     second run on the same directory stops at once instead of mixing its files
                     in. A POSIX lock is not inherited by forked data loader workers and ends with
                     the process, so a killed run's directory can be resumed at once.

Only rank 0 writes; every rank learns whether the directory could be locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Collection
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..files import atomic_open, json_line, write_json
from .checkpoint import load_checkpoint, resumed_settings, save_checkpoint
from .distributed import DistEnv, barrier, broadcast, init_distributed

__all__ = ["RunDirectory", "RunLockedError", "default_output"]

LAST, BEST = "last.pt", "best.pt"
METRICS, SUMMARY, LOCK = "metrics.jsonl", "summary.json", ".lock"


class RunLockedError(RuntimeError):
    """The output directory is in use by another live run."""


def default_output(name: str, env: DistEnv) -> Path:
    """A new ``runs/<UTC time>-<name>``, the same on every rank."""
    return Path(broadcast(f"runs/{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{name}", env))


class RunDirectory:
    """The files of one run in ``path``; a context manager that holds the directory's lock."""

    def __init__(self, path: str | os.PathLike[str], env: DistEnv) -> None:
        self.path = Path(path)
        self.env = env
        self._lock: IO[str] | None = None

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    def __enter__(self) -> RunDirectory:
        error = self._acquire() if self.env.is_main else None
        error = broadcast(error, self.env)
        if error is not None:
            self._release()
            raise RunLockedError(error)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _acquire(self) -> str | None:
        """Lock the directory (rank 0); the error to raise on every rank, or ``None``."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / LOCK, "a+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            return (
                f"output directory {str(self.path)!r} is in use by another training run "
                f"(pid {holder}); wait for it to end or choose another output"
            )
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock
        return None

    def _release(self) -> None:
        if self._lock is not None:
            fcntl.lockf(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def resume_from(self, resume: str | os.PathLike[str] | None) -> Path | None:
        """The checkpoint to resume: ``resume`` if given, else ``last.pt`` if the run has one."""
        if resume:
            return Path(resume)
        return self.last if self.last.exists() else None

    def start_log(
        self, history: list[dict[str, Any]], best_epoch: int | None, resumed: Path | None
    ) -> None:
        """Rewrite the log from the ``resumed`` checkpoint's history (each epoch once) and restore
        ``best.pt`` if the run was killed between writing ``last.pt`` and copying it (rank 0)."""
        if not self.env.is_main:
            return
        with atomic_open(self.metrics, "w") as f:
            f.writelines(json_line(h) + "\n" for h in history)
        if resumed is not None and history and best_epoch == history[-1]["epoch"]:
            self._copy(resumed, self.best)

    def save(self, checkpoint: dict[str, Any], record: dict[str, Any], *, is_best: bool) -> None:
        """After an epoch (rank 0): ``last.pt``, its copy ``best.pt`` if ``is_best``, a log line."""
        if not self.env.is_main:
            return
        save_checkpoint(checkpoint, self.last)
        if is_best:
            self._copy(self.last, self.best)
        with open(self.metrics, "a") as f:
            f.write(json_line(record) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.env.is_main:
            write_json(self.summary, summary)

    @staticmethod
    def _copy(src: Path, dst: Path) -> None:
        with open(src, "rb") as source, atomic_open(dst, "wb") as target:
            shutil.copyfileobj(source, target)


TrainFn = Callable[..., tuple[dict[str, Any], Any]]
"""``train(config, env, run, state, resume_path, progress) -> (summary, model)``."""


def train_in_run_directory(
    config: Any,
    resume: str | os.PathLike[str] | None,
    progress: bool,
    *,
    name: str,
    settings_format: str,
    runtime: Collection[str],
    train: TrainFn,
) -> tuple[dict[str, Any], Any, Path, DistEnv]:
    """A task's training run: ``(summary, model, output, env)``.

    Starts the distributed environment on ``config.device``, opens the run directory
    ``config.output`` (default ``runs/<time>-<name>``), resumes from ``resume`` or its
    ``last.pt`` with the checkpoint's settings (``config`` rebuilt by ``type(config).from_dict``;
    see :func:`resumed_settings`), calls ``train(config, env, run, state, resume_path,
    progress)`` and writes its summary. Every process calls this; rank 0 writes files.
    """
    env = init_distributed(config.device)
    output = Path(config.output) if config.output else default_output(name, env)
    with RunDirectory(output, env) as run:
        resume_path = run.resume_from(resume)
        state = load_checkpoint(resume_path) if resume_path else None
        if state is not None:
            config = type(config).from_dict(
                resumed_settings(
                    state,
                    config.to_dict(),
                    format=settings_format,
                    runtime=runtime,
                    path=resume_path,
                )
            )
        summary, model = train(config, env, run, state, resume_path, progress)
        run.write_summary(summary)
        barrier(env)
    return summary, model, output, env
