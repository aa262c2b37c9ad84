"""The ``switchboard`` command: the composition root for operators.

It reads settings once (file, environment, flags), then runs one command:

* ``serve``: run the relay and API until SIGTERM/SIGINT; SIGHUP reloads TLS.
* ``host add EMAIL --password-stdin``: create a host account.
* ``apikey create --scope cdr:read``: make an API key, printed once.
* ``cdr export --format jsonl|csv``: write call records to stdout.
* ``demo``: a whole meeting on a throwaway relay, ending in its record.
* ``bench``: the load generator, against a relay of its own or a deployment.

Exit status: 0 success, 1 failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import getpass
import importlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from . import __version__, logs
from .bench.scenarios import SCENARIOS  # plain data: imports none of the bench extra
from .clock import Clock
from .config import Settings
from .core import tokens
from .core.records import COLUMNS, iso_utc
from .errors import ConfigError, SwitchboardError
from .osutil import raise_open_files_limit
from .passwords import MIN_PASSWORD_CHARS, Passwords, is_email
from .store import Store, open_store

__all__ = ["main", "run_async"]

log = logging.getLogger("switchboard")

SCOPES = ("cdr:read", "meetings:write")
BENCH_EXTRA = "switchboard bench needs the bench extra: pip install 'switchboard[bench]'"
_BENCH_MODULES = ("picows", "hdrh", "numpy")


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop when it is available (it is, on Linux and macOS)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: getattr(args, key, None)
        for key in ("data_dir", "bind", "public_host", "relay_port", "api_port", "log_level")
    }
    return Settings.load(config_file=args.config, overrides=overrides)


async def _with_store(settings: Settings, fn: Callable[[Store], Awaitable[int]]) -> int:
    store = await open_store(settings.effective_database_url)
    try:
        return await fn(store)
    finally:
        await store.close()


# serve


def _command_name() -> str:
    """How the user can run this command again, e.g. ``.venv/bin/switchboard``."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "switchboard":
        return "python -m switchboard"
    try:
        return str(argv0.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(argv0)


def _banner(node: Any) -> str:
    s = node.settings
    lines = [
        f"switchboard {__version__} is running (Ctrl-C or SIGTERM stops it; SIGHUP reloads TLS)",
        f"  meetings (wss):  {node.relay_url}",
        f"  API (https):     {node.api_url}   OpenAPI: {node.api_url}/openapi.json",
    ]
    if node.ca_file is not None:
        lines.append(f"  trust this CA:   {node.ca_file.resolve()}")
    lines += [
        "",
        "Create the first host, then sign in and invite people:",
        f"  {_command_name()} host add you@example.com --password-stdin --data-dir {s.data_dir}",
        f"  curl --cacert {node.ca_file or '<ca>'} {node.api_url}/v1/sessions \\",
        "       -H 'content-type: application/json' \\",
        '       -d \'{"email": "you@example.com", "password": "..."}\'',
        "Then create a meeting (POST /v1/meetings) and invitations",
        "(POST /v1/meetings/<id>/invitations); each invitee joins at the wss address above",
        "with its invitation token, e.g. switchboard.client.Participant.join(url, token).",
        "See README.md ('A meeting in five minutes') for the whole walk.",
    ]
    return "\n".join(lines)


async def _serve(settings: Settings) -> int:
    from .node import Node

    wanted = settings.max_connections + 256
    if (reached := raise_open_files_limit(wanted)) < wanted:
        log.warning(
            "open files limited to %d, below max_connections + 256 = %d; raise LimitNOFILE",
            reached,
            wanted,
        )
    node = Node(settings)
    await node.start()
    # Everything loaded so far lives as long as the process: keep it out of the
    # collector's way, so a full collection never walks the framework's objects
    # in the middle of switching.
    gc.collect()
    gc.freeze()
    print(_banner(node), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, node.reload_tls)
    try:
        await stop.wait()
        log.info("stopping: ending live meetings")
    finally:
        await node.stop()
    log.info("stopped")
    return 0


# host, apikey, cdr


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise ConfigError("no terminal to ask for a password: use --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the passwords differ")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    return password


async def _host_add(settings: Settings, email: str, password: str) -> int:
    if not is_email(email):
        raise ConfigError(f"not an email address: {email!r}")
    password_hash = await Passwords().hash(password)

    async def run(store: Store) -> int:
        host = await store.add_host(email, password_hash, Clock().wall())
        print(f"host created: {host.host_id} {host.email}")
        return 0

    return await _with_store(settings, run)


async def _apikey_create(
    settings: Settings, scopes: list[str], label: str, host_email: str | None
) -> int:
    if "meetings:write" in scopes and not host_email:
        raise ConfigError("a meetings:write key acts for one host: give --host EMAIL")
    token, digest = tokens.mint(tokens.TokenKind.API_KEY)

    async def run(store: Store) -> int:
        host_id = None
        if host_email:
            host = await store.host_by_email(host_email)
            if host is None:
                raise ConfigError(f"no host with email {host_email!r}")
            host_id = host.host_id
        key = await store.create_api_key(
            digest, frozenset(scopes), label, Clock().wall(), host_id=host_id
        )
        print(token)
        print(
            f"API key {key.key_id} ({' '.join(sorted(key.scopes))}) created;"
            " the key above is shown only now.",
            file=sys.stderr,
        )
        return 0

    return await _with_store(settings, run)


async def _host_restore(settings: Settings, email: str) -> int:
    async def run(store: Store) -> int:
        host = await store.restore_host(email)
        if host is None:
            print(
                f"switchboard: no deleted, unpurged account with email {email!r}", file=sys.stderr
            )
            return 1
        print(f"host restored: {host.host_id} {host.email}")
        return 0

    return await _with_store(settings, run)


async def _purge(settings: Settings) -> int:
    async def run(store: Store) -> int:
        now = Clock().wall()
        purged = await store.purge_hosts(now - settings.account_retention_days * 86400, now)
        await store.delete_expired(
            now,
            idle_timeout=settings.session_idle_timeout,
            max_lifetime=settings.session_max_lifetime,
            unverified_before=now - 48 * 3600.0,
        )
        print(f"purged the personal data of {purged} deleted account(s)")
        return 0

    return await _with_store(settings, run)


async def _backup(settings: Settings, path: Path) -> int:
    async def run(store: Store) -> int:
        await store.backup(path)
        print(f"backup written: {path} (accounts, meeting metadata, records; never content)")
        return 0

    return await _with_store(settings, run)


def _restore(settings: Settings, path: Path) -> int:
    import sqlite3

    url = settings.effective_database_url
    if not url.startswith("sqlite:///"):
        raise ConfigError("restore works on the embedded database; see docs for PostgreSQL")
    target = Path(url.removeprefix("sqlite:///"))
    try:
        probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master")}
            version = probe.execute("PRAGMA user_version").fetchone()[0]
        finally:
            probe.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path} is not a switchboard backup ({exc})") from None
    if not {"hosts", "meetings", "cdrs"} <= tables or version < 1:
        raise ConfigError(f"{path} is not a switchboard backup")
    from .node import hold_data_dir

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        lock = hold_data_dir(settings.data_dir)  # refused while a server runs
    except ConfigError:
        raise ConfigError(
            "the data directory is in use by switchboard serve: stop it first"
        ) from None
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        dest = sqlite3.connect(target)
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    target.chmod(0o600)
    os.close(lock)
    print(f"restored {target} from {path}")
    return 0


async def _apikey_list(settings: Settings, out: TextIO) -> int:
    async def run(store: Store) -> int:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(("key_id", "scopes", "host_id", "label", "created", "last_used", "state"))
        for key in await store.list_api_keys():
            writer.writerow(
                (
                    key.key_id,
                    ",".join(sorted(key.scopes)),
                    key.host_id or "-",
                    key.label or "-",
                    iso_utc(key.created_at),
                    iso_utc(key.last_used_at) if key.last_used_at else "never",
                    "revoked" if key.revoked else "active",
                )
            )
        return 0

    return await _with_store(settings, run)


async def _apikey_revoke(settings: Settings, key_id: str) -> int:
    async def run(store: Store) -> int:
        if not await store.revoke_api_key(key_id):
            print(f"switchboard: no API key {key_id}", file=sys.stderr)
            return 1
        print(f"API key {key_id} revoked", file=sys.stderr)
        return 0

    return await _with_store(settings, run)


def _cdr_verify(settings: Settings, path: Path, public_key: Path | None) -> int:
    from .signing import RecordSigner, load_public_key, verify_records

    if public_key is not None:
        try:
            pem = public_key.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {public_key}: {exc.strerror}") from None
    else:
        key_file = settings.data_dir / "cdr-signing-key.pem"
        if not key_file.exists():
            raise ConfigError(
                f"no signing key in {settings.data_dir}:"
                " give --public-key (from GET /v1/cdrs/public-key)"
            )
        pem = RecordSigner.load_or_create(key_file).public_pem().encode()
    try:
        key = load_public_key(pem)
    except ValueError as exc:
        raise ConfigError(f"{public_key}: {exc}") from None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"{path}:{number}: not a JSON record", file=sys.stderr)
            return 1
    verdict = verify_records(records, key)
    if not verdict.ok:
        assert verdict.bad_index is not None
        print(
            f"BAD record {verdict.bad_record_id} (record {verdict.bad_index + 1} of the file):"
            f" {verdict.reason}"
        )
        return 1
    note = " (the chain continues records before this file)" if verdict.starts_after_genesis else ""
    if verdict.unsigned:
        note += f"; {verdict.unsigned} earlier unsigned records (schema 1) not checked"
    print(f"OK {verdict.checked} records: signatures and chain verified{note}")
    return 0


async def _cdr_export(settings: Settings, fmt: str, after: int, out: TextIO) -> int:
    async def run(store: Store) -> int:
        writer: csv.DictWriter[str] | None = None
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=("cursor", *COLUMNS), lineterminator="\n")
            writer.writeheader()
        cursor = after
        while True:
            page = await store.list_records(after=cursor, limit=500)
            if not page:
                break
            for stored in page:
                if writer is not None:
                    writer.writerow({"cursor": stored.seq, **stored.record.csv_row()})
                else:
                    out.write(json.dumps({"cursor": stored.seq, **stored.record.to_dict()}) + "\n")
            cursor = page[-1].seq
        out.flush()
        return 0

    return await _with_store(settings, run)


# bench


def _check_bench(args: argparse.Namespace) -> None:
    """Refuse a ``bench`` command line that cannot run, before anything starts."""
    if args.scale <= 0:
        raise ConfigError("--scale must be positive")
    if args.seconds is not None and args.seconds <= 0:
        raise ConfigError("--seconds must be positive")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.target is None:
        alone = [
            flag
            for flag, value in (("--api", args.api), ("--api-key", args.api_key), ("--ca", args.ca))
            if value is not None
        ]
        if alone:
            raise ConfigError(f"{', '.join(alone)} only go with --target")
        return
    relay = urlsplit(args.target)
    if relay.scheme != "wss" or not relay.netloc:
        raise ConfigError(
            f"--target must be the relay's wss:// URL (TLS), e.g. wss://HOST:8443/v1/ws;"
            f" got {args.target!r}"
        )
    if not args.api or not args.api_key:
        raise ConfigError(
            "--target needs --api https://HOST:PORT and --api-key KEY (scope meetings:write)"
        )
    api = urlsplit(args.api)
    if api.scheme != "https" or not api.netloc:
        raise ConfigError(f"--api must be the API's https:// URL, got {args.api!r}")
    if args.ca is not None and not args.ca.is_file():
        raise ConfigError(f"--ca: no such file {args.ca}")


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


async def _bench_one(
    args: argparse.Namespace, name: str, workers: int, plan: tuple[list[int], list[int]]
) -> dict[str, Any]:
    """One scenario against the deployment, or against a fresh relay of our own."""
    from .bench.runner import SwitchboardTarget, run_scenario, start_switchboard

    scenario = SCENARIOS[name].scaled(args.scale, args.seconds)
    server_cpus, generator_cpus = plan
    if args.target is not None:
        target = SwitchboardTarget(args.target, args.api, args.api_key, args.ca)
        try:
            return await run_scenario(target, scenario, workers=workers, cpus=generator_cpus)
        finally:
            await target.stop()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        target = await start_switchboard(Path(tmp), cpus=server_cpus)
        try:
            return await run_scenario(target, scenario, workers=workers, cpus=generator_cpus)
        finally:
            await target.stop()


async def _target_accepts(args: argparse.Namespace) -> bool:
    """Ask the deployment's API once, before any scenario: is it there, and is the key good?"""
    import httpx

    from .client import ApiClient, ApiError

    try:
        async with ApiClient(args.api, ca_file=args.ca, token=args.api_key, timeout=15) as api:
            await api.meetings()
    except ApiError as exc:
        print(
            f"switchboard: the API refused the key ({exc.status} {exc.code}): {exc.reason}; "
            "bench needs a key with the meetings:write scope, bound to a host",
            file=sys.stderr,
        )
        return False
    except (OSError, httpx.HTTPError) as exc:
        print(f"switchboard: cannot reach the API at {args.api}: {exc}", file=sys.stderr)
        return False
    return True


async def _bench(args: argparse.Namespace, out: TextIO) -> int:
    _check_bench(args)
    try:
        for module in _BENCH_MODULES:
            importlib.import_module(module)
        from .bench import report
        from .bench.runner import cpu_plan
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _BENCH_MODULES:
            raise
        print(BENCH_EXTRA, file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {args.out}: {exc.strerror}") from None
    names: Sequence[str] = list(dict.fromkeys(args.scenario or SCENARIOS))
    if args.target is None:
        # The relay on one CPU, the generator on the others, as benchmarks/run.py does.
        server_cpus, generator_cpus, workers = cpu_plan(args.workers)
    else:
        # The relay is someone else's: every CPU here is the generator's.
        server_cpus, generator_cpus, workers = [], [], args.workers or _usable_cpus()
    if args.target is not None and not await _target_accepts(args):
        return 1
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in names:
        try:
            rows.append(await _bench_one(args, name, workers, (server_cpus, generator_cpus)))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            print(f"switchboard: bench {name} failed: {reason}", file=sys.stderr)
            failed.append(f"{name}: {reason}"[:300])
    settings = {
        "target": args.target or "a switchboard of its own per scenario (embedded defaults)",
        "api": args.api,
        "scale": args.scale,
        "seconds": args.seconds,
        "workers": workers,
        "server_cpus": server_cpus,
        "generator_cpus": generator_cpus,
        "failed_scenarios": failed,
        "scenarios": {name: SCENARIOS[name].description for name in names},
    }
    try:
        json_path, md_path = report.write(args.out, rows, settings)
    except OSError as exc:
        print(f"switchboard: cannot write the results to {args.out}: {exc}", file=sys.stderr)
        return 1
    out.write(report.markdown(rows))
    out.flush()
    print(f"results written: {json_path} and {md_path}", file=sys.stderr)
    return 1 if failed else 0


# argument parsing


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file")
    common.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    common.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    parser = argparse.ArgumentParser(
        prog="switchboard", description="A real-time meeting switching relay."
    )
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the relay and API")
    serve.add_argument("--bind", help="listen address (default 127.0.0.1)")
    serve.add_argument("--public-host", help="host name clients use (default localhost)")
    serve.add_argument("--relay-port", type=int, help="wss port (default 8443)")
    serve.add_argument("--api-port", type=int, help="https port (default 8444)")

    host = commands.add_parser("host", help="manage host accounts")
    host_commands = host.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = host_commands.add_parser("add", parents=[common], help="create a host account")
    add.add_argument("email")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    restore_host = host_commands.add_parser(
        "restore", parents=[common], help="undo an account deletion before it is purged"
    )
    restore_host.add_argument("email")
    commands.add_parser(
        "purge", parents=[common], help="erase personal data of accounts deleted long enough ago"
    )
    backup = commands.add_parser(
        "backup", parents=[common], help="copy the database online to a file"
    )
    backup.add_argument("path", type=Path)
    restore = commands.add_parser(
        "restore", parents=[common], help="replace the database with a backup (server stopped)"
    )
    restore.add_argument("path", type=Path)

    apikey = commands.add_parser("apikey", help="manage API keys")
    apikey_commands = apikey.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = apikey_commands.add_parser("create", parents=[common], help="create an API key")
    create.add_argument("--scope", action="append", choices=SCOPES, required=True)
    create.add_argument("--label", default="", help="a note saying who holds the key")
    create.add_argument("--host", help="the host a key acts for (needed for meetings:write)")
    apikey_commands.add_parser("list", parents=[common], help="list API keys (never the keys)")
    revoke = apikey_commands.add_parser("revoke", parents=[common], help="revoke an API key")
    revoke.add_argument("key_id")

    cdr = commands.add_parser("cdr", help="call-detail records")
    cdr_commands = cdr.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = cdr_commands.add_parser("export", parents=[common], help="write records to stdout")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--after", type=int, default=0, help="cursor: records after this one")
    verify = cdr_commands.add_parser(
        "verify", parents=[common], help="check the signatures and chain of an exported file"
    )
    verify.add_argument("file", type=Path, help="a JSON-lines export (cdr export --format jsonl)")
    verify.add_argument(
        "--public-key", type=Path, help="PEM public key (default: this data dir's signing key)"
    )

    commands.add_parser("demo", parents=[common], help="run a whole meeting on a throwaway relay")

    bench = commands.add_parser(
        "bench",
        help="measure a relay under load: CPU per delivery, latency, delivery",
        description=(
            "Drive real meetings (created through the API, joined with invitations over TLS) "
            "and report server CPU per delivered frame, deliveries per second, one-way latency "
            "percentiles and delivery. Without --target it starts a switchboard of its own "
            "(embedded defaults, a temporary directory, a fresh one per scenario), pinned to "
            "one CPU with the generator on the others. With --target it drives a deployment: "
            "--api-key must be an API key with scope meetings:write bound to a host "
            "(switchboard apikey create --scope meetings:write --host EMAIL); the meetings it "
            "creates are ended when each scenario ends, and the server's CPU and memory are "
            "not measured. Progress goes to standard error, the results table to standard "
            "output, JSON and Markdown files to --out. Needs the bench extra."
        ),
    )
    bench.add_argument(
        "--scenario",
        action="append",
        choices=tuple(SCENARIOS),
        help="a load shape to run; repeat for several (default: all, in this order)",
    )
    bench.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of each scenario's meetings (the webinar's: participants; default 1)",
    )
    bench.add_argument(
        "--seconds",
        type=float,
        metavar="S",
        help="seconds measured per scenario, per ramp step (default: the scenario's, 10 or 5)",
    )
    bench.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="generator processes (default: one per CPU left to the generator)",
    )
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        metavar="DIR",
        help="directory for the JSON and Markdown results (default ./bench-results)",
    )
    bench.add_argument(
        "--target", metavar="WSS_URL", help="a deployment's relay, wss://HOST:PORT/v1/ws"
    )
    bench.add_argument("--api", metavar="HTTPS_URL", help="its API, https://HOST:PORT")
    bench.add_argument(
        "--api-key", metavar="KEY", help="an API key with scope meetings:write bound to a host"
    )
    bench.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA that signs its certificate (default: system)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``switchboard`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench":  # no settings: it measures a relay, it does not run one
            return run_async(_bench(args, sys.stdout))
        settings = _settings(args)
        logs.setup(
            settings.log_level, fmt=settings.log_format, client_ip=settings.client_ip_logging
        )
        if args.command == "serve":
            return run_async(_serve(settings))
        if args.command == "host":
            if args.action == "restore":
                return run_async(_host_restore(settings, args.email))
            return run_async(_host_add(settings, args.email, _read_password(args)))
        if args.command == "purge":
            return run_async(_purge(settings))
        if args.command == "backup":
            return run_async(_backup(settings, args.path))
        if args.command == "restore":
            return _restore(settings, args.path)
        if args.command == "apikey":
            if args.action == "list":
                return run_async(_apikey_list(settings, sys.stdout))
            if args.action == "revoke":
                return run_async(_apikey_revoke(settings, args.key_id))
            return run_async(_apikey_create(settings, args.scope, args.label, args.host))
        if args.command == "cdr":
            if args.action == "verify":
                return _cdr_verify(settings, args.file, args.public_key)
            return run_async(_cdr_export(settings, args.format, args.after, sys.stdout))
        if args.command == "demo":
            from .demo import run_demo

            return run_async(run_demo(settings))
    except ConfigError as exc:
        print(f"switchboard: {exc.reason}", file=sys.stderr)
        return 2
    except SwitchboardError as exc:
        print(f"switchboard: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``cdr export | head``): not an error of ours.
        sys.stderr.close()
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
