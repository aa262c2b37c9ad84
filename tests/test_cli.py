"""The ``switchboard`` command as an operator runs it: real processes, real files."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from switchboard.client import ApiClient, ApiError, Disconnected, Participant

from .conftest import TIMEOUT, ServeProcess, host_add, switchboard_cmd

PASSWORD = "correct horse battery staple"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        switchboard_cmd(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=False,
    )


def test_host_add_creates_an_account_that_can_sign_in_later(tmp_path: Path) -> None:
    data = str(tmp_path / "var")
    done = cli(
        "host",
        "add",
        "ops@example.com",
        "--password-stdin",
        "--data-dir",
        data,
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert "ops@example.com" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr

    again = cli(
        "host",
        "add",
        "OPS@example.com",
        "--password-stdin",
        "--data-dir",
        data,
        stdin=PASSWORD + "\n",
    )
    assert again.returncode == 1
    assert "exists" in again.stderr

    short = cli(
        "host", "add", "b@example.com", "--password-stdin", "--data-dir", data, stdin="short\n"
    )
    assert short.returncode == 2
    assert "at least" in short.stderr

    bad = cli(
        "host", "add", "not-an-email", "--password-stdin", "--data-dir", data, stdin=PASSWORD + "\n"
    )
    assert bad.returncode == 2
    assert "email" in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--relay-port", "70000"], "relay_port"),
        (["--api-port", "8443", "--relay-port", "8443"], "must differ"),
        (["--log-level", "loud"], "invalid choice"),
    ],
)
def test_serve_refuses_bad_settings_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = cli("serve", "--data-dir", str(tmp_path / "var"), *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text("relay_prot = 9000\n")
    done = cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "var"))
    assert done.returncode == 2
    assert "unknown setting 'relay_prot'" in done.stderr
    config.write_text('tls_cert = "/nonexistent/cert.pem"\ntls_key = "/nonexistent/key.pem"\n')
    done = cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "var"))
    assert done.returncode == 2
    assert "no such file" in done.stderr


def test_demo_runs_a_whole_meeting_and_prints_its_record() -> None:
    done = cli("demo")
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])
    assert record["distinct_participants"] == 3
    assert record["peak_participants"] == 3
    assert record["features_used"] == ["chat"]
    assert record["usage"]["chat"]["deliveries"] == 6
    assert record["end_reason"] == "host_ended"


async def _meeting_with_records(sp: ServeProcess, count: int) -> list[str]:
    async with ApiClient(sp.api_url, ca_file=sp.ca_file) as api:
        await api.sign_in("ops@example.com", PASSWORD)
        mids = []
        for _ in range(count):
            mid = (await api.create_meeting())["meeting_id"]
            people = [
                await Participant.join(
                    sp.relay_url, (await api.invite(mid))["token"], ca_file=sp.ca_file
                )
                for _ in range(2)
            ]
            await people[0].send_chat("hi")
            await people[1].recv(timeout=TIMEOUT)
            await api.end_meeting(mid)
            for p in people:
                await p.leave()
            mids.append(mid)
        return mids


async def test_serve_banner_apikey_and_cdr_export(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    data = tmp_path / "var"
    host_add(data, "ops@example.com", PASSWORD)
    sp = serve_factory(data_dir=data)
    assert sp.relay_url.startswith("wss://localhost:")
    assert sp.relay_url.endswith("/v1/ws")
    assert sp.api_url.startswith("https://localhost:")
    assert sp.ca_file == (data / "tls" / "ca.pem").resolve()
    mids = await _meeting_with_records(sp, 2)

    made = cli(
        "apikey", "create", "--scope", "cdr:read", "--label", "billing", "--data-dir", str(data)
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sbk_")
    assert "shown only now" in made.stderr
    async with ApiClient(sp.api_url, ca_file=sp.ca_file, token=key) as billing:
        page = await billing.cdrs()
        assert [r["meeting_id"] for r in page["records"]] == mids
        with pytest.raises(ApiError):
            await billing.create_meeting()

    jsonl = cli("cdr", "export", "--format", "jsonl", "--data-dir", str(data))
    assert jsonl.returncode == 0, jsonl.stderr
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["meeting_id"] for r in rows] == mids
    assert all(r["distinct_participants"] == 2 for r in rows)

    after = cli("cdr", "export", "--after", str(rows[0]["cursor"]), "--data-dir", str(data))
    assert [json.loads(line)["meeting_id"] for line in after.stdout.splitlines()] == mids[1:]

    done = cli("cdr", "export", "--format", "csv", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["meeting_id"] for r in table] == mids
    assert table[0]["features_used"] == "chat"
    assert table[0]["chat_frames"] == "1"
    assert table[0]["end_reason"] == "host_ended"


async def test_sigterm_ends_live_meetings_with_records_and_reconnect_close_code(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    data = tmp_path / "var"
    host_add(data, "ops@example.com", PASSWORD)
    sp = serve_factory(data_dir=data)
    async with ApiClient(sp.api_url, ca_file=sp.ca_file) as api:
        await api.sign_in("ops@example.com", PASSWORD)
        mid = (await api.create_meeting())["meeting_id"]
        p = await Participant.join(
            sp.relay_url, (await api.invite(mid))["token"], ca_file=sp.ca_file
        )
    assert await asyncio.to_thread(sp.stop) == 0
    with pytest.raises(Disconnected) as closed:
        while True:
            await p.recv(timeout=TIMEOUT)
    assert closed.value.code == 4503  # transient: reconnect
    rows = [
        json.loads(line)
        for line in cli("cdr", "export", "--data-dir", str(data)).stdout.splitlines()
    ]
    assert [(r["meeting_id"], r["end_reason"]) for r in rows] == [(mid, "relay_shutdown")]
