"""embedlab/gradio_internals.py against Gradio's real queue: a small Blocks app served on a loopback port,
its long requests sent to /gradio_api/queue/join as browsers and gradio_client send them."""
import threading
import time
import uuid

import gradio as gr
import httpx
import pytest

from embedlab import gradio_internals
from embedlab.features.common import Number, Text, Upload, gradio_errors

RELEASE = threading.Event()


def slow(x):
    RELEASE.wait(60)
    return x


@pytest.fixture(scope="module")
def served():
    """A real app: one 'heavy' group (one running, at most 4 waiting, 2 per client) and a checked text/slider/file."""
    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        text, k, f = Text(what="sentence A"), Number(minimum=1, maximum=50, value=10, what="k"), Upload(what="the pair file")
        gate = gradio_internals.LongRequests(demo, "heavy", max_waiting=4, per_client=2)
        gr.Button().click(slow, [box], [out], api_name="long", concurrency_id="heavy", concurrency_limit=1,
                          validator=gate.validator)
        gr.Button().click(gradio_errors(lambda t, n, p: f"{t} {n} {p}"), [text, k, f], [out], api_name="checked")
    demo.queue(max_size=64)
    gradio_internals.check(demo)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    dep = {d["api_name"]: d["id"] for d in demo.config["dependencies"] if d.get("api_name")}
    yield demo, url, dep
    RELEASE.set()
    demo.close()


def join(url, fn_index, data, session):
    return httpx.post(url + "gradio_api/queue/join", timeout=30, json={
        "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})


def waiting(demo):
    q = demo._queue.event_queue_per_concurrency_id.get("heavy")
    return len(q.queue) if q else 0


def test_the_check_passes_on_this_gradio_and_names_what_is_missing_otherwise(served, monkeypatch):
    gradio_internals.check(served[0])
    other = gr.Blocks()
    other.queue()
    monkeypatch.setattr(other._queue, "event_queue_per_concurrency_id", None)  # as if a Gradio upgrade renamed it
    with pytest.raises(gradio_internals.GradioChanged, match="Queue.event_queue_per_concurrency_id"):
        gradio_internals.check(other)


def test_one_client_holds_at_most_two_waiting_long_requests_and_others_still_get_theirs(served):
    demo, url, dep = served
    RELEASE.clear()
    mine = uuid.uuid4().hex
    assert join(url, dep["long"], ["run"], mine).status_code == 200  # runs (holds the one slot)
    deadline = time.time() + 30
    while waiting(demo) and time.time() < deadline:
        time.sleep(0.05)
    assert [join(url, dep["long"], [f"w{i}"], mine).status_code for i in range(2)] == [200, 200]
    r = join(url, dep["long"], ["third"], mine)
    assert r.status_code == 400 and "you already have 2 long requests waiting" in r.text, r.text
    assert join(url, dep["long"], ["other"], uuid.uuid4().hex).status_code == 200  # another user's goes in
    RELEASE.set()


def test_a_flood_never_exceeds_the_cap_not_even_by_one(served):
    """Requests arriving together (their validators run at once) are counted until their event is queued."""
    demo, url, dep = served
    deadline = time.time() + 60
    while (waiting(demo) or any(e.concurrency_id == "heavy" for e in list(demo._queue.event_ids_to_events.values()))) \
            and time.time() < deadline:
        time.sleep(0.1)
    RELEASE.clear()
    codes, seen = [], []
    watch = threading.Event()

    def watcher():
        while not watch.is_set():
            seen.append(waiting(demo))
            time.sleep(0.005)

    threading.Thread(target=watcher, daemon=True).start()
    threads = [threading.Thread(target=lambda i=i: codes.append(join(url, dep["long"], [f"f{i}"], uuid.uuid4().hex)))
               for i in range(16)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    time.sleep(0.3)
    watch.set()
    ok = [r for r in codes if r.status_code == 200]
    refused = [r for r in codes if r.status_code != 200]
    assert len(ok) <= 5 and max(seen) <= 4, (len(ok), max(seen))  # one running + at most 4 waiting
    assert refused and all("4 long requests are already waiting" in r.text for r in refused), refused[0].text
    RELEASE.set()


@pytest.mark.parametrize("data,msg", [
    ([0, 10, None], "sentence A must be text"), ([[], 10, None], "sentence A must be text"),
    ([{"a": 1}, 10, None], "sentence A must be text"), ([True, 10, None], "sentence A must be text"),
    (["x", "ten", None], "k must be a number from 1 to 50"), (["x", 10, {"bogus": 1}], "the pair file: send the file"),
])
def test_what_gradio_cannot_preprocess_gets_our_short_message(served, data, msg):
    from gradio_client import Client

    _, url, _ = served
    with pytest.raises(Exception) as e:
        Client(url, verbose=False).predict(*data, api_name="/checked")
    assert msg in str(e.value) and "preprocess" not in str(e.value) and "validation error" not in str(e.value), str(e.value)


def rest(url, api, data):
    """One call over Gradio's REST route (/gradio_api/call/<api>, then its event stream), which carries no
    session: Gradio makes one inside Queue.push, after the validator ran."""
    r = httpx.post(url + f"gradio_api/call/{api}", json={"data": data}, timeout=30)
    if r.status_code != 200:
        return r.status_code, r.text
    with httpx.stream("GET", url + f"gradio_api/call/{api}/{r.json()['event_id']}", timeout=30) as resp:
        lines = list(resp.iter_lines())
    return (500 if any(x.startswith("event: error") for x in lines) else 200), "\n".join(lines)


@pytest.mark.parametrize("route", ["join", "rest"])
def test_quick_long_requests_one_after_another_are_all_admitted(served, route):
    """A long request that finishes at once (a map from cache: 0.15 s) stops counting as waiting when it is
    queued: bench/app_latency.py's maps in a row from one client were refused as '2 long requests waiting', and
    over REST, where Gradio gives each request a session only after the validator, as '8 … already waiting'."""
    demo, url, dep = served
    RELEASE.set()  # every request finishes at once
    session = uuid.uuid4().hex
    for i in range(10):
        if route == "rest":
            code, text = rest(url, "long", [f"quick{i}"])
            assert code == 200, text
            continue
        r = join(url, dep["long"], [f"quick{i}"], session)
        assert r.status_code == 200, r.text
        deadline = time.time() + 30
        while any(e.concurrency_id == "heavy" for e in list(demo._queue.event_ids_to_events.values())) \
                and time.time() < deadline:
            time.sleep(0.02)
