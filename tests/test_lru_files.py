"""embedlab.lru.LRU (the bounded mapping behind the in-memory caches) and embedlab.atomic (whole-file writes)."""
import numpy as np

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
    import pytest

    from embedlab import atomic

    p = tmp_path / "sub" / "x.npz"
    atomic.write_bytes(p, b"old")
    with pytest.raises(RuntimeError), atomic.atomic_path(p) as tmp:
        assert tmp.parent == p.parent and tmp.name.endswith(".tmp.npz") and tmp.name.startswith(".x.npz.")
        tmp.write_bytes(b"half")
        raise RuntimeError("killed half-way")
    assert p.read_bytes() == b"old" and sorted(f.name for f in p.parent.iterdir()) == ["x.npz"]
    atomic.write_text(p, "new")
    assert p.read_text() == "new" and len(list(p.parent.iterdir())) == 1
