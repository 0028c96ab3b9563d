"""Every endpoint of the running app through gradio_client, plus bad input over the API."""
import re
import time

import pytest
from gradio_client import Client, handle_file

from embedlab.registry import DEFAULT_PAIR

pytestmark = pytest.mark.integration
M = "smollm2-135m"  # a real model with a shipped adapter (the default pair is Gemma's: registry DEFAULT_PAIR)
T = "smollm2-135m+nli-cft"


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def retry_busy(fn, timeout=600):
    """Built-in corpora are embedded in the background at start-up; a busy corpus answers 'try again'."""
    deadline = time.time() + timeout
    while True:
        try:
            return fn()
        except Exception as e:
            if "being computed right now" not in str(e) or time.time() > deadline:
                raise
            time.sleep(3)


def test_endpoints_are_all_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/pairs", "/compare", "/example", "/batch_pairs", "/anisotropy", "/upload_corpus", "/map", "/search",
            "/evaluate", "/embed", "/sides", "/model_card", "/export", "/train", "/stop_training"} <= names


def test_export_download_is_off_by_default_and_says_what_to_run(client):
    with pytest.raises(Exception, match=f"off on this host.*python -m embedlab export {re.escape(T)} "):
        client.predict(M, T, "B", "bf16", api_name="/export")


def test_pairs_example_embed(client):
    out = client.predict(M, T, "A man is playing a guitar.", "A man plays the guitar.", api_name="/pairs")
    assert f"A · `{M}`" in out and f"B · `{T}`" in out
    s1, s2, note = client.predict(api_name="/example")
    assert s1 and s2 and "Human similarity" in note
    emb = client.predict(M, T, ["hello", "world"], True, api_name="/embed")
    from embedlab.registry import MODELS

    assert emb["dim_a"] == emb["dim_b"] == MODELS[M].dim and len(emb["a"]) == 2 and emb["a"] != emb["b"]


def test_compare_across_models(client):
    """Side A on MiniLM, side B on tuned SmolLM2: both cosines, the specs echoed; the status line said it loaded."""
    r = client.predict("minilm-l6", T, "A man is playing a guitar.", "A person plays an instrument.", api_name="/compare")
    assert r["side_a"] == "minilm-l6" and r["side_b"] == T
    assert -1 <= r["cosine_a"] <= 1 and -1 <= r["cosine_b"] <= 1 and r["cosine_a"] != r["cosine_b"]
    same = client.predict(T, "minilm-l6", "A man is playing a guitar.", "A person plays an instrument.", api_name="/compare")
    assert abs(same["cosine_a"] - r["cosine_b"]) < 1e-5 and abs(same["cosine_b"] - r["cosine_a"]) < 1e-5


def test_sides_and_card(client):
    from embedlab.side import valid_specs

    sides = client.predict(api_name="/sides")
    assert sides == valid_specs() and {M, T, "minilm-l6"} <= set(sides)
    card = client.predict(M, api_name="/model_card")
    assert "SmolLM2" in card and "Base model, no adapter" in card
    card = client.predict(T, api_name="/model_card")
    assert r"EOS token '&lt;\|im\_end\|&gt;'" in card and "Adapter **nli-cft**" in card


def test_batch_pairs_and_anisotropy(client):
    text = "A man plays guitar.\tA man is playing a guitar.\t4.8\nA dog runs.\tThe stock market fell.\t0.0\nA woman cooks.\tA lady is cooking.\t4.5"
    df, fig, summary, files = client.predict(M, M, text, None, api_name="/batch_pairs")
    assert "Spearman" in summary and len(files) == 2
    note, plot = retry_busy(lambda: client.predict(M, M, api_name="/anisotropy"))
    assert "Mean cosine" in note


def test_upload_map_search_evaluate(client, tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n".join(["The cat sleeps on the sofa.", "A kitten naps on the couch.", "Stocks fell sharply today.",
                                 "The market dropped this morning.", "It will rain tomorrow.", "Expect showers tomorrow."]))
    note = client.predict(handle_file(str(corpus)), api_name="/upload_corpus")  # gr.State outputs stay on the server
    assert "6 texts" in note
    fig, moved, note, files = retry_busy(lambda: client.predict(M, M, "topics", "a football match", api_name="/map"))
    assert "mean neighbour overlap" in note and len(files) == 2
    base, tuned, note, files = retry_busy(lambda: client.predict(M, M, "topics", "the weather tomorrow", 5, api_name="/search"))
    assert "FAISS" in note and len(base["data"]) == 5 and base["data"] == tuned["data"] and "Overlap@5" in note
    df, note, files = client.predict(M, M, ["STS17"], True, api_name="/evaluate")
    assert "Quick mode" in note and df["data"][0][0] == "STS17"


@pytest.mark.parametrize("args,api,msg", [
    ((M, M, "", "x"), "/pairs", "sentence A is empty"),
    ((M, M, "x" * 5000, "y"), "/pairs", "limit"),
    (("gpt-17", M, "a", "b"), "/pairs", "unknown model 'gpt-17'"),
    ((M, "/etc", "a", "b"), "/pairs", "is not spelled model[+adapter][@step]"),
    ((M, f"{M}+nope", "a", "b"), "/compare", f"Valid sides here: {DEFAULT_PAIR[0]}, "),  # the default model first
    ((M, f"{T}@999", "a", "b"), "/compare", "no snapshot at step 999"),
    ((M, M, "no tab here", None), "/batch_pairs", "two sentences"),
    ((M, M, "topics", "", 5), "/search", "query is empty"),
    ((M, M, [], True), "/evaluate", "pick at least one task"),
])
def test_bad_input_gets_a_message_and_the_app_survives(client, app_server, args, api, msg):
    with pytest.raises(Exception) as e:
        client.predict(*args, api_name=api)
    assert msg in str(e.value) and "Traceback" not in str(e.value)
    assert app_server.alive()


def test_arbitrary_text_over_the_api_gets_an_answer_or_a_message(client, app_server):
    """Property test through gradio_client: any text (control characters, all scripts, lone surrogates,
    1 MB) to pairs, search and embed either works or returns a clear error; the app stays up."""
    from conftest import examples
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.one_of(st.text(st.characters(codec=None, categories=None), max_size=120),
                     st.sampled_from(["", "   \n\t", "x" * 1_000_000, "\ud800 lone", "狗在跑 Собака 🐕 كلب", "\x00\x07\x1b[31m"]))

    @given(a=text, b=text, api=st.sampled_from(["/pairs", "/search", "/embed", "/compare"]))
    @settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
    def check(a, b, api):
        args = {"/pairs": (M, M, a, b), "/search": (M, M, "topics", a, 5), "/embed": (M, M, [a, b], True),
                "/compare": (a, M, "x", b)}[api]
        try:
            retry_busy(lambda: client.predict(*args, api_name=api))
        except Exception as e:
            msg = str(e)
            assert msg and "Traceback" not in msg and "Sorry, that failed" not in msg, msg[:300]
        assert app_server.alive()

    check()
    assert client.predict(M, M, "a dog runs", "a dog is running", api_name="/pairs")  # still answering


@pytest.mark.parametrize("args,api,msg", [
    ((None, M, "a", "b"), "/pairs", "side A must be a side spec"),
    ((M, None, "a", "b"), "/pairs", "side B must be a side spec"),
    ((M, {"x": 1}, "a", "b"), "/compare", "side B must be a side spec"),
    ((M, M, 3, "b"), "/compare", "text A must be text"),
    ((3,), "/model_card", "side A must be a side spec"),
    (("/etc",), "/model_card", "is not spelled"),
    ((M, M, ["a"], 7), "/embed", "both must be true or false"),
    ((M, M, "topics", "q", 1e300), "/search", "greater than maximum value 50"),  # Gradio's slider check
])
def test_wrong_types_over_the_api_get_a_message_without_server_paths(client, app_server, args, api, msg):
    from embedlab import ROOT

    with pytest.raises(Exception) as e:
        client.predict(*args, api_name=api)
    text = str(e.value)
    assert msg in text and "Sorry" not in text and str(ROOT) not in text and "Traceback" not in text, text
    assert app_server.alive()


def test_a_long_request_with_a_value_gradio_refuses_is_refused_with_its_reason(app_server):
    """Long requests pass a validator (a bound on how many may wait) that runs Gradio's input checks first: a task
    that is not a choice is refused at queue/join with Gradio's reason (gradio_client shows only '400')."""
    import httpx

    cfg = httpx.get(app_server.url + "config", timeout=30).json()
    dep = next(d for d in cfg["dependencies"] if d.get("api_name") == "evaluate")
    r = httpx.post(app_server.url + "gradio_api/queue/join", timeout=30, json={
        "data": [M, M, ["STS12", "STS99"], True], "fn_index": dep["id"], "session_hash": "t3st", "event_data": None,
        "trigger_id": None})
    assert r.status_code == 400 and "'STS99'" in r.json()["detail"] and "not in the list of choices" in r.json()["detail"]
    assert app_server.alive()


def test_false_strings_are_false_over_the_api(client):
    assert client.predict(M, T, ["a dog"], "false", api_name="/embed")["b"] is None
    df, note, _ = client.predict(M, M, ["STS12"], "no", api_name="/evaluate")
    assert "Full-set evaluation is off on this host" in note  # quick "no" = full sets, which this host does not allow


def test_a_long_request_stops_when_its_client_cancels(client, app_server):
    """D4: a batch of pairs whose client goes away stops between batches (the app logs it) and the app answers."""
    text = "\n".join(f"A fairly long sentence number {j} about a man who plays the guitar in the park.\t"
                     f"Another sentence {j} about a woman who reads a long book at home." for j in range(1200))
    log = app_server.log.name
    before = open(log).read().count("batch_pairs stopped: its client has gone")
    job = client.submit(M, M, text, None, api_name="/batch_pairs")
    deadline = time.time() + 120
    while job.status().code.name != "PROCESSING" and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    job.cancel()
    while open(log).read().count("batch_pairs stopped: its client has gone") == before:
        assert time.time() < deadline + 60, "the batch kept running after its client cancelled"
        time.sleep(1)
    assert f"A · `{M}`" in client.predict(M, M, "a dog runs", "a dog is running", api_name="/pairs")


def test_an_upload_over_the_limit_is_refused_before_it_is_stored(app_server):
    """D5: max_file_size on launch: Gradio refuses the upload while reading it; nothing lands in its cache."""
    import uuid

    import httpx

    from embedlab.sweep import gradio_folder

    name = f"big-{uuid.uuid4().hex}.txt"
    r = httpx.post(app_server.url + "gradio_api/upload", files={"files": (name, b"x" * (5 << 20))}, timeout=60)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    cache = gradio_folder()  # the app's (the test process has the app's environment)
    assert cache.is_dir() and not list(cache.rglob(name))
