"""What a run's result depends on, so that a finished run is reused only when none of it changed.

A fingerprint holds the run's parameters, the contents of its params file (and every ``base:``
it builds on), the identity of its initial checkpoint (the sha256 its pre-training run recorded,
or the file's own sha256), the data source (Fashion-MNIST or the procedural fallback) and the
code version (the git trees of ``vitdet_lib/`` and ``notebooks/``, plus a digest of local edits:
commits that touch only docs, tests or results do not invalidate runs). ``stale_reasons`` says
in words what differs between a record's fingerprint and the current one.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from vitdet_lib.io import jsonable

CODE_DIRS = ("vitdet_lib", "notebooks")
# notebook parameters that say where a run reads or writes or how it is launched, not what it
# computes (the initial checkpoint's identity is its sha256, not its path; the data source is
# its own field)
LOCATION_KEYS = frozenset({"run_name", "profile", "note", "results_dir", "record_path",
                           "work_dir", "fresh", "launcher", "fallback_overrides", "serves",
                           "init_checkpoint", "torch_threads", "checkpoints_dir"})


@functools.lru_cache(maxsize=4096)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a file (cached by path, size and mtime); None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def params_digests(path: str | os.PathLike[str], root: Path | None = None) -> dict[str, str | None]:
    """sha256 of a params file and of every file its ``base:`` chain names, by path."""
    out: dict[str, str | None] = {}
    todo = [Path(path)]
    while todo:
        p = todo.pop()
        full = p if p.is_absolute() or root is None else root / p
        key = str(p)
        if key in out:
            continue
        out[key] = file_sha256(full)
        try:
            data = yaml.safe_load(full.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        base = data.get("base") if isinstance(data, dict) else None
        if isinstance(base, str):
            todo.append(p.parent / base)
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20,
                              check=False, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def code_version(repo_root: str) -> str:
    """``<tree hashes>[+edits:<digest>]`` of the code that computes results, or the package
    version outside a git checkout."""
    root = Path(repo_root)
    trees = _git(["rev-parse", *(f"HEAD:{d}" for d in CODE_DIRS)], root)
    if trees is None:
        from importlib import metadata

        try:
            return f"vitdet-bench {metadata.version('vitdet-bench')}"
        except metadata.PackageNotFoundError:
            return "unknown"
    version = "-".join(t[:12] for t in trees.split())
    diff = _git(["diff", "HEAD", "--", *CODE_DIRS], root) or ""
    untracked = _git(["ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS], root) or ""
    if diff or untracked.strip():
        h = hashlib.sha256(diff.encode())
        for name in sorted(untracked.split()):
            h.update(name.encode())
            h.update((file_sha256(root / name) or "").encode())
        version += f"+edits:{h.hexdigest()[:12]}"
    return version


def checkpoint_identity(checkpoint: str | None, upstream: dict[str, Any] | None) -> str | None:
    """The initial checkpoint's identity: the sha256 its pre-training run recorded, else the
    file's own sha256 (``missing`` when neither exists)."""
    if not checkpoint:
        return None
    if upstream is not None:
        shas = (upstream.get("artifacts") or {}).get("checkpoint_sha256") or {}
        sha = shas.get(Path(checkpoint).name)
        if sha:
            return sha
    return file_sha256(checkpoint) or "missing"


def fingerprint(parameters: dict[str, Any], *, repo_root: Path, data_source: str,
                upstream: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a run's result depends on (see the module docstring)."""
    params = {k: v for k, v in jsonable(parameters).items() if k not in LOCATION_KEYS}
    files = params_digests(params["params"], repo_root) if params.get("params") else {}
    return {"parameters": params, "params_files": files,
            "checkpoint": checkpoint_identity(parameters.get("init_checkpoint"), upstream),
            "data_source": data_source, "code": code_version(str(repo_root))}


def stale_reasons(old: dict[str, Any] | None, new: dict[str, Any], *, code: bool = True
                  ) -> list[str]:
    """What changed between a record's fingerprint and the current one, in words.

    ``code``: count a change of code version (profiles run over several sessions say no).
    """
    if not old:
        return ["the record has no fingerprint (written by an older version)"]
    reasons = []
    op, np_ = old.get("parameters", {}), new["parameters"]
    changed = sorted(k for k in set(op) | set(np_) if op.get(k) != np_.get(k))
    if changed:
        reasons.append("parameters changed: " + ", ".join(
            f"{k} {op.get(k)!r} -> {np_.get(k)!r}" for k in changed[:4])
            + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""))
    of, nf = old.get("params_files", {}), new["params_files"]
    files = sorted(k for k in set(of) | set(nf) if of.get(k) != nf.get(k))
    if files:
        reasons.append("params file changed: " + ", ".join(files))
    if old.get("checkpoint") != new["checkpoint"]:
        reasons.append("initial checkpoint changed (its pre-training re-ran or the file differs)")
    if old.get("data_source") != new["data_source"]:
        reasons.append(f"data source {old.get('data_source')} -> {new['data_source']}")
    if code and old.get("code") != new["code"]:
        reasons.append(f"code changed: {old.get('code')} -> {new['code']}")
    return reasons
