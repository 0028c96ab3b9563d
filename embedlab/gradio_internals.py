"""Every use of Gradio's internals, in one module, checked once at start-up.

The app needs three things Gradio has no public API for:

- whether the running event's client has gone (``LocalContext`` + the queue's ``event_ids_to_events[…].alive``),
  so long work stops between batches when its client leaves (:func:`client_gone_check`);
- the events waiting in one concurrency group (``_queue.event_queue_per_concurrency_id[group].queue``), so a
  flood of long requests is refused before it fills the queue, fairly per client (:class:`LongRequests`);
- the files components keep (``keep_in_cache``), which the upload sweep must not delete (:func:`kept_files`).

:func:`check` looks up every attribute used here on a real queue and refuses to start with a clear message when
one is missing (a Gradio upgrade renamed it): nothing here falls back silently.
"""
from __future__ import annotations

import inspect
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr
from gradio import route_utils
from gradio.context import LocalContext
from gradio.queueing import Event, EventQueue


class GradioChanged(RuntimeError):
    """The installed Gradio lacks an internal attribute this app relies on."""


def check(demo: gr.Blocks) -> None:
    """Refuse to start (GradioChanged) unless every internal this module uses exists on ``demo``'s queue
    (call it after ``demo.queue()``)."""
    missing = [f"gradio.context.LocalContext.{a}" for a in ("blocks", "event_id", "request")
               if not hasattr(LocalContext, a)]
    queue = getattr(demo, "_queue", None)
    if queue is None:
        missing.append("Blocks._queue (call demo.queue() before check)")
    else:
        missing += [f"Queue.{a}" for a in ("event_ids_to_events", "event_queue_per_concurrency_id")
                    if not isinstance(getattr(queue, a, None), dict)]
        if not inspect.iscoroutinefunction(getattr(queue, "push", None)):
            missing.append("Queue.push (async)")
    if not callable(getattr(route_utils, "get_fn", None)):
        missing.append("gradio.route_utils.get_fn")
    try:
        event = Event(None, SimpleNamespace(concurrency_id="check"), None, None)  # type: ignore[arg-type]
        missing += [f"Event.{a}" for a in ("alive", "session_hash", "concurrency_id", "request", "enqueue_time", "_id")
                    if not hasattr(event, a)]
    except Exception as e:  # noqa: BLE001  its constructor changed
        missing.append(f"Event(session_hash, fn, request, username) ({type(e).__name__}: {e})")
    if not isinstance(getattr(EventQueue("check", 1), "queue", None), list):
        missing.append("EventQueue.queue")
    if not isinstance(getattr(gr.Markdown(render=False), "keep_in_cache", None), set):
        missing.append("Block.keep_in_cache")
    if not missing:
        _hook_push(demo)
    if missing:
        raise GradioChanged(f"this app needs Gradio internals that gradio {gr.__version__} does not have: "
                            + ", ".join(missing) + ". Install the Gradio version in requirements.txt.")


def client_gone_check() -> Callable[[], bool] | None:
    """A test, for the running Gradio event, of whether its client has gone: Gradio marks the event dead
    (``alive = False``) when its client's stream disconnects, and forgets it when it is cancelled.
    None outside a queued event (tests, the API's direct route)."""
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None) if blocks is not None else None
    if queue is None or event_id is None:
        return None

    def gone() -> bool:
        event = queue.event_ids_to_events.get(event_id)
        return event is None or not event.alive

    return gone


def kept_files(demo: gr.Blocks) -> set[str]:
    """Paths Gradio's components keep in its cache (examples, defaults): the sweep leaves them."""
    return set().union(*(b.keep_in_cache for b in demo.blocks.values()))


# A client's address as Gradio sees it (loopback addresses count as no address); behind a proxy that sets a header with the real one (a Space), the host
# names that header here (e.g. EMBEDLAB_CLIENT_HEADER=x-forwarded-for: its first entry is used).
CLIENT_HEADER = os.environ.get("EMBEDLAB_CLIENT_HEADER", "").strip().lower()


def client_address(request: Any) -> str | None:
    """The client a request comes from (the proxy's header where EMBEDLAB_CLIENT_HEADER names one); None for
    loopback and unknown clients."""
    if request is None:
        return None
    if CLIENT_HEADER:
        value = (getattr(request, "headers", None) or {}).get(CLIENT_HEADER)
        if value:
            return value.split(",")[0].strip() or None
    host = getattr(getattr(request, "client", None), "host", None)
    # loopback: local users and tests, not one client (a proxy in front of the app sets the header above)
    return None if not host or host in ("127.0.0.1", "::1", "localhost", "testclient") else host


class LongRequests:
    """Admission of long requests to one concurrency group: at most ``max_waiting`` wait in all, and at most
    ``per_client`` from one session or one client address, so one client cannot take every place (fair
    shares) and a flood cannot fill the app's queue (its max_size stays free for compares and searches).

    Used as the group's Gradio validator, which runs before the request is queued. Validators of requests
    arriving together run at once, so a request admitted here is counted (a reservation) until its event is
    in the queue: the cap is never exceeded, not even by one.
    """

    RESERVATION_S = 5.0  # the longest a reservation can outlive a lost push (push's own end releases it at once)

    def __init__(self, demo: gr.Blocks, group: str, max_waiting: int, per_client: int) -> None:
        self.demo, self.group, self.max_waiting, self.per_client = demo, group, max_waiting, per_client
        self._lock = threading.Lock()
        self._reserved: list[tuple[float, str | None, str | None]] = []  # (when, session, address)
        self._arrived: set[str] = set()  # ids of events that took a reservation
        demo.__dict__.setdefault("_embedlab_gates", []).append(self)  # on the Blocks: demo.queue() makes a new queue

    def _waiting(self, now: float) -> list[tuple[str | None, str | None]]:
        """(session, address) of every request waiting in the group, reservations included (under the lock)."""
        queue = self.demo._queue
        group = queue.event_queue_per_concurrency_id.get(self.group)
        queued = list(group.queue) if group is not None else []
        known = [e for e in list(queue.event_ids_to_events.values()) if e.concurrency_id == self.group]
        self._arrived &= {e._id for e in known}
        left = []
        for when, session, address in self._reserved:
            match = next((e for e in known if e._id not in self._arrived and e.enqueue_time >= when
                          and e.session_hash == session), None) if session is not None else None
            if match is not None:
                self._arrived.add(match._id)
            elif now - when < self.RESERVATION_S:
                left.append((when, session, address))
        self._reserved = left
        return [(e.session_hash, client_address(e.request)) for e in queued] + [(s, a) for _, s, a in left]

    def admit(self) -> None:
        """Raise gr.Error (the message says why) unless this request may wait in the group; else count it."""
        _hook_push(self.demo)  # normally done by check() at start-up
        request = LocalContext.request.get(None)
        session, address = getattr(request, "session_hash", None), client_address(request)
        with self._lock:
            now = time.monotonic()
            waiting = self._waiting(now)
            if len(waiting) >= self.max_waiting:
                raise gr.Error(f"{len(waiting)} long requests are already waiting; try again in a minute",
                               print_exception=False)
            mine = sum(1 for s, a in waiting if (session is not None and s == session)
                       or (address is not None and a == address))
            if mine >= self.per_client:
                raise gr.Error(f"you already have {mine} long requests waiting; wait for one to finish "
                               "(other users' requests go first meanwhile)", print_exception=False)
            self._reserved.append((now, session, address))

    def release(self, session: str | None) -> None:
        """A request of ``session`` that this group admitted is now in the queue (and counted there): one of that
        session's reservations ends (which one does not matter: they differ only in age). Without this a request that finished within RESERVATION_S still counted as waiting,
        so three quick maps from cache in a row (0.15 s each) were refused as "2 long requests waiting"."""
        with self._lock:
            for i, (_, s, _) in enumerate(self._reserved):
                if s == session:
                    del self._reserved[i]
                    return

    def validator(self, *args: Any, **_kw: Any) -> list:
        """The Gradio validator: admits the request, and leaves every input valid (the handler checks them)."""
        self.admit()
        return [gr.validate(True, "")] * len(args)


def gate_api(demo: gr.Blocks, api: dict, validator: Callable) -> None:
    """Give an endpoint made by ``gr.api`` (which takes no ``validator``) the validator its group's other events
    have (a :class:`LongRequests`): ``demo.fns[id].validator``."""
    fn = demo.fns[api["id"]]
    if not hasattr(fn, "validator"):
        raise GradioChanged(f"gradio {gr.__version__}: BlockFunction has no validator: the train gate cannot be set")
    fn.validator = validator


def _hook_push(demo: gr.Blocks) -> None:
    """Make the queue's ``push`` (which runs a group's validator, then queues the event) end the pushed request's
    reservation when it returns: queued, the event is counted from the queue; refused, it waits nowhere."""
    queue = demo._queue
    if getattr(queue, "_embedlab_hooked", False):
        return
    real = queue.push

    async def push(body: Any, request: Any, username: Any) -> Any:
        session = body.session_hash  # as the validator saw it: push gives a request without one (REST) a new one
        result = await real(body, request, username)
        # Only a request its validator admitted holds a reservation, and only one that was then queued
        # ("success") is counted from the queue now. A refused one (validator_error), a full queue or a bad
        # body took none: releasing there would free another request's place.
        if isinstance(result, tuple) and result and result[-1] == "success":
            try:
                group = route_utils.get_fn(demo, None, body).concurrency_id
            except Exception:  # noqa: BLE001  no function for this body: no group, no reservation
                return result
            for g in demo.__dict__.get("_embedlab_gates", []):
                if g.group == group:
                    g.release(session)
        return result

    queue.push, queue._embedlab_hooked = push, True


__all__ = ["GradioChanged", "check", "client_gone_check", "kept_files", "LongRequests"]
