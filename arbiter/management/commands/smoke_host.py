"""`manage.py smoke_host NAME --model KEY`: what an operator runs on day one.

Four steps against a running Arbiter (`manage.py serve` or `make run`), each printed with
its result and how long it took:

1. `check_host NAME` (in this process: SSH, docker, NVIDIA runtime, nvidia-smi, hf, hub
   token, cache, disk, sessions) — on every host of KEY's pair when KEY is a multi-node
   model (`tensor_parallel_hosts`);
2. a real swap of the small model KEY onto the host, through the API, under the swap
   lock (the same job `arbiter-swap` runs: lock, swap, follow the log, release);
3. one real request through the broker (`/v1/chat/completions` with one token, or
   `/v1/embeddings` for an embedding model);
4. the swap back to what the host served before (the model of its last complete swap, or
   the catalog model whose served name the service reported), unless `--no-swap-back`.

The swap and the request go through the running instance on purpose: its engine is the
one that owns the hosts, and this is the path every user takes. Without `--api-key` (or
ARBITER_API_KEY) a key is created for the run and revoked at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from arbiter.models import ApiKey, Host, Service, Swap
from catalog.models import CatalogModel
from coordination.client.api import ArbiterApi
from coordination.client.errors import ClientError
from coordination.client.job import Options, SwapJob
from coordination.client.reporter import Reporter

HOLDER = "smoke_host"
LOCK_TTL_SECONDS = 600
REQUEST_TIMEOUT = 300.0  # the broker may still be waking or loading the model


@dataclass
class Step:
    """One step's outcome, as printed in the summary."""

    name: str
    ok: bool
    detail: str
    seconds: float


class Command(BaseCommand):
    help = (
        "Check a host, swap a small model onto it through the running Arbiter, send one "
        "real request through the broker, and swap back. Exit 0 when every step passed."
    )

    def add_arguments(self, parser):
        parser.add_argument("host", help="The inventory name of the host")
        parser.add_argument("--model", required=True, help="Catalog key of a small model")
        parser.add_argument(
            "--url",
            default=os.environ.get("ARBITER_URL")
            or f"http://127.0.0.1:{os.environ.get('ARBITER_PORT', '8000')}",
            help="The running Arbiter (default: ARBITER_URL, else 127.0.0.1:ARBITER_PORT)",
        )
        parser.add_argument(
            "--api-key",
            default=os.environ.get("ARBITER_API_KEY", ""),
            help="An API key (default: ARBITER_API_KEY; else one is made for this run)",
        )
        parser.add_argument(
            "--wait-timeout",
            type=float,
            default=float(settings.ARBITER_SWAP_HEALTH_TIMEOUT) + 600,
            help="Seconds each swap may take, pulls and downloads included",
        )
        parser.add_argument("--no-swap-back", action="store_true", help="Leave KEY loaded")

    def handle(self, *args, host: str, model: str, url: str, api_key: str, **options):
        host_row = Host.objects.filter(name=host, in_inventory=True).first()
        if host_row is None:
            raise CommandError(f"no host named {host!r} in the inventory")
        smoke_model = CatalogModel.objects.filter(key=model).first()
        if smoke_model is None:
            raise CommandError(f"no catalog model with key {model!r}")
        previous = previous_model(host_row)
        steps: list[Step] = []
        temporary_key = None
        if not api_key:
            temporary_key, api_key = ApiKey.objects.create_key(
                name=f"smoke_host {host} {timezone.now():%Y-%m-%d %H:%M}"
            )
        try:
            # A multi-node model needs every host of its pair ready, not only the named one.
            checked = [host, *(h for h in smoke_model.tensor_parallel_hosts or [] if h != host)]
            for name in checked:
                label = "check_host" if len(checked) == 1 else f"check_host {name}"
                steps.append(self.step(label, lambda name=name: self.check_host(name)))
            if all(step.ok for step in steps):
                swap = self.step(
                    f"swap in {model}",
                    lambda: self.swap(url, api_key, model, host, options["wait_timeout"]),
                )
                steps.append(swap)
                if swap.ok:
                    steps.append(
                        self.step(
                            "request through the broker",
                            lambda: broker_request(url, api_key, smoke_model),
                        )
                    )
                    if options["no_swap_back"]:
                        pass
                    elif previous and previous != model:
                        steps.append(
                            self.step(
                                f"swap back to {previous}",
                                lambda: self.swap(
                                    url, api_key, previous, host, options["wait_timeout"]
                                ),
                            )
                        )
                    else:
                        self.stdout.write(
                            f"nothing to swap back to: {host} served no other catalog model "
                            f"before; {model} stays loaded"
                        )
        finally:
            if temporary_key is not None:
                ApiKey.objects.filter(pk=temporary_key.pk).update(revoked_at=timezone.now())
        self.stdout.write("")
        for step in steps:
            mark = "✓" if step.ok else "✗"
            self.stdout.write(f"{mark} {step.name} ({step.seconds:.1f} s): {step.detail}")
        if not all(step.ok for step in steps):
            raise SystemExit(1)

    # -- the steps -----------------------------------------------------------------------
    def step(self, name: str, action: Callable[[], str]) -> Step:
        self.stdout.write(f"== {name}")
        started = time.monotonic()
        try:
            detail, ok = action(), True
        except StepFailed as failure:
            detail, ok = str(failure), False
        step = Step(name, ok, detail, time.monotonic() - started)
        mark = "✓" if ok else "✗"
        self.stdout.write(f"{mark} {name} ({step.seconds:.1f} s): {detail}")
        return step

    def check_host(self, host: str) -> str:
        try:
            call_command("check_host", host, stdout=self.stdout, stderr=self.stderr)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise StepFailed("a host check failed (see above)") from None
        except CommandError as error:
            raise StepFailed(str(error)) from None
        return "every check passed"

    def swap(self, url: str, api_key: str, model: str, host: str, wait_timeout: float) -> str:
        """The swap as `arbiter-swap` runs it: lock, swap, follow the log, release."""
        job_options = Options(
            model=model,
            holder=HOLDER,
            ttl=LOCK_TTL_SECONDS,
            host=host,
            purpose=f"smoke test of {host}",
            wait_timeout=wait_timeout,
            url=url,
            api_key=api_key,
            quiet=False,
            dry_run=False,
        )
        api = ArbiterApi(url, api_key)
        try:
            code = SwapJob(api, job_options, Reporter(quiet=False)).run()
        except ClientError as error:
            raise StepFailed(str(error)) from None
        finally:
            api.close()
        if code != 0:
            raise StepFailed(f"the swap did not complete (arbiter-swap exit code {code})")
        return f"{model} is served on {host}"


class StepFailed(Exception):
    """A step's failure; the message is what the summary prints."""


def previous_model(host: Host) -> str | None:
    """What to swap back to: the last complete swap's model, or the model being served."""
    last = (
        Swap.objects.filter(host=host, state=Swap.COMPLETE, dry_run=False)
        .order_by("-finished_at", "-pk")
        .first()
    )
    if last is not None and CatalogModel.objects.filter(key=last.model_key).exists():
        return last.model_key
    served = (
        Service.objects.filter(host=host, kind=Service.KIND_VLLM, in_inventory=True)
        .exclude(loaded_model="")
        .values_list("loaded_model", flat=True)
        .first()
    )
    if served:
        match = CatalogModel.objects.filter(served_name=served).first()
        if match is not None:
            return match.key
    return None


def broker_request(url: str, api_key: str, model: CatalogModel) -> str:
    """One real request through the broker; the answer's first words and its latency."""
    if model.kind == "embeddings":
        path, body = "/v1/embeddings", {"model": model.key, "input": "smoke test"}
    else:
        path = "/v1/chat/completions"
        body = {
            "model": model.key,
            "messages": [{"role": "user", "content": "Reply with one word: ready?"}],
            "max_tokens": 1,
        }
    started = time.monotonic()
    try:
        response = httpx.post(
            url.rstrip("/") + path,
            json=body,
            headers={"Authorization": f"Bearer {api_key}", "X-Client-Id": HOLDER},
            timeout=REQUEST_TIMEOUT,
        )
    except httpx.HTTPError as error:
        raise StepFailed(f"{path}: {type(error).__name__}: {error}") from None
    took = (time.monotonic() - started) * 1000
    if response.status_code != 200:
        raise StepFailed(f"{path} answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        data = response.json()
    except ValueError:
        raise StepFailed(f"{path} answered HTTP 200 but not JSON: {response.text[:200]}") from None
    if model.kind == "embeddings":
        vectors = data.get("data") or []
        size = len(vectors[0].get("embedding") or []) if vectors else 0
        return f"{path}: one embedding of {size} numbers in {took:.0f} ms"
    choices = data.get("choices") or [{}]
    text = ((choices[0].get("message") or {}).get("content") or "").strip()
    return f"{path}: answered {text[:40]!r} in {took:.0f} ms"
