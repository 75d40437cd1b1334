"""Copy a rendered study's findings and stage times into README.md, between markers.

README.md holds ``<!-- study:NAME:findings -->`` ... ``<!-- /study:NAME:findings -->``; the
report command replaces what lies between them with tables read from the report's
``findings.csv`` and ``stages.csv``, so the README never carries a hand-copied number.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import write_text_atomic
from .render import to_markdown

README_COLUMNS = ["claim", "statement", "A", "B", "difference", "± spread", "val difference",
                  "verdict"]


def markers(profile: str) -> tuple[str, str]:
    return f"<!-- study:{profile}:findings -->", f"<!-- /study:{profile}:findings -->"


def readme_block(report_dir: Path) -> str:
    """The Markdown that goes between the markers, from the report's CSV files."""
    parts = []
    stages = report_dir / "stages.csv"
    if stages.is_file():
        parts += [("Stages as they ran (wall time on the machine that ran them, from the run "
                   "records):"), "",
                  to_markdown(pd.read_csv(stages, dtype=str).fillna("")), ""]
    findings = report_dir / "findings.csv"
    if findings.is_file():
        df = pd.read_csv(findings, dtype=str).fillna("")
        parts += [(f"The paper's claims against our test-split APbox "
                   f"(rule and runs: [{report_dir.name}/findings.md]"
                   f"({report_dir.as_posix()}/findings.md)):"), "",
                  to_markdown(df[[c for c in README_COLUMNS if c in df.columns]]), ""]
    return "\n".join(parts) or "No stage of this study has finished yet.\n"


def update_readme(readme: Path, profile: str, report_dir: Path, repo_root: Path) -> bool:
    """Replace the profile's block in ``readme``; False when it has no markers for it."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    start, end = markers(profile)
    if start not in text or end not in text.split(start, 1)[1]:
        return False
    try:
        shown = report_dir.relative_to(repo_root)
    except ValueError:
        shown = report_dir
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    block = readme_block(report_dir).replace(f"]({report_dir.as_posix()}/",
                                             f"]({shown.as_posix()}/")
    write_text_atomic(readme, f"{head}{start}\n{block}\n{end}{tail}")
    return True
