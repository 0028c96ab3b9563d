"""Benchmarks tab: the results table, the training records, evaluations run now."""
import json

import pytest

from embedlab.features import common, evaluate
from tiny import A


def test_results_table_has_paper_columns_and_ours():
    df = evaluate.results_table()
    assert list(df["task"])[-1] == "average" and "MiniCPM-2B paper after" in df.columns
    assert df.loc[df.task == "average", "MiniCPM-2B paper after"].item() == 83.84
    assert evaluate.results_chart(df) is not None


def test_training_records_show_every_shipped_adapter_and_notes(tmp_path):
    """One row per shipped adapter; the records' notes (a paragraph each) folded below the table, not a column
    (it made the table wider than a 1400 px page)."""
    _, df, notes = evaluate.training_records()
    assert "smollm2-135m/nli-cft" in set(df["adapter"]) and df["device"].notna().all() and "note" not in df
    assert notes.startswith("<details>") and "**gemma3-270m/nli-cft**: Trained 2026-" in notes  # its training.json's note
    rec = {"device": "CPU", "training": {"steps": 3, "loss_curve": [[1, 2.0], [2, 1.5]], "wall_seconds": 120},
           "config": {"lr": 1e-3}, "note": "paused *mid-run*", "dev": {"STSBenchmark-dev": 72.25712}}
    for name, r in [("a", rec), ("b", {k: v for k, v in rec.items() if k != "note"})]:
        (tmp_path / "m" / name).mkdir(parents=True)
        (tmp_path / "m" / name / "training.json").write_text(json.dumps(r))
    (tmp_path / "m" / "c").mkdir()
    (tmp_path / "m" / "c" / "training.json").write_text("{not json")  # skipped, not fatal
    fig, df, notes = evaluate.training_records(tmp_path)
    assert list(df["adapter"]) == ["m/a", "m/b"] and "note" not in df
    assert "Notes on 1 of these runs" in notes and r"**m/a**: paused \*mid-run\*" in notes and "m/b" not in notes
    assert list(df["minutes"]) == [2.0, 2.0] and list(df["STS-B dev"])[0] == 72.26 and fig is not None
    _, df, notes = evaluate.training_records(tmp_path / "nothing")
    assert df.empty and notes == ""


def test_full_evaluation_only_where_the_host_opts_in(lab, monkeypatch):
    import embedlab.evaluation as ev

    limits = []

    def fake_run_eval(enc, tasks, adapter=None, limit=None, progress=None):
        limits.append(limit)
        return {"tasks": {t: 50.0 for t in tasks}, "average": 50.0, "pairs": {t: 10 for t in tasks}, "seconds": 1.0}

    monkeypatch.setattr(ev, "run_eval", fake_run_eval)
    monkeypatch.delenv("EMBEDLAB_FULL_EVAL", raising=False)
    _, note, _ = evaluate.run_evaluation(lab, A, A, ["STS12"], False)
    assert limits[-1] == evaluate.QUICK_PAIRS and "Full-set evaluation is off on this host" in note and "EMBEDLAB_FULL_EVAL=1" in note
    monkeypatch.setenv("EMBEDLAB_FULL_EVAL", "1")
    _, note, _ = evaluate.run_evaluation(lab, A, A, ["STS12"], False)
    assert limits[-1] is None and "Quick" not in note
    with pytest.raises(common.UserError, match="unknown task 'STS99'"):
        evaluate.run_evaluation(lab, A, A, ["STS12", "STS99"], True)
