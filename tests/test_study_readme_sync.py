"""The report command copies the findings and stage times into README.md between markers."""
import pandas as pd

from vitdet_lib.study.readme_sync import markers, update_readme


def test_block_between_markers_is_replaced_and_the_rest_kept(tmp_path):
    report = tmp_path / "results" / "report"
    report.mkdir(parents=True)
    pd.DataFrame([{"claim": "a", "statement": "MAE beats random", "A": "MAE: 9", "B": "random: 5",
                   "difference": "4.00", "± spread": "0.50", "val difference": "3.00",
                   "verdict": "holds",
                   "runs": "x"}]).to_csv(report / "findings.csv", index=False)
    pd.DataFrame([{"stage": "pretrain", "runs": 4, "elapsed min": 55.0}]).to_csv(
        report / "stages.csv", index=False)
    start, end = markers("cpu")
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n{start}\nold hand-copied table\n{end}\ntail\n")
    assert update_readme(readme, "cpu", report, tmp_path)
    text = readme.read_text()
    assert text.startswith("# top\n") and text.endswith(f"{end}\ntail\n")
    assert "old hand-copied" not in text
    assert "| a | MAE beats random | MAE: 9 | random: 5 | 4.00 | 0.50 | 3.00 | holds |" in text
    assert "| pretrain | 4 | 55.0 |" in text
    assert "(results/report/findings.md)" in text  # a repository-relative link
    assert update_readme(readme, "cpu", report, tmp_path)  # idempotent
    assert readme.read_text() == text


def test_readme_without_markers_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing to see\n")
    assert not update_readme(readme, "cpu", tmp_path, tmp_path)
    assert readme.read_text() == "# nothing to see\n"
