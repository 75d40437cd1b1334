"""Starting a task's training in this process or as a ``torchrun`` job, and the run folder."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import records as rec


def torchrun_command(launcher: dict[str, Any], cli_args: list[str]) -> list[str]:
    """``torchrun ... -m vitdet_lib.cli <cli_args>`` for a ``LauncherConfig`` (as a dict)."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nnodes={launcher.get('nnodes', 1)}",
           f"--nproc_per_node={launcher.get('nproc_per_node', 1)}"]
    if launcher.get("rdzv_endpoint"):
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={launcher['rdzv_endpoint']}"]
    return cmd + ["-m", "vitdet_lib.cli", *cli_args]


def uses_torchrun(launcher: dict[str, Any] | None) -> bool:
    return bool(launcher) and launcher.get("kind") == "torchrun"


def run_command(cmd: list[str], log_path: Path) -> None:
    """Run ``cmd`` with its output appended to ``log_path``; raise with the log's tail."""
    print("$", shlex.join(cmd), flush=True)
    with open(log_path, "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        tail = "".join(log_path.read_text().splitlines(True)[-30:])
        raise RuntimeError(f"{cmd[0]} exited with {done.returncode}; log tail:\n{tail}")


def fresh_dir(work_dir: str | Path, fresh: bool) -> Path:
    """The run's work folder, emptied first when ``fresh``."""
    work = Path(work_dir)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def finish(record_path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    rec.write_json_atomic(record_path, record)
    print(f"{record['run']}: {record['status']}, record at {record_path}")
    return record
