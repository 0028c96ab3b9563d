"""embedlab.lru.LRU (the bounded mapping behind the in-memory caches) and embedlab.files (whole-file writes, folder
swaps, work memoised by a file's size and mtime, data files plain or compressed)."""
import gzip
import hashlib
import lzma
import os

import numpy as np
import pytest

from embedlab import files

from embedlab.lru import LRU


def test_forgets_the_least_recently_used_by_count():
    c = LRU(max_items=2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a use: b is now the oldest
    c.put("c", 3)
    assert list(c) == ["a", "c"] and c.get("b") is None and c.get("b", 0) == 0
    c.put("a", 9)  # replacing counts as a use
    c.put("d", 4)
    assert list(c) == ["a", "d"] and c.get("a") == 9


def test_forgets_by_total_size_even_the_new_entry_when_it_alone_is_too_big():
    c = LRU(max_size=100, size=lambda a: a.nbytes)
    c.put("a", np.zeros(10, np.float32))  # 40 bytes
    c.put("b", np.zeros(10, np.float32))
    c.put("a", np.zeros(5, np.float32))  # replaced: 20 + 40
    c.put("c", np.zeros(10, np.float32))  # 100 in all: kept
    assert list(c) == ["b", "a", "c"]
    c.put("d", np.zeros(1, np.float32))  # 104: b goes
    assert list(c) == ["a", "c", "d"]
    c.put("huge", np.zeros(100, np.float32))
    assert len(c) == 0 and c._total == 0
    c.put("e", np.zeros(2, np.float32))
    c.clear()
    assert len(c) == 0 and c._total == 0 and "e" not in c


def test_atomic_path_replaces_whole_or_leaves_the_old_file(tmp_path):
    p = tmp_path / "sub" / "x.npz"
    files.write_bytes(p, b"old")
    with pytest.raises(RuntimeError), files.atomic_path(p) as tmp:
        assert tmp.parent == p.parent and tmp.name.endswith(".tmp.npz") and tmp.name.startswith(".x.npz.")
        tmp.write_bytes(b"half")
        raise RuntimeError("killed half-way")
    assert p.read_bytes() == b"old" and sorted(f.name for f in p.parent.iterdir()) == ["x.npz"]
    files.write_text(p, "new")
    assert p.read_text() == "new" and len(list(p.parent.iterdir())) == 1


def test_hash_is_memoised_by_path_size_mtime(tmp_path, monkeypatch):
    from embedlab import files

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 10)
    calls = []
    real = files._digest
    monkeypatch.setattr(files, "_digest", lambda p: calls.append(p) or real(p))
    files.sha256_file.cache_clear()
    h1, h2 = files.sha256_file(f), files.sha256_file(f)
    assert h1 == h2 == hashlib.sha256(b"a" * 10).hexdigest() and len(calls) == 1
    f.write_bytes(b"b" * 11)
    assert files.sha256_file(f) == hashlib.sha256(b"b" * 11).hexdigest() and len(calls) == 2


def test_swap_folder_replaces_whole_and_a_failed_stage_leaves_the_old_folder(tmp_path):
    dst = tmp_path / "out"
    with files.staged_folder(dst) as tmp:
        (tmp / "a").write_text("1")
    assert sorted(os.listdir(dst)) == ["a"]
    with pytest.raises(RuntimeError), files.staged_folder(dst) as tmp:
        (tmp / "b").write_text("half")
        raise RuntimeError("killed half-way")
    assert sorted(os.listdir(dst)) == ["a"] and sorted(os.listdir(tmp_path)) == ["out"]
    new = tmp_path / "new"
    new.mkdir()
    (new / "c").write_text("3")
    files.swap_folder(new, dst)
    assert sorted(os.listdir(dst)) == ["c"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_replace_files_keeps_the_folders_other_files(tmp_path):
    (tmp_path / "keep.json").write_text("k")
    (tmp_path / "w").write_text("old")
    files.replace_files(tmp_path, lambda tmp: (tmp / "w").write_text("new"))
    assert sorted(os.listdir(tmp_path)) == ["keep.json", "w"] and (tmp_path / "w").read_text() == "new"


def test_memo_by_signature_redoes_the_work_when_a_folders_files_change(tmp_path):
    calls = []

    @files.memo_by_signature(maxsize=4)
    def count(path, tag):
        calls.append(tag)
        return len(os.listdir(path))

    (tmp_path / "a").write_text("1")
    assert count(tmp_path, "x") == count(tmp_path, "x") == 1 and calls == ["x"]
    (tmp_path / "b").write_text("2")
    assert count(tmp_path, "x") == 2 and count(tmp_path, "y") == 2 and calls == ["x", "x", "y"]
    assert files.signature(tmp_path / "missing") is None


def test_read_data_reads_the_compressed_copy_when_only_it_ships(tmp_path):
    text = "a\tb\r\nc\td\n"
    (tmp_path / "x.tsv.xz").write_bytes(lzma.compress(text.encode()))
    (tmp_path / "y.txt.gz").write_bytes(gzip.compress(b"plain"))
    (tmp_path / "z.txt").write_bytes(b"as is")
    assert files.read_data(tmp_path / "x.tsv") == text.encode()
    with files.open_data(tmp_path / "x.tsv") as f:
        assert f.read() == text  # line endings as stored, for csv
    assert files.read_data(tmp_path / "y.txt") == b"plain" and files.read_data(tmp_path / "z.txt") == b"as is"
    (tmp_path / "bad.txt.xz").write_bytes(b"\xfd7zXZ\x00 broken")
    with pytest.raises(files.DataError, match="corrupt compressed file"):
        files.read_data(tmp_path / "bad.txt")
