"""Map tab: uploads, twin maps and their caches (tiny random models)."""

import numpy as np
import pytest

from embedlab.features import common, maps
from embedlab.side import parse_side
from embedlab.lab import Lab
from tiny import A


def test_upload_corpus_validation(tmp_path):
    ok = tmp_path / "c.csv"
    ok.write_text("text,label\n" + "\n".join(f"sentence {i},L{i % 2}" for i in range(10)))
    corpus, note = maps.upload_corpus(str(ok))
    assert len(corpus) == 10 and set(corpus.labels) == {"L0", "L1"} and "10 texts" in note
    for content, msg in [(b"\x00\x01\x02binary", "binary"), (b"a\nb\n", "at least 4"), (b"\xff\xfe\xfd", "not UTF-8"),
                         (b"x\n" * 25_000, "limit"), (b"", "empty")]:
        p = tmp_path / "u.txt"
        p.write_bytes(content)
        with pytest.raises(common.UserError, match=msg):
            maps.upload_corpus(str(p))
    nocol = tmp_path / "n.csv"
    nocol.write_text("sentence,label\na,b\nc,d\ne,f\ng,h\n")
    with pytest.raises(common.UserError, match="'text' column"):
        maps.upload_corpus(str(nocol))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_map_cache_file_is_detected_and_rebuilt(lab, adapter, damage):
    from embedlab.corpora import builtin

    sides = common.sides(A, adapter)
    first = maps.twin_map(lab, *sides, builtin("topics"))
    path = next((lab.cache_dir / "maps").glob("*.npz"))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF  # inside a member: its CRC no longer matches
    else:
        data = bytearray(b"not a zip file at all" * 10)
    path.write_bytes(bytes(data))
    fresh = Lab(cache_dir=lab.cache_dir, seed_dir=None)
    fresh.encoder = lab.encoder
    again = maps.twin_map(fresh, *sides, builtin("topics"))
    assert again["xy_a"].shape == first["xy_a"].shape
    assert np.load(path)["base_xy"].shape == first["xy_a"].shape  # rewritten whole


def test_an_upload_that_collapses_to_under_4_distinct_texts_is_refused(tmp_path):
    p = tmp_path / "dups.txt"
    p.write_text("x\nx\nx\nx\n  x  \ny\n")
    with pytest.raises(common.UserError, match="found 2 distinct non-empty text.*at least 4"):
        maps.upload_corpus(str(p))


def test_uploaded_corpora_cache_is_capped_least_recently_used_first(lab, tmp_path):
    import os

    from embedlab.corpora import builtin, parse_corpus

    s = (parse_side(A),) * 2
    lab.corpus_vectors(*s, builtin("topics"))  # built-in: never evicted
    ups = [parse_corpus("\n".join(f"text {j} of upload {i}" for j in range(300)), f"u{i}.txt") for i in range(3)]
    lab.corpus_vectors(*s, ups[0])
    one = sum(f.stat().st_size for f in lab.embeddings.uploads.rglob("*") if f.is_file())
    lab.embeddings.upload_bytes = int(2.5 * one)  # room for two uploads
    lab.corpus_vectors(*s, ups[1])
    os.utime(next(lab.embeddings.uploads.glob("*")), (1, 1))  # make the folder ordering unambiguous
    for d in lab.embeddings.uploads.iterdir():
        os.utime(d / "manifest.json", (1, 1) if ups[1].sha256[:16] in d.name else (2, 2))
    lab.embeddings._memory.clear()
    lab.corpus_vectors(*s, ups[0])  # read again: now the most recently used
    lab.corpus_vectors(*s, ups[2])
    kept = sorted(d.name[-16:] for d in lab.embeddings.uploads.iterdir())
    assert kept == sorted([ups[0].sha256[:16], ups[2].sha256[:16]])
    assert [d for d in (lab.cache_dir / "embeddings").iterdir() if d.name != "uploads"]  # topics still cached
    maps.twin_map(lab, *s, ups[2])
    assert not (lab.cache_dir / "maps").exists() or not list((lab.cache_dir / "maps").iterdir())  # upload maps: memory only


def test_a_map_in_memory_does_not_wait_behind_a_map_being_built(lab, adapter, monkeypatch):
    """bench/load.py found users' cached maps queued behind a 20,000-text upload's map: only building waits."""
    import threading

    from embedlab.corpora import builtin

    s = common.sides(A, adapter)
    ready = maps.twin_map(lab, *s, builtin("topics"))  # now in memory
    building, release = threading.Event(), threading.Event()
    real = maps.sample_vectors

    def slow(*a, **k):  # a long build: holds the build lock until released
        building.set()
        release.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(maps, "sample_vectors", slow)
    t = threading.Thread(target=lambda: maps.twin_map(lab, *s, builtin("snli")), daemon=True)
    t.start()
    try:
        assert building.wait(30)
        got = {}
        reader = threading.Thread(target=lambda: got.setdefault("m", maps.twin_map(lab, *s, builtin("topics"))), daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "a map from memory waited for another map's build"
        assert got["m"] is ready
    finally:
        release.set()
        t.join(120)
    assert not t.is_alive()
