"""The command line: options from arguments and the environment, exit codes, `main`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from coordination.client.api import ArbiterApi
from coordination.client.errors import ClientError, Interrupted
from coordination.client.job import Options, SwapJob
from coordination.client.reporter import Reporter, install_signal_handlers

DEFAULT_URL = "http://127.0.0.1:8000"

EXIT_CODES_HELP = """\
exit codes:
  0  the swap completed (or the dry run passed); the lock was released
  2  usage error (bad or missing arguments, no API key)
  3  locked: someone else holds the swap lock (their holder and expiry are printed)
  4  the swap failed or was cancelled (its error is printed)
  5  --wait-timeout passed: the swap was cancelled, the lock released
  6  Arbiter unreachable (connection refused, timeouts, 502/503/504 from a proxy)
  7  authentication or permission error (401/403: check the API key)
  8  any other API error, e.g. unknown model (404), bad TTL (422), host busy (409)
  130/143  interrupted by SIGINT/SIGTERM: the swap was cancelled, the lock released

environment: ARBITER_URL, ARBITER_API_KEY (or ARBITER_API_KEY_FILE: a file holding it)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arbiter-swap",
        description=(
            "Reserve the GPU for a cron job: acquire Arbiter's swap lock, swap a model in,\n"
            "print the swap's log until it ends, and release the lock - always, also on\n"
            "failure, timeout and SIGINT/SIGTERM (which cancel the swap first)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="KEY", help="catalog key to swap in")
    parser.add_argument("--holder", required=True, metavar="NAME", help="who holds the lock")
    parser.add_argument(
        "--ttl",
        required=True,
        type=_positive_int,
        metavar="SECONDS",
        help="lock lease; extended every TTL/3 while the swap runs, so it bounds how long "
        "a crashed client keeps the lock",
    )
    parser.add_argument(
        "--lease",
        type=_positive_int,
        metavar="SECONDS",
        help="once the swap completed, lease the model on its host for SECONDS (nobody "
        "else swaps it out, evicts or unloads it); prints ARBITER_LEASE_ID=... and "
        "ARBITER_LEASE_TOKEN=... on stdout, for the job to extend and release it",
    )
    parser.add_argument("--host", metavar="H", help="host to swap on (default: the model's)")
    parser.add_argument("--purpose", default=None, metavar="TEXT", help="shown with the lock")
    parser.add_argument(
        "--wait-timeout",
        type=_positive_float,
        metavar="S",
        help="give up (cancel the swap, exit 5) after S seconds; default: wait until it ends",
    )
    parser.add_argument(
        "--url", metavar="URL", help=f"Arbiter's base URL (default $ARBITER_URL or {DEFAULT_URL})"
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", metavar="KEY", help="API key (default $ARBITER_API_KEY)")
    keys.add_argument("--api-key-file", metavar="PATH", help="read the API key from a file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="pre-flight checks and the command only; nothing runs on the host "
        "(the lock is still taken and released)",
    )
    return parser


def _read_key_file(parser: argparse.ArgumentParser, path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError as exc:
        parser.error(f"{what}: cannot read {path}: {exc.strerror or exc}")
    if not key:
        parser.error(f"{what}: {path} is empty")
    return key


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Options:
    """The options, with defaults from `env`; exits 2 (argparse) on a usage error."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    url = (args.url or env.get("ARBITER_URL") or DEFAULT_URL).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        parser.error(f"--url: must start with http:// or https://, got {url!r}")
    if args.api_key is not None:
        key = args.api_key.strip()
    elif args.api_key_file:
        key = _read_key_file(parser, args.api_key_file, "--api-key-file")
    elif env.get("ARBITER_API_KEY", "").strip():
        key = env["ARBITER_API_KEY"].strip()
    elif env.get("ARBITER_API_KEY_FILE"):
        key = _read_key_file(parser, env["ARBITER_API_KEY_FILE"], "ARBITER_API_KEY_FILE")
    else:
        key = ""
    if not key:
        parser.error("no API key: set ARBITER_API_KEY, or pass --api-key-file PATH")
    model, holder = args.model.strip(), args.holder.strip()
    if not model or not holder:
        parser.error("--model and --holder must not be blank")
    purpose = args.purpose if args.purpose is not None else f"arbiter-swap --model {model}"
    return Options(
        model=model,
        holder=holder,
        ttl=args.ttl,
        host=(args.host or "").strip() or None,
        purpose=purpose,
        wait_timeout=args.wait_timeout,
        url=url,
        api_key=key,
        quiet=args.quiet,
        dry_run=args.dry_run,
        lease=args.lease,
    )


def run(options: Options) -> int:
    say = Reporter(options.quiet)
    api = ArbiterApi(options.url, options.api_key)
    try:
        return SwapJob(api, options, say).run()
    except ClientError as exc:
        say.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        say.error(f"interrupted by {signal.Signals(signum).name}")
        return 128 + signum
    finally:
        api.close()


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a C locale under cron must not crash on "✓"
            stream.reconfigure(errors="replace")
    options = parse_args(argv)
    previous = install_signal_handlers()
    try:
        return run(options)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
