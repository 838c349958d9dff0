"""``clerk-tinybird``: check the configuration, run the demo, decode a JWT, mint a Tinybird JWT.

    clerk-tinybird check [--online]  every configuration rule; --online: the JWKS and template
    clerk-tinybird demo [--app starlette|flask|django] [--host 127.0.0.1] [--port 8000]
    clerk-tinybird decode JWT        (or ``-`` to read it from stdin, out of your shell history)
    clerk-tinybird mint --user U [--org-id O --org-slug S] [--org-role R]

Exit codes: 0 ok, 1 problems found (check) or the demo stopped with an error, 2 bad input or
configuration.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from .core.tokens import TokenError
from .errors import ConfigurationError
from .models import ClerkSession
from .settings import Settings
from .tinybird import LocalTokenSource

__all__ = ["main"]

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clerk-tinybird`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    command: Any = args.run
    return int(command(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clerk-tinybird",
        description="Clerk sessions in, per-tenant Tinybird JWTs out: demo and token tools.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="check the configuration in the environment (and, with --online, against Clerk)",
        description="Check every configuration rule against the environment: one line per "
        "finding, naming the variable to fix. --online also fetches the JWKS with "
        "CLERK_SECRET_KEY and reads the JWT template from Clerk. Exit 0 clean, 1 problems.",
    )
    check.add_argument("--online", action="store_true", help="also ask Clerk (JWKS, template)")
    check.set_defaults(run=_check)

    demo = commands.add_parser(
        "demo",
        help="run the example app with a fake Clerk and a fake Tinybird on this machine",
        description="Run the example app, FakeClerk and FakeTinybird on loopback: no account, "
        "no network. Open the printed URL, sign in as a seeded user, watch the token.",
    )
    demo.add_argument("--app", choices=("starlette", "flask", "django"), default="starlette")
    demo.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    demo.add_argument("--port", type=int, default=8000, help="default: 8000 (0: any free port)")
    demo.add_argument(
        "--source",
        choices=("template", "local"),
        default="template",
        help="Tinybird tokens from the Clerk JWT template (default) or minted locally",
    )
    demo.set_defaults(run=_demo)

    decode = commands.add_parser(
        "decode",
        help="print a JWT's header and claims WITHOUT verifying it",
        description="Print the header and claims of a JWT as JSON. Nothing is verified: "
        "not the signature, not the expiry.",
    )
    decode.add_argument("jwt", metavar="JWT", help="the token, or - to read it from stdin")
    decode.set_defaults(run=_decode)

    mint = commands.add_parser(
        "mint",
        help="mint a Tinybird JWT locally from the TINYBIRD_* environment variables",
        description="Sign a Tinybird JWT with TINYBIRD_JWT_SECRET (the workspace admin token) "
        "for TINYBIRD_WORKSPACE_ID with TINYBIRD_JWT_SCOPES, as the middleware would for "
        "this user and org, and print it.",
    )
    mint.add_argument("--user", required=True, help="Clerk user id ({{user.id}})")
    mint.add_argument("--org-id", help="active org id ({{org.id}})")
    mint.add_argument("--org-slug", help="active org slug ({{org.slug}})")
    mint.add_argument("--org-role", help="active org role ({{org.role}}), e.g. admin")
    mint.add_argument("--session-id", default="sess_cli", help="{{session.id}} (default sess_cli)")
    mint.set_defaults(run=_mint)
    return parser


# -- check ---------------------------------------------------------------------------------------

_MARKS = {"ok": ("✓", "32"), "warning": ("!", "33"), "error": ("✗", "31")}


def _check(args: argparse.Namespace) -> int:
    import os

    from .checks import offline, online
    from .core.ops import SystemClock

    findings = offline(os.environ, SystemClock())
    if args.online and not any(f.level == "error" for f in findings):
        from .drivers import SyncDriver

        driver = SyncDriver()
        try:
            findings += driver.run(online(Settings.from_env()))
        finally:
            driver.close()
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    for finding in findings:
        mark, code = _MARKS[finding.level]
        print(
            f"\033[{code}m{mark}\033[0m {finding.message}"
            if colour
            else f"{mark} {finding.message}"
        )
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    print(f"{errors} problem(s), {warnings} warning(s)")
    return 1 if errors else 0


# -- decode --------------------------------------------------------------------------------------


class _NotAJWT(ValueError):
    pass


def _segment(part: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _NotAJWT(f"the {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise _NotAJWT(f"the {what} is not a JSON object")
    return value


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of ``token``, NOT verified; raises ValueError when it is not a JWT."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise _NotAJWT("a JWT has three dot-separated parts")
    return _segment(parts[0], "header"), _segment(parts[1], "payload")


def _decode(args: argparse.Namespace) -> int:
    token = sys.stdin.read() if args.jwt == "-" else args.jwt
    try:
        header, claims = decode_unverified(token)
    except ValueError as exc:
        print(f"clerk-tinybird decode: not a JWT: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(json.dumps({"header": header, "claims": claims}, indent=2, sort_keys=False))
    _warn_unverified(claims, sys.stderr)
    return 0


def _warn_unverified(claims: dict[str, Any], out: TextIO) -> None:
    print("NOT VERIFIED: decoded only; the signature and the claims were not checked.", file=out)
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        try:
            when = dt.datetime.fromtimestamp(exp, tz=dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return
        left = exp - dt.datetime.now(dt.timezone.utc).timestamp()
        state = f"in {_duration(left)}" if left > 0 else f"{_duration(-left)} ago"
        print(f"exp: {when.isoformat()} ({state})", file=out)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


# -- mint ----------------------------------------------------------------------------------------


def _mint(args: argparse.Namespace) -> int:
    if args.org_slug is not None and args.org_id is None:
        print("clerk-tinybird mint: --org-slug needs --org-id", file=sys.stderr)
        return USAGE_ERROR
    try:
        settings = Settings.from_env()
        for field in ("tinybird_workspace_id", "tinybird_jwt_secret"):
            if not getattr(settings, field):
                raise ConfigurationError(f"{Settings.env_name(field)} is required to mint")
        source = LocalTokenSource.from_settings(settings)
    except ConfigurationError as exc:
        print(f"clerk-tinybird mint: {exc}", file=sys.stderr)
        return USAGE_ERROR
    role = args.org_role
    if role and not role.startswith("org:"):
        role = f"org:{role}"
    session = ClerkSession(
        user_id=args.user,
        session_id=args.session_id,
        org_id=args.org_id,
        org_slug=args.org_slug,
        org_role=role if args.org_id else None,
    )
    try:
        token = source.mint(session)
    except TokenError as exc:
        print(
            f"clerk-tinybird mint: refused ({exc.code}): a fixed param would be empty; "
            "pass the org it needs (--org-id/--org-slug)",
            file=sys.stderr,
        )
        return USAGE_ERROR
    print(token.jwt)
    print(f"expires at {token.expires_at.isoformat()}", file=sys.stderr)
    return 0


# -- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        with demo.running(args.app, host=args.host, port=args.port, source=args.source) as run:
            _banner(run)
            while not stop.wait(0.25):
                if not run.is_alive():
                    print("clerk-tinybird demo: the app server stopped", file=sys.stderr)
                    return 1
        print("clerk-tinybird demo: stopped", flush=True)
        return 0
    except demo.DemoError as exc:
        print(f"clerk-tinybird demo: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as exc:
        print(
            f"clerk-tinybird demo: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _banner(run: Any) -> None:
    from . import demo

    orgs = ", ".join(org.slug for org in demo.ORGS)
    print(
        f"clerk-tinybird demo ({run.app} example): everything runs on this machine.\n"
        f"  Dashboard     {run.url}/\n"
        f"  Sign in       {run.sign_in_url}\n"
        f"  FakeClerk     {run.clerk.api_url}  (Backend and Frontend API, JWT template"
        " 'tinybird', 60-second session tokens, handshake on)\n"
        f"  FakeTinybird  {run.tinybird.api_url}  (pipe {demo.PIPE}: {orgs})\n"
        "Press Ctrl+C to stop.",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
