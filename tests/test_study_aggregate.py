"""Aggregation from synthetic records: 'no run' cells, failed cells, the paper's numbers."""
from vitdet_lib.study import aggregate as agg
from vitdet_lib.study import plots
from vitdet_lib.study.records import make_record


def _ft(run, init, ap, status="success", **params):
    p = {"init": init, "size": "S", "init_kind": init, "serves": ["T1", "F2", "T4", "F3"], **params}
    r = make_record(run, status, parameters=p,
                    metrics={"bbox/AP": ap, "segm/AP": ap / 2, "rel_pos_init": "zero",
                             "abs_pos_init": "pretrained"} if status == "success" else {})
    r["eval_history"] = [{"epoch": 0.5, "bbox/AP": ap / 2}, {"epoch": 1.0, "bbox/AP": ap}] if ap else []
    return r


RECORDS = [_ft("ft-S-random", "random", 12.34), _ft("ft-S-mae", "mae", 20.0, pretrain_epochs=2),
           _ft("ft-S-beit", "beit", None, status="failed")]


def test_table1_has_no_run_failed_and_paper_numbers(tmp_path):
    df = agg.table1(RECORDS, sizes=["S"])
    row = df.set_index("init")
    assert row.loc["random", "ours S APbox"] == "12.3"
    assert row.loc["mae", "ours S APmask"] == "10.0"
    assert row.loc["supervised", "ours S APbox"] == agg.NO_RUN
    assert row.loc["beit", "ours S APbox"] == "failed"
    assert row.loc["random", "paper ViT-B APbox"] == "48.9"
    assert row.loc["mae", "paper ViT-L APbox"] == "53.3"
    md = agg.save_table(df, tmp_path, "table1", "Table 1", "NOT MEANINGFUL", "T1")
    text = md.read_text()
    assert "no run" in text and "NOT MEANINGFUL" in text and "paper text" in text
    assert (tmp_path / "table1.csv").read_text().startswith("init,")


def test_lower_confidence_numbers_are_marked():
    f2 = agg.paper_convergence()
    assert set(f2["confidence"]) == {"lower"}
    t5 = agg.table5([])
    assert t5.iloc[0]["model"] == agg.NO_RUN and "lower confidence" in t5.attrs["paper_note"]


def test_every_table_and_figure_renders_from_few_records(tmp_path):
    for df in (agg.table2(RECORDS), agg.table3(RECORDS), agg.table4(RECORDS, ["mae"]),
               agg.tide_table(RECORDS), *agg.tuning(RECORDS)):
        assert agg.to_markdown(df)
    t3 = agg.table3(RECORDS)
    assert (t3["APbox"] == agg.NO_RUN).all() and t3.iloc[1]["paper APbox (ViT-L)"] == "53.3"
    t4 = agg.table4(RECORDS, ["mae"]).set_index("rel-pos")
    assert t4.loc["zero", "abs pretrained"] == "20.0" and t4.loc["none", "abs none"] == agg.NO_RUN
    figs = [plots.figure2(agg.convergence(RECORDS), agg.paper_convergence(), ["S", "M"], "note"),
            plots.figure3(agg.mae_epochs(RECORDS)), plots.figure4(agg.tide_table(RECORDS)),
            plots.tuning_figure(*agg.tuning(RECORDS))]
    for i, fig in enumerate(figs):
        png, svg = plots.save_figure(fig, tmp_path, f"f{i}")
        assert png.stat().st_size > 1000 and svg.is_file()
    assert len(agg.mae_epochs(RECORDS)) == 1


def test_tide_reads_our_gt_from_path_and_torchrun_command(tmp_path):
    import json

    from vitdet_lib.study.tasks import tide_errors, torchrun_command

    images = [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in (1, 2)]
    anns = [{"id": k + 1, "image_id": 1 + k % 2, "category_id": 1 + k % 2, "iscrowd": 0,
             "bbox": [5 + 10 * k, 5, 12, 14], "area": 168,
             "segmentation": [[5 + 10 * k, 5, 17 + 10 * k, 5, 17 + 10 * k, 19, 5 + 10 * k, 19]]}
            for k in range(4)]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    preds = [{"image_id": a["image_id"], "category_id": 3 - a["category_id"] if a["id"] == 1
              else a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in anns]
    res = tmp_path / "res.json"
    res.write_text(json.dumps(preds))
    errors = tide_errors(gt, res, "t")
    assert set(errors) == {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"} and errors["Cls"] > 0

    cmd = torchrun_command({"kind": "torchrun", "nproc_per_node": 8, "nnodes": 2,
                            "rdzv_endpoint": "host:29500"}, ["train", "x.yaml"])
    assert "--nproc_per_node=8" in cmd and "--rdzv_endpoint=host:29500" in cmd
    assert cmd[-4:] == ["-m", "vitdet_lib.cli", "train", "x.yaml"] or cmd[-3:] == [
        "vitdet_lib.cli", "train", "x.yaml"]
