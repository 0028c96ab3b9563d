import numpy as np
import pytest

from embedlab import index
from embedlab.cache import EmbeddingCache, corpus_sha256
from embedlab.projection import AlignedUMAP, knn, neighbour_overlap, place_by_neighbours, procrustes
from tiny import tiny_encoder


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(x, q, k):
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


def test_exact_index_equals_brute_force():
    x, q = unit(500, 32), unit(20, 32, seed=1)
    idx = index.build(x)
    scores, ids = idx.search(q, 10)
    assert idx.kind == "exact" and (ids == brute(x, q, 10)).all()
    assert np.allclose(scores, np.take_along_axis(q @ x.T, ids, axis=1), atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_report_recall(kind):
    x = unit(3000, 32)
    idx = index.build(x, kind=kind)
    assert idx.kind == kind and 0.8 <= idx.recall_at_10 <= 1.0


def test_index_save_load(tmp_path):
    x = unit(100, 16)
    idx = index.build(x)
    index.save(idx, tmp_path / "i.faiss")
    back = index.load(tmp_path / "i.faiss", "exact")
    assert (back.search(x[:3], 5)[1] == idx.search(x[:3], 5)[1]).all()


def test_search_k_larger_than_corpus():
    x = unit(3, 8)
    scores, ids = index.build(x).search(x[:1], 10)
    assert ids.shape == (1, 3)


def test_procrustes_recovers_rotation_scale_shift():
    a = np.random.default_rng(0).standard_normal((50, 2))
    t = np.deg2rad(30)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    b = 2.5 * a @ R + np.array([3.0, -1.0])
    assert np.allclose(procrustes(a, b)(a), b, atol=1e-4)


def test_aligned_umap_keeps_clusters_and_aligns():
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(0)
    centers = unit(4, 32, seed=3) * 4
    x = np.concatenate([c + 0.3 * rng.standard_normal((40, 32)) for c in centers]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = AlignedUMAP(seed=7).fit(x, x + 0.01 * unit(160, 32, seed=9))
    assert m.base_xy.shape == (160, 2) and trustworthiness(x, m.base_xy, n_neighbors=10) > 0.85
    # nearly identical inputs -> nearly identical (aligned) layouts
    spread = np.ptp(m.base_xy, axis=0).max()
    assert np.median(np.linalg.norm(m.base_xy - m.tuned_xy, axis=1)) < 0.15 * spread
    same = AlignedUMAP(seed=7).fit(x, x, same=True)
    assert same.tuned_xy is same.base_xy and m.params["seed"] == 7


def test_neighbour_overlap_and_placement():
    x = unit(60, 16)
    jac, nb, nt = neighbour_overlap(x, x, k=5)
    assert np.allclose(jac, 1.0) and nb.shape == (60, 5) and (nb == knn(x, 5)).all()
    assert all(i not in row for i, row in enumerate(nb))
    jac2, *_ = neighbour_overlap(x, unit(60, 16, seed=5), k=5)
    assert jac2.mean() < 0.5
    xy = np.random.default_rng(0).standard_normal((60, 2)).astype(np.float32)
    assert np.allclose(place_by_neighbours(x[:3], x, xy, k=1), xy[:3], atol=1e-5)


def test_embedding_cache_reuses_detects_corruption_and_resumes(tmp_path, monkeypatch):
    import embedlab.cache as cache_mod

    monkeypatch.setattr(cache_mod, "CHUNK", 4)
    enc = tiny_encoder("llama")
    texts = [f"a man {w}" for w in "is playing eating running the dog cat park food guitar".split()]
    cache = EmbeddingCache(tmp_path, memory_bytes=0)  # disk behaviour only
    calls = []
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda t, **k: (calls.append(len(t)), real(t, **k))[1])
    first = cache.get_or_compute(enc, texts, use_adapter=False)
    assert first.shape == (10, 32) and sum(calls) == 10
    calls.clear()
    assert np.array_equal(cache.get_or_compute(enc, texts, use_adapter=False), first) and not calls
    folder = next(tmp_path.iterdir())
    part = folder / "part-00001.npy"
    data = bytearray(part.read_bytes())
    data[-3] ^= 0xFF
    part.write_bytes(bytes(data))  # corrupt one chunk: only it is recomputed
    (folder / "part-00002.npy").unlink()  # and a missing one (an interrupted run)
    again = cache.get_or_compute(enc, texts, use_adapter=False)
    assert np.allclose(again, first, atol=1e-6) and sum(calls) == 6
    assert corpus_sha256(["ab", "c"]) != corpus_sha256(["a", "bc"])


def test_seed_cache_serves_shipped_vectors_and_memory_tier(tmp_path, monkeypatch):
    import embedlab.cache as cache_mod

    monkeypatch.setattr(cache_mod, "CHUNK", 4)
    enc = tiny_encoder("llama")
    texts = [f"sentence number {i}" for i in range(10)]
    builder = EmbeddingCache(tmp_path / "build")
    key = builder.export(enc, texts, False, tmp_path / "seed")
    exact = builder.get_or_compute(enc, texts, use_adapter=False)
    seed_files = sorted((tmp_path / "seed" / key).glob("part-*.npy"))
    assert len(seed_files) == 3 and np.load(seed_files[0]).dtype == np.float16

    calls = []
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda t, **k: (calls.append(len(t)), real(t, **k))[1])
    user = EmbeddingCache(tmp_path / "user", seeds=[tmp_path / "seed"])
    assert user.peek(enc, texts[:5], use_adapter=False) is None  # another corpus: not cached, not computed
    got = user.get_or_compute(enc, texts, use_adapter=False)
    assert not calls and got.dtype == np.float32 and np.allclose(got, exact, atol=2e-3)
    assert not got.flags.writeable  # shared between requests
    assert user.get_or_compute(enc, texts, use_adapter=False) is got  # memory tier
    assert user.peek(enc, texts, use_adapter=False) is got

    # a corrupt seed chunk is ignored and only that chunk is computed (into the user cache, not the seed)
    data = bytearray(seed_files[1].read_bytes())
    data[-2] ^= 0xFF
    seed_files[1].write_bytes(bytes(data))
    fresh = EmbeddingCache(tmp_path / "user2", seeds=[tmp_path / "seed"])
    assert fresh.peek(enc, texts, use_adapter=False) is None
    again = fresh.get_or_compute(enc, texts, use_adapter=False)
    assert sum(calls) == 4 and np.allclose(again, exact, atol=2e-3)
    assert seed_files[1].read_bytes() == bytes(data)
