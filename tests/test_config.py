"""Settings (switchboard.config): defaults, sources and their order, validation, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.config import ENV_PREFIX, Settings, mask_url
from switchboard.errors import ConfigError


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(**kwargs: object) -> Settings:
    kwargs.setdefault("environ", {})
    return Settings.load(**kwargs)  # type: ignore[arg-type]


# --- defaults and sources ------------------------------------------------------


def test_defaults() -> None:
    settings = load()
    assert settings == Settings()
    assert settings.data_dir == Path("var")
    assert settings.bind == "127.0.0.1"
    assert settings.relay_port == 8443
    assert settings.api_port == 8444
    assert settings.broker_url == "local:"
    assert settings.tls_cert is None
    assert settings.tls_key is None
    assert settings.log_level == "info"
    assert settings.effective_database_url == "sqlite:///var/switchboard.db"
    assert settings.tls_dir == Path("var") / "tls"


def test_default_settings_are_valid_and_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.relay_port = 1  # type: ignore[misc]


def test_toml_file_values(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
data_dir = "/srv/sb"
bind = "0.0.0.0"
relay_port = 9443
api_port = 9444
session_idle_timeout = 60
max_participants = 25
log_level = "debug"
database_url = "sqlite:////srv/sb/other.db"
""",
    )
    settings = load(config_file=path)
    assert settings.data_dir == Path("/srv/sb")
    assert settings.bind == "0.0.0.0"
    assert (settings.relay_port, settings.api_port) == (9443, 9444)
    assert settings.session_idle_timeout == 60.0
    assert isinstance(settings.session_idle_timeout, float)
    assert settings.max_participants == 25
    assert settings.log_level == "debug"
    assert settings.effective_database_url == "sqlite:////srv/sb/other.db"
    # Untouched keys keep their defaults.
    assert settings.public_host == "localhost"


def test_environment_values_are_coerced() -> None:
    settings = load(
        environ={
            "SWITCHBOARD_RELAY_PORT": "7000",
            "SWITCHBOARD_JOIN_TIMEOUT": "2.5",
            "SWITCHBOARD_DATA_DIR": "/tmp/sbdata",
            "SWITCHBOARD_PUBLIC_HOST": "meet.example.com",
        }
    )
    assert settings.relay_port == 7000
    assert settings.join_timeout == 2.5
    assert settings.data_dir == Path("/tmp/sbdata")
    assert settings.public_host == "meet.example.com"


def test_environment_without_prefix_is_ignored() -> None:
    settings = load(environ={"RELAY_PORT": "1", "HOME": "/root", "SWITCHBOARDX": "y"})
    assert settings == Settings()


def test_the_process_variables_are_not_settings() -> None:
    # SWITCHBOARD_PURE_PYTHON picks the relay's core at import; a settings load must not
    # refuse it as an unknown setting, nor may anything else with the prefix slip by.
    assert load(environ={"SWITCHBOARD_PURE_PYTHON": "1"}) == load(environ={})
    raises_config(environ={"SWITCHBOARD_PURE_PYTHONX": "1"})


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{ENV_PREFIX}API_PORT", "7777")
    assert Settings.load().api_port == 7777


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "relay_port = 9000\napi_port = 9001\nlog_level = 'warning'\n")
    env = {"SWITCHBOARD_RELAY_PORT": "9100", "SWITCHBOARD_LOG_LEVEL": "error"}
    from_file = load(config_file=path)
    assert (from_file.relay_port, from_file.api_port, from_file.log_level) == (
        9000,
        9001,
        "warning",
    )
    from_env = load(config_file=path, environ=env)
    assert (from_env.relay_port, from_env.api_port, from_env.log_level) == (9100, 9001, "error")
    from_flags = load(config_file=path, environ=env, overrides={"relay_port": 9200})
    assert (from_flags.relay_port, from_flags.api_port, from_flags.log_level) == (
        9200,
        9001,
        "error",
    )


def test_flags_not_given_do_not_override(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "relay_port = 9000\n")
    settings = load(
        config_file=path,
        environ={"SWITCHBOARD_API_PORT": "9001"},
        overrides={"relay_port": None, "api_port": None},
    )
    assert (settings.relay_port, settings.api_port) == (9000, 9001)


def test_both_ports_zero_is_allowed() -> None:
    settings = load(overrides={"relay_port": 0, "api_port": 0})
    assert (settings.relay_port, settings.api_port) == (0, 0)


def test_tls_cert_and_key_together(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    settings = load(environ={"SWITCHBOARD_TLS_CERT": str(cert), "SWITCHBOARD_TLS_KEY": str(key)})
    assert (settings.tls_cert, settings.tls_key) == (cert, key)


# --- errors ----------------------------------------------------------------------


def raises_config(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    assert info.value.code == "config"
    return info.value


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "relay_prot = 9000\n")
    error = raises_config(config_file=path)
    assert "relay_prot" in error.reason
    assert str(path) in error.reason


def test_unknown_key_in_env_names_the_variable() -> None:
    error = raises_config(environ={"SWITCHBOARD_RELAY_PROT": "9000"})
    assert "relay_prot" in error.reason
    assert "$SWITCHBOARD_RELAY_PROT" in error.reason


def test_unknown_flag() -> None:
    error = raises_config(overrides={"no_such": 1})
    assert "no_such" in error.reason


def test_extra_is_not_a_setting(tmp_path: Path) -> None:
    raises_config(config_file=write_toml(tmp_path, "extra = 1\n"))


@pytest.mark.parametrize("key", ["relay_port", "api_port"])
@pytest.mark.parametrize("value", [70000, 65536, -1, "70000"])
def test_port_out_of_range(key: str, value: object) -> None:
    error = raises_config(overrides={key: value})
    assert key in error.reason


@pytest.mark.parametrize("value", ["abc", "", "80.5", "0x10", "8443 port"])
def test_port_not_a_number_from_env(value: str) -> None:
    error = raises_config(environ={"SWITCHBOARD_RELAY_PORT": value})
    assert "relay_port" in error.reason
    assert "$SWITCHBOARD_RELAY_PORT" in error.reason


@pytest.mark.parametrize(
    "text",
    [
        'relay_port = "abc"',
        "relay_port = true",
        "relay_port = [1]",
        "relay_port = {a = 1}",
        "join_timeout = 1979-05-27",
    ],
)
def test_not_a_number_from_file(tmp_path: Path, text: str) -> None:
    error = raises_config(config_file=write_toml(tmp_path, text + "\n"))
    assert text.split(" ")[0] in error.reason


def test_port_fraction_from_file_is_refused(tmp_path: Path) -> None:
    raises_config(config_file=write_toml(tmp_path, "relay_port = 8443.5\n"))


def test_relay_port_equal_to_api_port() -> None:
    error = raises_config(overrides={"relay_port": 9000, "api_port": 9000})
    assert "relay_port" in error.reason
    assert "api_port" in error.reason


def test_relay_port_equal_to_default_api_port() -> None:
    raises_config(environ={"SWITCHBOARD_RELAY_PORT": "8444"})


def test_tls_cert_without_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("cert")
    error = raises_config(overrides={"tls_cert": str(cert)})
    assert "tls_key" in error.reason


def test_tls_key_without_cert(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("key")
    error = raises_config(overrides={"tls_key": str(key)})
    assert "tls_cert" in error.reason


def test_missing_cert_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("key")
    missing = tmp_path / "nope.pem"
    error = raises_config(overrides={"tls_cert": str(missing), "tls_key": str(key)})
    assert "tls_cert" in error.reason
    assert str(missing) in error.reason


def test_missing_key_file(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("cert")
    error = raises_config(overrides={"tls_cert": str(cert), "tls_key": str(tmp_path / "k.pem")})
    assert "tls_key" in error.reason


def test_cert_path_that_is_a_directory(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("key")
    raises_config(overrides={"tls_cert": str(tmp_path), "tls_key": str(key)})


@pytest.mark.parametrize(
    "url", ["postgresql://user:hunter2@db.example/sb", "mysql://x/y", "redis://h", "file.db"]
)
def test_unsupported_database_scheme(url: str) -> None:
    error = raises_config(environ={"SWITCHBOARD_DATABASE_URL": url})
    assert "database_url" in error.reason
    # The error is logged: it must not carry the password.
    assert "hunter2" not in error.reason


def test_unsupported_broker_scheme() -> None:
    error = raises_config(overrides={"broker_url": "rediss://:hunter2@redis.example"})
    assert "broker_url" in error.reason
    assert "hunter2" not in error.reason


@pytest.mark.parametrize("level", ["verbose", "", "trace", "critical", "5"])
def test_bad_log_level(level: str) -> None:
    error = raises_config(environ={"SWITCHBOARD_LOG_LEVEL": level})
    assert "log_level" in error.reason


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error"])
def test_good_log_levels_any_case(level: str) -> None:
    assert load(overrides={"log_level": level}).log_level.lower() == level.lower()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("session_idle_timeout", 0),
        ("session_max_lifetime", -1),
        ("invitation_ttl", 0),
        ("invitation_max_uses", 0),
        ("max_participants", 0),
        ("max_connections", 0),
        ("join_timeout", -0.5),
        ("ping_interval", 0),
        ("password_hash_concurrency", 0),
        ("max_frame_bytes", 1023),
        ("write_buffer_limit", 1024),
    ],
)
def test_out_of_bounds_values(key: str, value: object) -> None:
    error = raises_config(overrides={key: value})
    assert key in error.reason


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    error = raises_config(config_file=missing)
    assert str(missing) in error.reason


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "relay_port = = 1\n")
    error = raises_config(config_file=path)
    assert str(path) in error.reason


def test_replace_validates_again() -> None:
    settings = load()
    assert settings.replace(relay_port=9000).relay_port == 9000
    with pytest.raises(ConfigError):
        settings.replace(relay_port=70000)
    with pytest.raises(ConfigError):
        settings.replace(api_port=settings.relay_port)


# --- masking -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql://user:hunter2@db.example:5432/sb",
            "postgresql://user:***@db.example:5432/sb",
        ),
        ("rediss://:hunter2@redis.example:6380/0", "rediss://:***@redis.example:6380/0"),
        ("postgresql://user:p%40ss%3Aw@db/sb", "postgresql://user:***@db/sb"),
        ("postgresql://user:a:b:c@db/sb", "postgresql://user:***@db/sb"),
    ],
)
def test_mask_url_hides_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///var/switchboard.db",
        "local:",
        "postgresql://user@db/sb",
        "postgresql://db/sb",
        "",
    ],
)
def test_mask_url_leaves_password_free_urls_alone(url: str) -> None:
    assert mask_url(url) == url


def test_mask_url_when_password_equals_user() -> None:
    masked = mask_url("postgresql://same:same@db/sb")
    assert masked == "postgresql://same:***@db/sb"


def test_repr_masks_passwords_of_loaded_settings() -> None:
    settings = load(
        overrides={
            "database_url": "sqlite://admin:hunter2@localhost/sb.db",
            "broker_url": "local://node:s3cr3t@bus",
        }
    )
    text = repr(settings)
    assert "hunter2" not in text
    assert "s3cr3t" not in text
    assert "sqlite://admin:***@localhost/sb.db" in text
    assert "local://node:***@bus" in text
    assert "hunter2" not in str(settings)
    # The value itself is intact; only the rendering is masked.
    assert settings.database_url == "sqlite://admin:hunter2@localhost/sb.db"


def test_repr_masks_a_postgres_password() -> None:
    # Not loadable yet (only sqlite is supported), but repr must mask any URL field.
    settings = Settings(database_url="postgresql://sb:hunter2@db.example/sb")
    text = repr(settings)
    assert "hunter2" not in text
    assert "postgresql://sb:***@db.example/sb" in text


def test_repr_shows_every_field_but_extra() -> None:
    text = repr(load())
    for name in ("data_dir", "relay_port", "api_port", "database_url", "log_level"):
        assert f"{name}=" in text
    assert "extra" not in text


def test_repr_survives_a_malformed_url() -> None:
    settings = load(environ={"SWITCHBOARD_DATABASE_URL": "sqlite://u:hunter2@[db/sb.db"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in mask_url("postgresql://u:hunter2@[::1/db")


def test_default_invitation_ttl_may_not_exceed_the_maximum() -> None:
    error = raises_config(
        environ={"SWITCHBOARD_INVITATION_TTL": "7200", "SWITCHBOARD_INVITATION_MAX_TTL": "3600"}
    )
    assert "invitation_ttl" in error.reason


# --- reconnecting, the media drop policy, limits ---------------------------------


def test_new_setting_defaults() -> None:
    settings = load()
    assert settings.reconnect_grace == 30.0
    assert (settings.drop_video_bytes, settings.drop_screen_bytes, settings.drop_audio_bytes) == (
        256 * 1024,
        512 * 1024,
        1024 * 1024,
    )
    assert settings.drop_audio_bytes <= settings.write_buffer_limit
    assert settings.max_document_bytes == 64 << 20
    assert settings.max_chat_bytes == 16 * 1024
    assert settings.max_poll_bytes == 64 * 1024
    assert settings.max_media_bytes == 256 * 1024
    assert (
        settings.rate_chat,
        settings.rate_poll,
        settings.rate_document,
        settings.rate_media,
        settings.rate_control,
    ) == (10.0, 20.0, 1000.0, 400.0, 20.0)


def test_new_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "reconnect_grace = 5\nrate_chat = 3\nmax_chat_bytes = 2048\ndrop_video_bytes = 1000\n",
    )
    settings = load(
        config_file=path,
        environ={"SWITCHBOARD_RATE_MEDIA": "2.5", "SWITCHBOARD_MAX_DOCUMENT_BYTES": "4096"},
    )
    assert settings.reconnect_grace == 5.0
    assert isinstance(settings.reconnect_grace, float)
    assert settings.rate_chat == 3.0
    assert isinstance(settings.rate_chat, float)
    assert settings.max_chat_bytes == 2048
    assert settings.drop_video_bytes == 1000
    assert settings.rate_media == 2.5
    assert settings.max_document_bytes == 4096


@pytest.mark.parametrize("value", ["0", "0.0", "1e-3"])
def test_reconnect_grace_zero_is_allowed(value: str) -> None:
    # Zero means a dropped participant leaves at once.
    assert load(environ={"SWITCHBOARD_RECONNECT_GRACE": value}).reconnect_grace == float(value)


@pytest.mark.parametrize("value", [-1, -0.001])
def test_reconnect_grace_negative_is_refused(value: float) -> None:
    error = raises_config(overrides={"reconnect_grace": value})
    assert "reconnect_grace" in error.reason


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("drop_video_bytes", 0),
        ("drop_video_bytes", -1),
        ("max_document_bytes", 0),
        ("max_chat_bytes", 0),
        ("max_poll_bytes", -5),
        ("max_media_bytes", 0),
        ("rate_chat", 0),
        ("rate_poll", -1),
        ("rate_document", 0),
        ("rate_media", 0.0),
        ("rate_control", -0.5),
    ],
)
def test_new_limits_must_be_positive(key: str, value: object) -> None:
    error = raises_config(overrides={key: value})
    assert key in error.reason


@pytest.mark.parametrize(
    "key", ["max_chat_bytes", "max_document_bytes", "drop_audio_bytes", "max_media_bytes"]
)
def test_byte_settings_are_integers(key: str) -> None:
    error = raises_config(environ={f"SWITCHBOARD_{key.upper()}": "1.5"})
    assert key in error.reason


@pytest.mark.parametrize(
    "changes",
    [
        {"drop_video_bytes": 600 * 1024},  # above the screen threshold
        {"drop_screen_bytes": 2 * 1024 * 1024},  # above the audio threshold
        {"drop_screen_bytes": 100 * 1024},  # below the video threshold
        {"drop_audio_bytes": 300 * 1024},  # below the screen threshold
        {"drop_audio_bytes": 8 << 20},  # above the write buffer
        {"write_buffer_limit": 1 << 20, "drop_audio_bytes": (1 << 20) + 1},
    ],
)
def test_drop_thresholds_must_be_ordered(changes: dict[str, int]) -> None:
    # Video is dropped first, audio last, and all before the receiver is cut off.
    error = raises_config(overrides=changes)
    for name in ("drop_video_bytes", "drop_screen_bytes", "drop_audio_bytes"):
        assert name in error.reason
    assert "write_buffer_limit" in error.reason


def test_equal_drop_thresholds_are_allowed() -> None:
    size = 1 << 20
    settings = load(
        overrides={
            "drop_video_bytes": size,
            "drop_screen_bytes": size,
            "drop_audio_bytes": size,
            "write_buffer_limit": size,
            "max_frame_bytes": size,
        }
    )
    assert settings.drop_video_bytes == settings.drop_audio_bytes == size


def test_replace_checks_the_drop_order() -> None:
    settings = load()
    with pytest.raises(ConfigError):
        settings.replace(drop_video_bytes=settings.drop_audio_bytes + 1)
    with pytest.raises(ConfigError):
        settings.replace(reconnect_grace=-1.0)
    assert settings.replace(drop_video_bytes=1).drop_video_bytes == 1


def test_limits_follow_the_settings() -> None:
    settings = load(
        overrides={
            "rate_chat": 3.0,
            "rate_poll": 7.0,
            "rate_document": 100.0,
            "rate_media": 50.0,
            "rate_control": 2.0,
            "max_chat_bytes": 111,
            "max_poll_bytes": 222,
            "max_media_bytes": 333,
            "max_frame_bytes": 4096,
            "max_document_bytes": 5555,
        }
    )
    limits = settings.limits()
    assert (limits.chat.rate, limits.chat.max_bytes) == (3.0, 111)
    assert (limits.poll.rate, limits.poll.max_bytes) == (7.0, 222)
    assert (limits.media.rate, limits.media.max_bytes) == (50.0, 333)
    # A document chunk may be as large as a frame; the whole document has its own cap.
    assert (limits.document.rate, limits.document.max_bytes) == (100.0, 4096)
    assert limits.max_document_bytes == 5555
    # Control frames have no payload limit, only a rate.
    assert (limits.control.rate, limits.control.max_bytes) == (2.0, 0)


def test_limits_allow_bursts_of_twice_the_rate_and_at_least_ten() -> None:
    limits = load(overrides={"rate_chat": 3.0, "rate_media": 400.0}).limits()
    assert limits.chat.burst == 10.0
    assert limits.media.burst == 800.0
    defaults = Settings().limits()
    assert defaults.chat.burst == 20.0
    assert defaults.control.burst == 40.0
    for kind in ("chat", "poll", "document", "media", "control"):
        limit = defaults.for_kind(kind)
        assert limit.burst == max(2 * limit.rate, 10.0)


def test_default_limits_are_the_documented_ones() -> None:
    # docs/protocol.md, Limits: rate, burst and largest payload per kind.
    limits = Settings().limits()
    assert (limits.chat.rate, limits.chat.burst, limits.chat.max_bytes) == (10, 20, 16384)
    assert (limits.poll.rate, limits.poll.burst, limits.poll.max_bytes) == (20, 40, 65536)
    assert (limits.document.rate, limits.document.burst) == (1000, 2000)
    assert limits.document.max_bytes == Settings().max_frame_bytes == 1 << 20
    assert (limits.media.rate, limits.media.burst, limits.media.max_bytes) == (400, 800, 262144)
    assert (limits.control.rate, limits.control.burst, limits.control.max_bytes) == (20, 40, 0)
    assert limits.max_document_bytes == 64 << 20
    assert limits.max_tracks == 8
    assert (limits.abuse_strikes, limits.abuse_window) == (50, 10.0)
