"""Every endpoint of the running app through gradio_client, plus bad input over the API."""
import os
import time

import pytest
from gradio_client import Client, handle_file

pytestmark = pytest.mark.integration
M = "smollm2-135m"


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
    assert {"/pairs", "/example", "/batch_pairs", "/anisotropy", "/upload_corpus", "/map", "/search", "/evaluate",
            "/embed", "/adapters", "/model_card"} <= names


def test_pairs_example_embed(client):
    out = client.predict(M, "none", "A man is playing a guitar.", "A man plays the guitar.", api_name="/pairs")
    assert "base smollm2-135m" in out
    s1, s2, note = client.predict(api_name="/example")
    assert s1 and s2 and "Human similarity" in note
    emb = client.predict(M, "none", ["hello", "world"], True, api_name="/embed")
    assert emb["dim"] == 576 and len(emb["base"]) == 2 and emb["tuned"] is None


def test_adapters_and_card(client):
    from embedlab.lab import Lab

    upd = client.predict(M, api_name="/adapters")
    want = Lab().adapter_choices(M)
    assert upd["__type__"] == "update" and [tuple(c) for c in upd["choices"]] == want and upd["value"] == want[0][1]
    assert want[-1] == ("none (base model only)", "none") and any("shipped" in label for label, _ in want)
    card = client.predict(M, "none", api_name="/model_card")
    assert "SmolLM2" in card and "No adapter" in card
    card = client.predict(M, want[0][1], api_name="/model_card")
    assert r"EOS token '&lt;\|im\_end\|&gt;'" in card and f"Adapter **{want[0][1].rsplit('/', 1)[-1]}**" in card


def test_batch_pairs_and_anisotropy(client):
    text = "A man plays guitar.\tA man is playing a guitar.\t4.8\nA dog runs.\tThe stock market fell.\t0.0\nA woman cooks.\tA lady is cooking.\t4.5"
    df, fig, summary, files = client.predict(M, "none", text, None, api_name="/batch_pairs")
    assert "Spearman" in summary and len(files) == 2
    note, plot = retry_busy(lambda: client.predict(M, "none", api_name="/anisotropy"))
    assert "Mean cosine" in note


def test_upload_map_search_evaluate(client, tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n".join(["The cat sleeps on the sofa.", "A kitten naps on the couch.", "Stocks fell sharply today.",
                                 "The market dropped this morning.", "It will rain tomorrow.", "Expect showers tomorrow."]))
    note = client.predict(handle_file(str(corpus)), api_name="/upload_corpus")  # gr.State outputs stay on the server
    assert "6 texts" in note
    fig, moved, note, files = retry_busy(lambda: client.predict(M, "none", "topics", "a football match", api_name="/map"))
    assert "mean neighbour overlap" in note and len(files) == 2
    base, tuned, note, files = retry_busy(lambda: client.predict(M, "none", "topics", "the weather tomorrow", 5, api_name="/search"))
    assert "FAISS" in note and len(base["data"]) == 5 and "No adapter selected" in str(tuned["data"])
    df, note, files = client.predict(M, "none", ["STS17"], True, api_name="/evaluate")
    assert "Quick mode" in note and df["data"][0][0] == "STS17"


@pytest.mark.parametrize("args,api,msg", [
    ((M, "none", "", "x"), "/pairs", "sentence A is empty"),
    ((M, "none", "x" * 5000, "y"), "/pairs", "limit"),
    (("gpt-17", "none", "a", "b"), "/pairs", "gpt-17"),
    ((M, "/etc", "a", "b"), "/pairs", "outside the allowed adapter folders"),
    ((M, "none", "no tab here", None), "/batch_pairs", "two sentences"),
    ((M, "none", "topics", "", 5), "/search", "query is empty"),
    ((M, "none", [], True), "/evaluate", "pick at least one task"),
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

    @given(a=text, b=text, api=st.sampled_from(["/pairs", "/search", "/embed"]))
    @settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
    def check(a, b, api):
        args = {"/pairs": (M, "none", a, b), "/search": (M, "none", "topics", a, 5), "/embed": (M, "none", [a, b], True)}[api]
        try:
            retry_busy(lambda: client.predict(*args, api_name=api))
        except Exception as e:
            msg = str(e)
            assert msg and "Traceback" not in msg and "Sorry, that failed" not in msg, msg[:300]
        assert app_server.alive()

    check()
    assert client.predict(M, "none", "a dog runs", "a dog is running", api_name="/pairs")  # still answering


@pytest.mark.parametrize("args,api,msg", [
    ((None, "none", "a", "b"), "/pairs", "model must be a model name"),
    ((M, None, "a", "b"), "/pairs", "adapter must be text"),
    ((M, {"x": 1}, "a", "b"), "/pairs", "adapter must be text"),
    ((M, 3), "/model_card", "adapter must be text"),
    ((M, "/etc"), "/model_card", "outside the allowed adapter folders"),
    ((M, "none", ["a"], 7), "/embed", "tuned must be true or false"),
    ((M, "none", "topics", "q", 1e300), "/search", "greater than maximum value 50"),  # Gradio's slider check
])
def test_wrong_types_over_the_api_get_a_message_without_server_paths(client, app_server, args, api, msg):
    from embedlab.lab import ROOT

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
        "data": [M, "none", ["STS12", "STS99"], True], "fn_index": dep["id"], "session_hash": "t3st", "event_data": None,
        "trigger_id": None})
    assert r.status_code == 400 and "'STS99'" in r.json()["detail"] and "not in the list of choices" in r.json()["detail"]
    assert app_server.alive()


def test_false_strings_are_false_over_the_api(client):
    assert client.predict(M, "assets/adapters/smollm2-135m/nli-cft", ["a dog"], "false", api_name="/embed")["tuned"] is None
    df, note, _ = client.predict(M, "none", ["STS12"], "no", api_name="/evaluate")
    assert "Full-set evaluation is off on this host" in note  # quick "no" = full sets, which this host does not allow


def test_a_long_request_stops_when_its_client_cancels(client, app_server):
    """D4: a batch of pairs whose client goes away stops between batches (the app logs it) and the app answers."""
    text = "\n".join(f"A fairly long sentence number {j} about a man who plays the guitar in the park.\t"
                     f"Another sentence {j} about a woman who reads a long book at home." for j in range(1200))
    log = app_server.log.name
    before = open(log).read().count("batch_pairs stopped: its client has gone")
    job = client.submit(M, "none", text, None, api_name="/batch_pairs")
    deadline = time.time() + 120
    while job.status().code.name != "PROCESSING" and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    job.cancel()
    while open(log).read().count("batch_pairs stopped: its client has gone") == before:
        assert time.time() < deadline + 60, "the batch kept running after its client cancelled"
        time.sleep(1)
    assert "base smollm2-135m" in client.predict(M, "none", "a dog runs", "a dog is running", api_name="/pairs")


def test_an_upload_over_the_limit_is_refused_before_it_is_stored(app_server):
    """D5: max_file_size on launch: Gradio refuses the upload while reading it; nothing lands in its cache."""
    import tempfile
    import uuid
    from pathlib import Path

    import httpx

    name = f"big-{uuid.uuid4().hex}.txt"
    r = httpx.post(app_server.url + "gradio_api/upload", files={"files": (name, b"x" * (5 << 20))}, timeout=60)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    cache = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio"))
    assert not list(cache.rglob(name))
