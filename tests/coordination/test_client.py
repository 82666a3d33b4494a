"""arbiter-swap, the cron client: its exit codes, end to end, and its argument parsing.

The end-to-end tests run the installed console script as a subprocess against a real
`manage.py serve` with its simulated cluster (the `live_arbiter` fixture), and inject
faults through the simulator's control API. Every one checks that the lock was released
(or, when it was someone else's, left exactly as it was).
"""

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordination import client
from tests.helpers import free_port
from tests.live_arbiter import BASE_DIR, LiveArbiter

SCRIPT = Path(sys.executable).with_name("arbiter-swap")
MODEL = "qwen3-600m"
SERVED_NAME = "Qwen/Qwen3-0.6B"


# --- fixtures -------------------------------------------------------------------------


class Run:
    """One arbiter-swap process; what it prints is collected line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(SCRIPT), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",  # it must not need the project directory
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(s, out), daemon=True)
            for s, out in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    @property
    def err(self) -> str:
        return "\n".join(self.stderr)


class Cron:
    """The live Arbiter as a cron job and its admin see it."""

    def __init__(self, arbiter: LiveArbiter) -> None:
        self.arbiter = arbiter
        self.key = arbiter.manage("create_api_key", "cron client tests").strip()
        self.api = httpx.Client(
            base_url=arbiter.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=10
        )
        control_file = arbiter.data_dir / "sim" / "control.json"
        arbiter.wait_for(control_file.exists, timeout=30)
        self.control = json.loads(control_file.read_text())["url"]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in self.arbiter.env.items() if not k.startswith("ARBITER_")}
        env.update(ARBITER_URL=self.arbiter.url, ARBITER_API_KEY=self.key, **extra)
        return env

    def start(self, *args: str, **env: str) -> Run:
        return Run(list(args), self.env(**env))

    def run(self, *args: str, timeout: float = 60) -> Run:
        run = self.start(*args)
        run.wait(timeout)
        return run

    def fault(self, host: str, **fault: object) -> None:
        httpx.post(f"{self.control}/hosts/{host}/faults", json=fault).raise_for_status()

    def lock(self, ticking: bool = True) -> dict:
        """GET /api/swap/lock; without `seconds_left` (it counts down) unless `ticking`."""
        response = self.api.get("/api/swap/lock")
        assert response.status_code == 200, response.text
        lock = response.json()
        if not ticking:
            lock.pop("seconds_left")
        return lock

    def latest_swap(self) -> dict | None:
        swaps = self.api.get("/api/swaps", params={"limit": 1}).json()
        return self.api.get(f"/api/swap/{swaps[0]['id']}").json() if swaps else None

    def assert_released_by(self, holder: str, run: Run) -> None:
        lock = self.lock()
        assert lock["held"] is False, (lock, run.err)
        assert lock["released_by"] == holder, (lock, run.err)
        assert lock["release_reason"] == "released by the holder", (lock, run.err)
        assert "arbiter-swap: lock released" in run.err


@pytest.fixture(scope="module")
def cron(live_arbiter: LiveArbiter) -> Iterator[Cron]:
    cron = Cron(live_arbiter)
    yield cron
    cron.api.close()


def swap_args(holder: str, host: str, *more: str) -> list[str]:
    return ["--model", MODEL, "--holder", holder, "--ttl", "30", "--host", host, *more]


# --- end to end -----------------------------------------------------------------------


def test_it_swaps_streams_the_log_and_releases_the_lock(cron):
    # A TTL shorter than the swap: the client must extend it, or the release would 409.
    run = cron.run("--model", MODEL, "--holder", "nightly-eval", "--ttl", "2", "--host", "sim-a")

    assert run.process.returncode == client.EXIT_OK, run.err
    swap = cron.latest_swap()
    assert swap["state"] == "complete" and swap["host"] == "sim-a"
    assert swap["lock_generation"] is not None
    stored = [line["text"] for line in cron.api.get(swap["log_url"]).json()["lines"]]
    assert run.stdout == stored  # every line once, in order
    assert any(SERVED_NAME in line for line in run.stdout)
    assert f"swap {swap['id']} complete" in run.err
    # While it loaded the client said so, from the stream's `progress` events.
    assert "arbiter-swap: phase: loading" in run.err, run.err
    cron.assert_released_by("nightly-eval", run)
    # The model is really served by the container the swap started.
    services = cron.api.get("/api/status").json()["services"]
    base_url = next(s["base_url"] for s in services if s["name"] == "sim-a-vllm")
    models = httpx.get(f"{base_url}/v1/models", timeout=5).json()
    assert SERVED_NAME in [m["id"] for m in models["data"]]


def test_it_exits_3_when_someone_else_holds_the_lock(cron):
    grant = cron.api.post(
        "/api/swap/lock", json={"holder": "someone-else", "ttl_seconds": 120, "purpose": "eval"}
    ).json()
    before, swaps_before = cron.lock(ticking=False), cron.api.get("/api/swaps").json()
    try:
        run = cron.run(*swap_args("nightly-eval", "sim-a"))

        assert run.process.returncode == client.EXIT_LOCKED, run.err
        assert "someone-else" in run.err and grant["expires_at"][:19] in run.err
        assert "free again in" in run.err
        assert cron.lock(ticking=False) == before  # untouched: holder, generation, expiry
        assert cron.api.get("/api/swaps").json() == swaps_before  # nothing started
    finally:
        released = cron.api.delete("/api/swap/lock", headers={"X-Swap-Lock-Token": grant["token"]})
        assert released.status_code == 204


def test_it_exits_4_when_the_swap_fails_and_releases_the_lock(cron):
    cron.fault("sim-b", fail_start=True)

    run = cron.run(*swap_args("nightly-eval", "sim-b"))

    assert run.process.returncode == client.EXIT_SWAP_FAILED, run.err
    swap = cron.latest_swap()
    assert swap["state"] == "failed" and swap["host"] == "sim-b"
    assert f"swap {swap['id']} failed: {swap['error']}" in run.err
    assert any("CUDA out of memory" in line for line in run.stdout)  # the container's log
    cron.assert_released_by("nightly-eval", run)


def test_it_exits_5_on_wait_timeout_cancels_the_swap_and_releases_the_lock(cron):
    cron.fault("sim-b", slow_start=60)
    started = time.monotonic()

    run = cron.run(*swap_args("nightly-eval", "sim-b", "--wait-timeout", "3"))

    assert run.process.returncode == client.EXIT_TIMEOUT, run.err
    assert time.monotonic() - started < 25
    swap = cron.latest_swap()
    assert swap["state"] == "cancelled" and swap["cancel_requested"] is True
    assert f"cancelling swap {swap['id']}" in run.err
    assert "--wait-timeout 3 s" in run.err
    cron.assert_released_by("nightly-eval", run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_it_cancels_the_swap_and_releases_the_lock_on_a_signal_while_streaming(cron, signum):
    cron.fault("sim-b", slow_start=60)
    run = cron.start(*swap_args("nightly-eval", "sim-b"))
    cron.arbiter.wait_for(lambda: run.stdout, timeout=30)  # the log is streaming

    run.process.send_signal(signum)

    assert run.wait(30) == 128 + signum, run.err
    swap = cron.latest_swap()
    assert swap["state"] == "cancelled"
    assert f"interrupted by {signum.name}" in run.err
    assert f"cancelling swap {swap['id']}" in run.err
    cron.assert_released_by("nightly-eval", run)


def test_it_exits_6_when_arbiter_is_unreachable(cron):
    run = cron.run(*swap_args("nightly-eval", "sim-a", "--url", f"http://127.0.0.1:{free_port()}"))

    assert run.process.returncode == client.EXIT_UNREACHABLE, run.err
    assert "cannot reach Arbiter" in run.err


def test_it_exits_7_with_a_bad_api_key(cron):
    before = cron.lock(ticking=False)

    run = cron.run(*swap_args("nightly-eval", "sim-a", "--api-key", "arb_0000_not-a-key"))

    assert run.process.returncode == client.EXIT_AUTH, run.err
    assert "API key" in run.err
    assert cron.lock(ticking=False) == before


def test_it_exits_8_for_an_unknown_model_and_releases_the_lock(cron):
    run = cron.run("--model", "no-such-model", "--holder", "nightly-eval", "--ttl", "30")

    assert run.process.returncode == client.EXIT_API_ERROR, run.err
    assert "404 no catalog model with key 'no-such-model'" in run.err
    cron.assert_released_by("nightly-eval", run)


def test_it_resumes_the_stream_across_an_arbiter_restart(cron):
    cron.fault("sim-gb10", slow_start=6)
    run = cron.start(*swap_args("nightly-eval", "sim-gb10"))
    cron.arbiter.wait_for(lambda: any("vLLM API server" in line for line in run.stdout), 30)

    cron.arbiter.kill_and_restart()

    assert run.wait(90) == client.EXIT_OK, run.err
    swap = cron.latest_swap()
    assert swap["state"] == "complete" and swap["host"] == "sim-gb10"
    stored = [line["text"] for line in cron.api.get(swap["log_url"]).json()["lines"]]
    assert run.stdout == stored  # resumed with Last-Event-ID: no line lost or repeated
    assert f"lost the log stream of swap {swap['id']}" in run.err, run.err
    cron.assert_released_by("nightly-eval", run)


# --- the console script and argument parsing ------------------------------------------

ENV = {"ARBITER_API_KEY": "arb_env_key"}
REQUIRED = ["--model", "m", "--holder", "h", "--ttl", "60"]


def test_it_is_installed_as_a_console_script_that_documents_the_exit_codes():
    assert SCRIPT.exists(), "pip install -e . installs it"
    for command in ([str(SCRIPT)], [sys.executable, "-m", "coordination.client"]):
        done = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, timeout=30, cwd=BASE_DIR
        )
        assert done.returncode == 0, done.stderr
        for code in ("0  the swap completed", "3  locked", "4  the swap failed", "5  --wait"):
            assert code in done.stdout
        assert "6  Arbiter unreachable" in done.stdout and "7  authentication" in done.stdout


def test_it_does_not_import_django():
    code = "import sys, coordination.client; print('django' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=BASE_DIR, timeout=30
    )
    assert done.stdout.strip() == "False", done.stderr


def test_it_parses_the_options_with_defaults_from_the_environment():
    options = client.parse_args(REQUIRED, env=ENV)

    assert options == client.Options(
        model="m",
        holder="h",
        ttl=60,
        host=None,
        purpose="arbiter-swap --model m",
        wait_timeout=None,
        url="http://127.0.0.1:8000",
        api_key="arb_env_key",
        quiet=False,
        dry_run=False,
    )


def test_it_takes_every_option():
    argv = [
        *REQUIRED,
        *("--host", "sim-a", "--purpose", "nightly eval", "--wait-timeout", "2.5"),
        *("--url", "https://arbiter.lan/", "--api-key", "arb_flag", "--quiet", "--dry-run"),
    ]
    options = client.parse_args(argv, env={**ENV, "ARBITER_URL": "http://ignored"})

    assert (options.host, options.purpose, options.wait_timeout) == ("sim-a", "nightly eval", 2.5)
    assert options.url == "https://arbiter.lan"
    assert options.api_key == "arb_flag"
    assert options.quiet and options.dry_run


def test_it_reads_the_url_and_the_key_file_from_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("arb_from_file\n")
    env = {"ARBITER_URL": "http://gpu-box:8000", "ARBITER_API_KEY_FILE": str(key_file)}

    options = client.parse_args(REQUIRED, env=env)

    assert (options.url, options.api_key) == ("http://gpu-box:8000", "arb_from_file")
    assert client.parse_args([*REQUIRED, "--api-key-file", str(key_file)], env={}).api_key == (
        "arb_from_file"
    )


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--holder", "h", "--ttl", "60"], ENV, "--model"),
        (["--model", "m", "--ttl", "60"], ENV, "--holder"),
        (["--model", "m", "--holder", "h"], ENV, "--ttl"),
        (["--model", "m", "--holder", "h", "--ttl", "0"], ENV, "must be greater than 0"),
        (["--model", "m", "--holder", "h", "--ttl", "1.5"], ENV, "not a whole number"),
        ([*REQUIRED, "--wait-timeout", "-1"], ENV, "greater than 0"),
        ([*REQUIRED, "--wait-timeout", "nan"], ENV, "greater than 0"),
        ([*REQUIRED, "--url", "gpu-box:8000"], ENV, "http:// or https://"),
        (REQUIRED, {}, "no API key"),
        ([*REQUIRED, "--api-key", " "], {}, "no API key"),
        ([*REQUIRED, "--api-key-file", "/nonexistent/key"], {}, "cannot read"),
        ([*REQUIRED, "--api-key", "a", "--api-key-file", "f"], {}, "not allowed with"),
        (["--model", " ", "--holder", "h", "--ttl", "60"], ENV, "must not be blank"),
    ],
)
def test_it_exits_2_on_a_usage_error(capsys, argv, env, message):
    with pytest.raises(SystemExit) as exited:
        client.parse_args(argv, env=env)

    assert exited.value.code == client.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_it_parses_server_sent_events():
    lines = [
        ": keepalive",
        "",
        "id: 7",
        "event: line",
        'data: {"seq": 7,',
        'data: "text": "x"}',
        "",
        "event: state",
        "data:{}",
        "",
        "event: ignored-without-data",
        "",
    ]

    events = list(client.iter_sse(lines))

    assert events == [
        client.SseEvent("line", '{"seq": 7,\n"text": "x"}', "7"),
        client.SseEvent("state", "{}", "7"),
    ]


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code"),
    [
        (401, {"error": {"type": "unauthorized", "message": "no"}}, {}, client.AuthFailed, 7),
        (403, {"error": {"type": "forbidden", "message": "staff only"}}, {}, client.AuthFailed, 7),
        (423, {"error": {"message": "held by 'x'", "holder": "x"}}, {"Retry-After": "9"}, None, 3),
        (409, {"error": {"message": "host sim-a is busy"}}, {}, client.ApiError, 8),
        (503, {}, {}, client.Unreachable, 6),
        (500, "<html>oops</html>", {}, client.ApiError, 8),
    ],
)
def test_it_maps_api_errors_to_exit_codes(status, body, headers, error, code):
    request = httpx.Request("POST", "http://arbiter/api/swap")
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.Response(status, content=content, headers=headers, request=request)

    exc = client.error_for(response)

    assert exc.exit_code == code
    if error is not None:
        assert isinstance(exc, error)
    if status == 423:
        assert "held by 'x'" in str(exc) and "free again in 9 s" in str(exc)
    if status == 401:
        assert "API key was not accepted" in str(exc)
    if status == 403:
        assert "staff only" in str(exc)


def test_it_resumes_a_dropped_stream_from_the_last_line_it_printed(capsys):
    """The reconnect logic alone, at the HTTP seam: a stream that ends without a final
    state is resumed with Last-Event-ID, after asking for the swap's state."""
    seen: list[str] = []

    def sse(*events: tuple[str, dict, int | None]) -> str:
        return "".join(
            (f"id: {i}\n" if i else "") + f"event: {name}\ndata: {json.dumps(data)}\n\n"
            for name, data, i in events
        )

    def line(seq: int, text: str) -> tuple[str, dict, int]:
        return ("line", {"swap_id": 5, "seq": seq, "text": text, "stream": "stdout"}, seq)

    def answer(request: httpx.Request) -> httpx.Response:
        route = (request.method, request.url.path)
        seen.append(f"{request.method} {request.url.path} {request.headers.get('Last-Event-ID')}")
        if route == ("POST", "/api/swap/lock"):
            return httpx.Response(201, json={"token": "t0k", "generation": 4, "expires_at": "x"})
        if route == ("POST", "/api/swap"):
            assert request.headers["X-Swap-Lock-Token"] == "t0k"
            return httpx.Response(202, json={"id": 5})
        if route == ("GET", "/api/swap/5/stream"):
            if request.headers["Last-Event-ID"] == "0":  # cut after two lines
                return httpx.Response(200, text=": hi\n\n" + sse(line(1, "a"), line(2, "b")))
            final = {"swap_id": 5, "state": "complete", "final": True, "error": "", "detail": "ok"}
            return httpx.Response(200, text=sse(line(3, "c"), ("state", final, None)))
        if route == ("GET", "/api/swap/5"):
            return httpx.Response(200, json={"id": 5, "state": "launching", "final": False})
        if route == ("DELETE", "/api/swap/lock"):
            assert request.headers["X-Swap-Lock-Token"] == "t0k"
            return httpx.Response(204)
        return httpx.Response(404, json={"error": {"message": f"no route {route}"}})

    options = client.parse_args([*REQUIRED, "--ttl", "3600", "--url", "http://arbiter"], env=ENV)
    api = client.ArbiterApi(options.url, options.api_key, transport=httpx.MockTransport(answer))

    assert client.SwapJob(api, options, client.Reporter(quiet=False)).run() == client.EXIT_OK

    out = capsys.readouterr()
    assert out.out.splitlines() == ["a", "b", "c"]
    assert "dropped" in out.err and "swap 5 complete: ok" in out.err
    assert seen == [
        "POST /api/swap/lock None",
        "POST /api/swap None",
        "GET /api/swap/5/stream 0",
        "GET /api/swap/5 None",
        "GET /api/swap/5/stream 2",
        "DELETE /api/swap/lock None",
    ]


def test_it_times_out_on_a_quiet_stream_cancels_and_releases(capsys):
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        route = (request.method, request.url.path)
        seen.append(f"{request.method} {request.url.path}")
        if route == ("POST", "/api/swap/lock"):
            return httpx.Response(201, json={"token": "t0k", "generation": 1, "expires_at": "x"})
        if route == ("POST", "/api/swap"):
            return httpx.Response(202, json={"id": 9})
        if route == ("GET", "/api/swap/9/stream"):  # nothing arrives before the deadline
            time.sleep(request.extensions["timeout"]["read"])
            raise httpx.ReadTimeout("quiet", request=request)
        if route == ("POST", "/api/swap/9/cancel"):
            return httpx.Response(202, json={"id": 9, "state": "launching"})
        if route == ("GET", "/api/swap/9"):
            return httpx.Response(200, json={"id": 9, "state": "cancelled", "final": True})
        if route == ("DELETE", "/api/swap/lock"):
            return httpx.Response(204)
        return httpx.Response(404, json={"error": {"message": f"no route {route}"}})

    argv = [*REQUIRED, "--ttl", "3600", "--wait-timeout", "0.5", "--url", "http://arbiter"]
    options = client.parse_args(argv, env=ENV)
    api = client.ArbiterApi(options.url, options.api_key, transport=httpx.MockTransport(answer))

    assert client.SwapJob(api, options, client.Reporter(quiet=False)).run() == client.EXIT_TIMEOUT

    err = capsys.readouterr().err
    assert "swap 9 did not finish within --wait-timeout 0.5 s" in err
    assert "cancelling swap 9" in err and "swap 9 is cancelled" in err
    assert "went quiet" not in err and "dropped" not in err
    assert seen == [
        "POST /api/swap/lock",
        "POST /api/swap",
        "GET /api/swap/9/stream",
        "POST /api/swap/9/cancel",
        "GET /api/swap/9",
        "DELETE /api/swap/lock",
    ]


def test_it_sends_a_release_that_meets_server_errors_again_until_it_lands(capsys, monkeypatch):
    """At the HTTP seam: the release answers 500, then 503, then 204. The lock must not
    stay held because one answer was a server error (issue 17)."""
    monkeypatch.setattr("coordination.client.job.RELEASE_DELAYS", (0.0, 0.0, 0.0, 0.0))
    releases: list[int] = []
    answers = iter([500, 503, 204])

    def answer(request: httpx.Request) -> httpx.Response:
        route = (request.method, request.url.path)
        if route == ("POST", "/api/swap/lock"):
            return httpx.Response(201, json={"token": "t0k", "generation": 1, "expires_at": "x"})
        if route == ("POST", "/api/swap"):
            return httpx.Response(202, json={"id": 3})
        if route == ("GET", "/api/swap/3/stream"):
            final = {"swap_id": 3, "state": "complete", "final": True, "error": "", "detail": "ok"}
            return httpx.Response(200, text=f"event: state\ndata: {json.dumps(final)}\n\n")
        if route == ("DELETE", "/api/swap/lock"):
            status = next(answers)
            releases.append(status)
            if status == 204:
                return httpx.Response(204)
            return httpx.Response(status, json={"error": {"message": "too many clients"}})
        return httpx.Response(404, json={"error": {"message": f"no route {route}"}})

    options = client.parse_args([*REQUIRED, "--url", "http://arbiter"], env=ENV)
    api = client.ArbiterApi(options.url, options.api_key, transport=httpx.MockTransport(answer))
    assert client.SwapJob(api, options, client.Reporter(quiet=False)).run() == client.EXIT_OK
    assert releases == [500, 503, 204]
    err = capsys.readouterr().err
    assert "release attempt 1 failed" in err and "lock released" in err


def test_it_prints_a_launch_phase_with_its_eta_or_says_there_is_none():
    from coordination.client.job import progress_text

    pulling = {"phase": "pull", "phase_label": "pulling the image", "eta_seconds": 41.6}
    assert progress_text({**pulling, "phase_elapsed_seconds": 3.2}) == (
        "phase: pulling the image for 3 s, ETA 42 s"
    )
    assert progress_text({"phase": "load", "phase_label": "loading", "eta_seconds": None}) == (
        "phase: loading, no ETA yet"
    )
