"""The app's sweep of its Gradio folder: old files (except those Gradio keeps), then old empty folders;
never anything recent, never the folder itself."""
from __future__ import annotations

import time

from embedlab.sweep import sweep


def test_sweep_removes_old_files_and_empty_folders_only(tmp_path):
    root = tmp_path / "gradio"
    (root / "result").mkdir(parents=True)
    (root / "result" / "pairs.csv").write_text("a,b\n")  # an output Gradio has not deleted yet
    (root / "emptied").mkdir()  # a hash folder whose file Gradio deleted
    (root / "kept").mkdir()
    (root / "kept" / "example.txt").write_text("x")  # keep_in_cache: Gradio serves it for good
    (root / "tmpstaged").write_bytes(b"")  # an upload's staging file, empty after the move
    keep = {str(root / "kept" / "example.txt")}

    assert sweep(root, age_s=120, keep=keep) == (0, 0)  # everything is new
    # ten minutes on (ctime cannot be set back, so the clock goes forward): all of it is old
    assert sweep(root, age_s=120, keep=keep, now=time.time() + 600) == (2, 2)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["kept", "kept/example.txt"]
    assert root.is_dir()


def test_sweep_of_a_missing_folder_does_nothing(tmp_path):
    assert sweep(tmp_path / "not-there", age_s=0) == (0, 0)
