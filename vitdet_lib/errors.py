"""Typed errors of the library and how the command line reports them.

Every error a user can cause derives from :class:`VitdetError`; its message names the file,
key or annotation at fault and, where one exists, what to do. Notebook users catch the classes;
``vitdet-bench`` turns any exception into a short message and an exit code in one place
(:func:`describe`), showing the traceback only with ``--debug`` or ``VITDET_DEBUG=1``.

Exit codes: 2 bad input (params, data, checkpoint, missing file), 1 a run that failed
(non-finite loss, an unexpected error), 130 interrupted.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "VITDET_DEBUG"

# errors defined by modules that must not import this one, recognised by class name
_FAILED_RUN_NAMES = ("NonFiniteLossError",)
_INTERRUPT_NAMES = ("TrainingInterrupted",)


class VitdetError(Exception):
    """Base of the library's errors; ``exit_code`` is what the command line exits with."""

    exit_code = EXIT_FAILED


class InputError(VitdetError):
    """Something the user gave (a params file, dataset, checkpoint, option) is wrong."""

    exit_code = EXIT_BAD_INPUT


class DatasetError(InputError, ValueError):
    """A dataset (annotations or image files) is missing or malformed."""


class CheckpointError(InputError, ValueError):
    """A checkpoint cannot be read, or does not fit the configured model."""


class RunFailed(VitdetError, RuntimeError):
    """A run started but could not finish (e.g. the loss diverged)."""


class TrainingInterrupted(VitdetError):
    """SIGINT, SIGTERM or SIGUSR1 (SLURM preemption) stopped a training after a whole step.

    The checkpoint of that step was saved; rerunning the same command resumes from it. The
    command line exits with 130 (the shell's code for Ctrl-C).

    Args:
        signal_name: e.g. ``"SIGINT"``.
        iteration: optimizer steps completed (and saved).
        checkpoint: the file a resume loads.
        resume_command: the exact command that resumes, when the caller knows it.
    """

    exit_code = EXIT_INTERRUPTED

    def __init__(self, signal_name: str, iteration: int, checkpoint: Path,
                 resume_command: str | None = None) -> None:
        self.signal_name, self.iteration = signal_name, iteration
        self.checkpoint, self.resume_command = Path(checkpoint), resume_command
        super().__init__(self._message())

    def _message(self) -> str:
        how = self.resume_command or "rerun the same command"
        return (f"{self.signal_name}: stopped after iteration {self.iteration}, checkpoint "
                f"saved to {self.checkpoint}; to resume: {how}")

    def with_resume_command(self, command: str) -> TrainingInterrupted:
        """The same interruption, its message naming ``command``."""
        return TrainingInterrupted(self.signal_name, self.iteration, self.checkpoint, command)


def debug_enabled() -> bool:
    """``VITDET_DEBUG`` set to anything but ``""``/``0``: show tracebacks."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def describe(err: BaseException) -> tuple[str, int]:
    """The one-paragraph message and exit code the command line reports for ``err``.

    Unknown exceptions are bugs or environment failures: their type and first line are shown
    with a hint to rerun with ``--debug``, never a silent exit.
    """
    import yaml

    names = _names(err)
    if isinstance(err, KeyboardInterrupt) or names & set(_INTERRUPT_NAMES):
        return f"interrupted: {err}" if str(err) else "interrupted", EXIT_INTERRUPTED
    if isinstance(err, VitdetError):
        return str(err), err.exit_code
    if names & set(_FAILED_RUN_NAMES):
        return str(err), EXIT_FAILED
    if isinstance(err, yaml.YAMLError):  # from a loader not wrapped in yaml_errors()
        name = getattr(getattr(err, "problem_mark", None), "name", "") or ""
        in_file = not name.startswith("<")  # "<unicode string>": parsed from a string
        return yaml_message(err, name if in_file else "a YAML file or value", in_file=in_file), \
            EXIT_BAD_INPUT
    if isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        # a library error of this kind names its file in the message; an OS error in .filename
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return f"{where}{err.strerror or err}", EXIT_BAD_INPUT
    first = _first_lines(str(err), 1)
    hint = f"rerun with --debug (or {DEBUG_ENV}=1) for the traceback"
    return f"unexpected {type(err).__name__}: {first}\n({hint})", EXIT_FAILED


def _first_lines(text: str, n: int) -> str:
    lines = text.strip().splitlines()
    more = " ..." if len(lines) > n else ""
    return "\n".join(lines[:n]) + more


def config_error(message: str) -> InputError:
    """A ``ConfigError`` (defined in ``vitdet_lib.config``) without importing it here."""
    from vitdet_lib.config import ConfigError

    return ConfigError(message)


@contextlib.contextmanager
def yaml_errors(source: Any, *, in_file: bool = True) -> Iterator[None]:
    """Turn a YAML syntax error inside the block into a ``ConfigError`` naming ``source``.

    Args:
        source: the file (or ``--set`` item) being parsed.
        in_file: ``source`` is a file: the message reads ``file:line:column`` as editors do.
    """
    import yaml

    try:
        yield
    except yaml.YAMLError as err:
        raise config_error(yaml_message(err, source, in_file=in_file)) from err


def yaml_message(err: Exception, source: Any, *, in_file: bool = True) -> str:
    """``<source>:<line>:<column>: YAML syntax error: <what>; fix ...`` on one line."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        where = str(source)
    elif in_file:
        where = f"{source}:{mark.line + 1}:{mark.column + 1}"
    else:
        where = f"{source} (line {mark.line + 1}, column {mark.column + 1})"
    problem = getattr(err, "problem", None) or _first_lines(str(err), 1)
    context = getattr(err, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return f"{where}: YAML syntax error: {detail}; fix the syntax"
