"""embedlab.lru.LRU: the bounded mapping behind the in-memory caches."""
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
