"""`arbiter-swap --lease SECONDS`: once the swap completed, and while the lock is still
held, the client leases the model on the swap's host and prints the lease's id and token
on stdout (even with --quiet); then it releases the lock as always."""

import json

import httpx
import pytest

from coordination import client

ENV = {"ARBITER_API_KEY": "arb_env_key"}
REQUIRED = ["--model", "m", "--holder", "h", "--ttl", "60"]


def fake_arbiter(seen: list[str], lease_status: int = 201):
    def answer(request: httpx.Request) -> httpx.Response:
        route = (request.method, request.url.path)
        body = json.loads(request.content) if request.content else None
        seen.append(f"{request.method} {request.url.path}")
        if route == ("POST", "/api/swap/lock"):
            return httpx.Response(201, json={"token": "t0k", "generation": 1, "expires_at": "x"})
        if route == ("POST", "/api/swap"):
            return httpx.Response(202, json={"id": 3, "host": "sim-a"})
        if route == ("GET", "/api/swap/3/stream"):
            final = {"swap_id": 3, "state": "complete", "final": True, "error": "", "detail": "ok"}
            return httpx.Response(200, text=f"event: state\ndata: {json.dumps(final)}\n\n")
        if route == ("POST", "/api/leases"):
            seen.append(json.dumps(body, sort_keys=True))
            if lease_status != 201:
                return httpx.Response(
                    lease_status, json={"error": {"message": "no", "field": "model"}}
                )
            return httpx.Response(
                201,
                json={
                    "id": 7,
                    "token": "lease-t0k",
                    "model": "m",
                    "host": "sim-a",
                    "expires_at": "2026-01-01T00:00:00Z",
                },
            )
        if route == ("DELETE", "/api/swap/lock"):
            return httpx.Response(204)
        return httpx.Response(404, json={"error": {"message": f"no route {route}"}})

    return answer


def run(argv: list[str], seen: list[str], lease_status: int = 201) -> int:
    options = client.parse_args([*argv, "--url", "http://arbiter"], env=ENV)
    transport = httpx.MockTransport(fake_arbiter(seen, lease_status))
    api = client.ArbiterApi(options.url, options.api_key, transport=transport)
    return client.SwapJob(api, options, client.Reporter(quiet=options.quiet)).run()


@pytest.mark.parametrize("quiet", [False, True])
def test_it_leases_the_swapped_model_and_prints_the_id_and_token(capsys, quiet):
    seen: list[str] = []
    argv = [*REQUIRED, "--lease", "3600", *(["--quiet"] if quiet else [])]
    assert run(argv, seen) == client.EXIT_OK
    out = capsys.readouterr().out
    assert "ARBITER_LEASE_ID=7\n" in out and "ARBITER_LEASE_TOKEN=lease-t0k\n" in out
    lease_body = json.loads(seen[seen.index("POST /api/leases") + 1])
    assert lease_body == {
        "model": "m",
        "host": "sim-a",
        "holder": "h",
        "ttl_seconds": 3600,
        "purpose": "arbiter-swap --model m",
    }
    # Leased while the lock is still held; the lock released afterwards, as always.
    assert seen.index("POST /api/leases") < seen.index("DELETE /api/swap/lock")


def test_it_takes_no_lease_without_the_option(capsys):
    seen: list[str] = []
    assert run(REQUIRED, seen) == client.EXIT_OK
    assert "POST /api/leases" not in seen
    assert "ARBITER_LEASE" not in capsys.readouterr().out


def test_it_exits_non_zero_when_the_lease_is_refused_and_still_releases_the_lock(capsys):
    seen: list[str] = []
    assert run([*REQUIRED, "--lease", "60"], seen, lease_status=404) == client.EXIT_API_ERROR
    assert seen[-1] == "DELETE /api/swap/lock"
    assert "ARBITER_LEASE_TOKEN" not in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_it_refuses_a_lease_that_is_not_a_positive_number_of_seconds(capsys, value):
    with pytest.raises(SystemExit) as exited:
        client.parse_args([*REQUIRED, "--lease", value], env=ENV)
    assert exited.value.code == 2
    assert "--lease" in capsys.readouterr().err
