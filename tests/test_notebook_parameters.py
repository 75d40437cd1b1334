"""Every parameter the study runner sends a notebook is declared in that notebook's
``parameters`` cell (papermill would inject an undeclared one silently, with a warning only,
and the notebook would not use it)."""
import ast
import json

import pytest

from vitdet_lib.study import records as rec
from vitdet_lib.study.profile import PROFILES_DIR, load_profile
from vitdet_lib.study.runner import NOTEBOOKS_DIR, StudyRunner


def declared(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")
                                           if not p.stem.endswith("_finetune")))
def test_runner_sends_only_declared_parameters(tmp_path, profile):
    cache, undeclared = {}, {}

    def executor(notebook, output, params, cwd):
        names = cache.setdefault(notebook, declared(notebook))
        for key in set(params) - names:
            undeclared.setdefault(f"{notebook.name}: {key}", params["run_name"])
        rec.write_json_atomic(params["record_path"], rec.make_record(
            params["run_name"], rec.SUCCESS, parameters=params, metrics={"bbox/AP": 1.0}))

    runner = StudyRunner(load_profile(profile), executor=executor, echo=lambda s: None,
                         notebooks_dir=NOTEBOOKS_DIR, results_dir=tmp_path / "results")
    runner.run()
    assert cache and not undeclared, f"sent but not declared (first run): {undeclared}"
