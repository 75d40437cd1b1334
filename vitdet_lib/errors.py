"""Typed errors the command line turns into exit codes and one-line messages."""
from __future__ import annotations

from pathlib import Path


class TrainingInterrupted(Exception):
    """SIGINT, SIGTERM or SIGUSR1 (SLURM preemption) stopped a training after a whole step.

    The checkpoint of that step was saved; rerunning the same command resumes from it. The
    command line exits with 130 (the shell's code for Ctrl-C).

    Args:
        signal_name: e.g. ``"SIGINT"``.
        iteration: optimizer steps completed (and saved).
        checkpoint: the file a resume loads.
        resume_command: the exact command that resumes, when the caller knows it.
    """

    exit_code = 130

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
