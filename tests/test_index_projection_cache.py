import numpy as np
import pytest

from embedlab import index
from embedlab.cache import EmbeddingCache, corpus_sha256
from embedlab.projection import (MAP_VERSION, TwinMaps, fill_disconnected, alignment_report, knn,
                                 neighbour_overlap, place_by_neighbours, procrustes)
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


def test_procrustes_scale_is_least_squares_not_norm_ratio():
    # noisy targets: |b|/|a| counts the noise as scale; the least-squares scale does not
    rng = np.random.default_rng(1)
    a = rng.standard_normal((200, 2))
    t = np.deg2rad(-50)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    b = 2.0 * a @ R + 1.5 * rng.standard_normal((200, 2))
    fit = procrustes(a, b)
    ac, bc = a - a.mean(0), b - b.mean(0)
    ratio = np.linalg.norm(bc) / np.linalg.norm(ac)
    assert fit.s < 0.9 * ratio and abs(fit.s - 2.0) < 0.3 and np.allclose(fit.R, R, atol=0.05)

    def sse(s):
        return float(np.sum((ac @ fit.R * s - bc) ** 2))
    assert sse(fit.s) < sse(ratio) and sse(fit.s) <= min(sse(fit.s * 0.99), sse(fit.s * 1.01))


def clusters(n_per=40, d=32, seed=0):
    """4 well-separated clusters of n_per L2-normalised (d,) points, and each point's cluster."""
    rng = np.random.default_rng(seed)
    centers = unit(4, d, seed=seed + 3) * 4
    x = np.concatenate([c + 0.3 * rng.standard_normal((n_per, d)) for c in centers]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(4), n_per), centers


# Thresholds below have wide margins over what umap-learn 0.5.12 gives with numba 0.68.1 / llvmlite 0.50.0 /
# pynndescent 0.7.0 (the lock) and with numba 0.68.0 / pynndescent 0.5.13; seeded, so umap runs
# single-threaded and gives the same layouts on every run. Measured values are in the comments.
def test_twin_maps_keep_clusters_and_align():
    from sklearn.manifold import trustworthiness

    x, _, _ = clusters()
    tuned = x + 0.01 * unit(160, 32, seed=9)
    m = TwinMaps(seed=7).fit(x, tuned)
    assert m.xy_a.shape == m.xy_b.shape == (160, 2) and m.xy_a.dtype == np.float32
    r = alignment_report(x, tuned, m.xy_a, m.xy_b)
    # each layout keeps local structure (measured 0.95 for both)
    assert r["trust_base"] > 0.85 and r["trust_tuned"] > 0.85
    assert trustworthiness(x, m.xy_a, n_neighbors=10) > 0.85
    # nearly identical inputs -> nearly identical (aligned) layouts (measured drift 0.02 of the spread; the
    # init-at-base + Procrustes method gives 0.40 here and fails)
    assert r["kept_drift"] < 0.15 and r["moved_drift"] < 0.25
    same = TwinMaps(seed=7).fit(x, x, same=True)
    assert same.xy_b is same.xy_a and same.params["method"].startswith("UMAP of base")
    # the cache-key tag changes with the method and every setting
    tags = {TwinMaps(seed=7).tag, TwinMaps(seed=8).tag, TwinMaps(seed=7, method="init-procrustes").tag,
            TwinMaps(seed=7, alignment_regularisation=0.01).tag, TwinMaps(seed=7, n_neighbors=10).tag}
    assert len(tags) == 5 and m.params["tag"] == TwinMaps(seed=7).tag
    assert m.params["seed"] == 7 and m.params["version"] == MAP_VERSION["aligned-umap"]
    assert "AlignedUMAP" in m.params["method"]


def test_twin_maps_move_what_the_model_moved():
    """Texts whose neighbourhood changed between the models move between the maps; the rest stay."""
    x, label, centers = clusters(seed=1)
    rng = np.random.default_rng(2)
    tuned = x.copy()
    moved = np.arange(0, 12)  # 12 texts of cluster 0 now sit in cluster 2
    tuned[moved] = centers[2] + 0.3 * rng.standard_normal((12, 32))
    tuned /= np.linalg.norm(tuned, axis=1, keepdims=True)
    m = TwinMaps(seed=3).fit(x, tuned)
    spread = np.sqrt(np.mean(np.sum((m.xy_a - m.xy_a.mean(0)) ** 2, 1)))
    drift = np.linalg.norm(m.xy_a - m.xy_b, axis=1) / spread
    stay = np.setdiff1d(np.arange(160), moved)
    # moved texts land near cluster 2's other texts in the tuned map, and far from where they were
    # (measured: 0.10 spread from cluster 2's centre; drift 1.19 moved vs 0.03 stayed)
    c2 = m.xy_b[(label == 2)].mean(0)
    assert np.median(np.linalg.norm(m.xy_b[moved] - c2, axis=1)) < 0.5 * spread
    assert np.median(drift[moved]) > 3 * np.median(drift[stay]) and np.median(drift[stay]) < 0.3


@pytest.mark.parametrize("n", [4, 7])  # smallest map; n_neighbors > n - 2 (random init)
def test_twin_maps_small_corpora(n):
    x = unit(n, 16, seed=n)
    t = unit(n, 16, seed=n + 1)
    for method in ("aligned-umap", "init-procrustes"):
        m = TwinMaps(seed=1, method=method).fit(x, t)
        assert m.xy_a.shape == m.xy_b.shape == (n, 2) and np.isfinite(m.xy_b).all()
        assert np.isfinite(m.xy_a).all()
    with pytest.raises(ValueError, match="at least 4"):
        TwinMaps().fit(x[:3], t[:3])
    with pytest.raises(ValueError, match="unknown map method"):
        TwinMaps(method="tsne").fit(x, t)


def test_init_procrustes_method_still_aligns():
    x, _, _ = clusters()
    m = TwinMaps(seed=7, method="init-procrustes").fit(x, x + 0.01 * unit(160, 32, seed=9))
    r = alignment_report(x, x, m.xy_a, m.xy_b)
    assert r["trust_base"] > 0.85 and m.params["version"] == MAP_VERSION["init-procrustes"]
    assert "Procrustes" in m.params["method"]


def test_disconnected_texts_are_placed_by_neighbours():
    v = unit(10, 8)
    xy = np.random.default_rng(0).standard_normal((10, 2)).astype(np.float32)
    holed = xy.copy()
    holed[3] = np.nan
    out = fill_disconnected(v, holed)
    assert np.isfinite(out).all() and np.allclose(out[[0, 1, 2, 4]], xy[[0, 1, 2, 4]])
    assert np.allclose(out[3], place_by_neighbours(v[3:4], np.delete(v, 3, 0), np.delete(xy, 3, 0))[0])
    with pytest.raises(ValueError):
        fill_disconnected(v, np.full((10, 2), np.nan))


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
    real = enc.embed
    monkeypatch.setattr(enc, "embed", lambda t, a=None, **k: (calls.append(len(t)), real(t, a, **k))[1])
    first = cache.get_or_compute(enc, texts, adapter=None)
    assert first.shape == (10, 32) and sum(calls) == 10
    calls.clear()
    assert np.array_equal(cache.get_or_compute(enc, texts, adapter=None), first) and not calls
    folder = next(tmp_path.iterdir())
    part = folder / "part-00001.npy"
    data = bytearray(part.read_bytes())
    data[-3] ^= 0xFF
    part.write_bytes(bytes(data))  # corrupt one chunk: only it is recomputed
    (folder / "part-00002.npy").unlink()  # and a missing one (an interrupted run)
    again = cache.get_or_compute(enc, texts, adapter=None)
    assert np.allclose(again, first, atol=1e-6) and sum(calls) == 6
    assert corpus_sha256(["ab", "c"]) != corpus_sha256(["a", "bc"])


def test_seed_cache_serves_shipped_vectors_and_memory_tier(tmp_path, monkeypatch):
    import embedlab.cache as cache_mod

    monkeypatch.setattr(cache_mod, "CHUNK", 4)
    enc = tiny_encoder("llama")
    texts = [f"sentence number {i}" for i in range(10)]
    builder = EmbeddingCache(tmp_path / "build")
    key = builder.export(enc, texts, None, tmp_path / "seed")
    exact = builder.get_or_compute(enc, texts, adapter=None)
    seed_files = sorted((tmp_path / "seed" / key).glob("part-*"))
    assert len(seed_files) == 3 and all(f.suffix == ".npz" for f in seed_files)
    with np.load(seed_files[0]) as z:  # 8-bit codes, a float32 scale per row, the column statistics
        assert z["q"].dtype == np.int8 and z["q"].shape == (4, enc.dim) and z["scale"].shape == (4,)
    close = lambda a, b: (np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1) >= 0.9999).all()  # noqa: E731

    calls = []
    real = enc.embed
    monkeypatch.setattr(enc, "embed", lambda t, a=None, **k: (calls.append(len(t)), real(t, a, **k))[1])
    user = EmbeddingCache(tmp_path / "user", seeds=[tmp_path / "seed"])
    assert user.peek(enc, texts[:5], adapter=None) is None  # another corpus: not cached, not computed
    got = user.get_or_compute(enc, texts, adapter=None)
    assert not calls and got.dtype == np.float32 and close(got, exact)
    assert not got.flags.writeable  # shared between requests
    assert user.get_or_compute(enc, texts, adapter=None) is got  # memory tier
    assert user.peek(enc, texts, adapter=None) is got

    # a corrupt seed chunk is ignored and only that chunk is computed (into the user cache, not the seed)
    data = bytearray(seed_files[1].read_bytes())
    data[-2] ^= 0xFF
    seed_files[1].write_bytes(bytes(data))
    fresh = EmbeddingCache(tmp_path / "user2", seeds=[tmp_path / "seed"])
    assert fresh.peek(enc, texts, adapter=None) is None
    again = fresh.get_or_compute(enc, texts, adapter=None)
    assert sum(calls) == 4 and close(again, exact)
    assert seed_files[1].read_bytes() == bytes(data)


def test_seed_format_keeps_cosines_and_is_the_only_one_read(tmp_path):
    """quantize: int8 of standardised columns, a scale per row; vectors with a shared direction and a few huge
    dimensions (a causal LM's) keep cosine >= 0.9999. A seed folder of float16 .npy chunks (the old format) is
    not read: its vectors are computed."""
    from embedlab import files
    from embedlab.cache import dequantize, embedding_key, quantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 640)).astype(np.float32) + 3 * rng.standard_normal(640).astype(np.float32)
    x[:, [7, 300]] *= 60  # outlier dimensions
    r = dequantize(**quantize(x))
    cos = np.einsum("ij,ij->i", r, x) / np.linalg.norm(r, axis=1) / np.linalg.norm(x, axis=1)
    assert r.dtype == np.float32 and cos.min() >= 0.9999
    one = dequantize(**quantize(x[:1]))  # a chunk of one row: every column constant
    assert np.allclose(one, x[:1], atol=1e-4)

    enc = tiny_encoder("llama")
    texts = ["a", "b", "c"]
    key = embedding_key(enc, None, corpus_sha256(texts))
    old = tmp_path / "seed" / key
    old.mkdir(parents=True)
    np.save(old / "part-00000.npy", np.zeros((3, enc.dim), np.float16))
    import hashlib
    files.write_json(old / "manifest.json", {"part-00000.npy": hashlib.sha256((old / "part-00000.npy").read_bytes()).hexdigest()})
    user = EmbeddingCache(tmp_path / "user", seeds=[tmp_path / "seed"])
    assert user.peek(enc, texts) is None and np.abs(user.get_or_compute(enc, texts)).sum() > 0


def test_served_layouts_run_in_a_process_of_their_own_and_come_out_the_same():
    """The app lays maps out in one child process (UMAP holds the GIL: in a thread it stalled every forward
    pass): the same layouts as in the calling process; the child is nicer, never imports torch or the app's
    script, and one that dies is replaced (the call then says so in a sentence)."""
    import os
    import signal

    import psutil

    from embedlab import projection

    x, _, _ = clusters(n_per=12)
    tuned = x + 0.01 * unit(48, 32, seed=9)
    here = TwinMaps(seed=7).fit(x, tuned)
    projection.layouts_in_a_process()
    try:
        child = psutil.Process(projection.laid_out(os.getpid))
        assert child.pid != os.getpid() and child.nice() == psutil.Process().nice() + projection.LAYOUT_NICE
        there = TwinMaps(seed=7).fit(x, tuned)
        np.testing.assert_array_equal(there.xy_a, here.xy_a)
        np.testing.assert_array_equal(there.xy_b, here.xy_b)
        assert not any("torch" in m.path for m in child.memory_maps())
        os.kill(child.pid, signal.SIGKILL)  # as the kernel does when memory runs out
        child.wait(10)
        with pytest.raises(projection.LayoutError, match="map layout failed on the server"):
            projection.laid_out(os.getpid)
        assert projection.laid_out(os.getpid) not in (child.pid, os.getpid())
    finally:
        projection.layouts_in_a_process(False)
    assert projection.laid_out(os.getpid) == os.getpid()


def test_a_layout_process_that_stops_answering_is_killed_and_replaced(monkeypatch):
    """A stuck child (here: stopped by SIGSTOP) must not hold a request, and the two models it holds, forever: the
    call gives up after LAYOUT_TIMEOUT_S with a user's message, the child is killed, the next call gets a new one."""
    import os
    import signal

    import psutil

    from embedlab import projection
    from embedlab.features.common import USER_ERRORS

    assert projection.LayoutError in USER_ERRORS  # shown as its sentence, not "Sorry, that failed"
    projection.layouts_in_a_process()
    try:
        child = psutil.Process(projection.laid_out(os.getpid))
        os.kill(child.pid, signal.SIGSTOP)
        monkeypatch.setattr(projection, "LAYOUT_TIMEOUT_S", 1.0)
        with pytest.raises(projection.LayoutError, match="stopped answering"):
            projection.laid_out(os.getpid)
        child.wait(10)  # killed, not left stopped
        monkeypatch.setattr(projection, "LAYOUT_TIMEOUT_S", 120.0)
        assert projection.laid_out(os.getpid) not in (child.pid, os.getpid())
    finally:
        projection.layouts_in_a_process(False)


def test_the_layout_process_ends_with_the_server_that_started_it(tmp_path):
    """A server stopped by a signal (a Space restarting, Ctrl-C, kill) leaves no layout process behind."""
    import subprocess
    import sys

    import psutil

    code = ("import os, sys, time; from embedlab import projection; projection.layouts_in_a_process(); "
            "print(projection.laid_out(os.getpid), flush=True); time.sleep(600)")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(server.stdout.readline()))
        assert child.ppid() == server.pid
    finally:
        server.terminate()
        server.wait(20)
    assert child.wait(10) is not None or not child.is_running()  # gone within ~1 s of its parent


def test_an_idle_layout_process_that_grew_is_replaced_by_a_fresh_warmed_one(monkeypatch):
    """What layouts leave in the layout process (numba specialisations, allocator pages; no trim returns them) is
    bounded: once no layout has run for the idle time and it holds more than LAYOUT_REGROW_MIB above its size after
    its warm-up, it is replaced by a fresh process, warmed up again. Never while a layout runs or soon after one,
    never when it has not grown."""
    import os

    from embedlab import projection

    warmed = []
    monkeypatch.setattr(projection, "warm_up", lambda: warmed.append(projection.laid_out(os.getpid)))
    projection.layouts_in_a_process()
    try:
        child = projection.laid_out(os.getpid)
        size = projection._anonymous_mib(projection._pool)
        assert size and size > 1
        monkeypatch.setattr(projection, "_warm_mib", size)  # as warm_up notes it
        assert not projection.release_if_grown(0.0)  # not grown
        monkeypatch.setattr(projection, "_warm_mib", size - projection.LAYOUT_REGROW_MIB - 10)  # grown
        assert not projection.release_if_grown(3600.0)  # a layout ran within the idle time
        projection._busy += 1  # a layout running now
        try:
            assert not projection.release_if_grown(0.0)
        finally:
            projection._busy -= 1
        assert projection.release_if_grown(0.0) and warmed  # idle and grown: replaced, and the new one warmed
        new = projection.laid_out(os.getpid)
        assert new not in (child, os.getpid()) and warmed == [new]
    finally:
        projection.layouts_in_a_process(False)


def test_the_serving_process_never_imports_numba_for_a_live_run_s_layouts():
    """numba and llvmlite cost a process ~20 MiB: where layouts run in the layout process (the app), a live run's
    map thread must not import them (one_numba_thread is for layouts in this process: tests, the command line)."""
    import subprocess
    import sys

    code = ("import sys; from embedlab import projection; from embedlab.live import one_numba_thread; "
            "projection._in_process = True; one_numba_thread(); a = 'numba' in sys.modules; "
            "projection._in_process = False; one_numba_thread(); print(a, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
