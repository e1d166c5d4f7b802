import pytest

from alerts.config import PLACEHOLDER_SECRET, ConfigError, load_settings


def test_embedded_defaults() -> None:
    settings = load_settings()
    assert settings.database_url.startswith("sqlite:///")
    assert settings.broker_url == "filesystem://"
    assert settings.email_backend == "file"


def test_placeholder_secret_refused_outside_dev() -> None:
    with pytest.raises(ConfigError, match="ALERTS_SECRET_KEY"):
        load_settings(env="prod", secret_key=PLACEHOLDER_SECRET)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"base_url": "alerts.example.org"}, "ALERTS_BASE_URL"),
        ({"database_url": "mysql://x"}, "ALERTS_DATABASE_URL"),
        ({"email_backend": "pigeon"}, "ALERTS_EMAIL_BACKEND"),
        ({"batch_size": 5000}, "ALERTS_BATCH_SIZE"),
    ],
)
def test_bad_settings_fail_fast_naming_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(**overrides)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTS_BASE_URL", "https://alerts.example.org/")
    monkeypatch.setenv("ALERTS_DATABASE_URL", "postgresql://u@db/alerts")
    settings = load_settings()
    assert settings.base_url == "https://alerts.example.org"
    assert settings.database_url == "postgresql+psycopg://u@db/alerts"


STRONG = "k" * 40


def _prod(**overrides: object) -> dict[str, object]:
    return {"env": "prod", "secret_key": STRONG, "ops_token": STRONG, "ingest_token": STRONG} | overrides


def _env_example() -> dict[str, str]:
    from pathlib import Path

    values = {}
    for line in (Path(__file__).resolve().parent.parent / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.mark.parametrize("setting", ["secret_key", "ops_token", "ingest_token"])
def test_production_refuses_the_env_example_placeholders(setting: str) -> None:
    placeholder = _env_example()[f"ALERTS_{setting.upper()}"]
    assert "change-me" in placeholder
    with pytest.raises(ConfigError, match=f"ALERTS_{setting.upper()} is still a placeholder"):
        load_settings(**_prod(**{setting: placeholder}))
    # A long value that still carries the mark is a placeholder someone lengthened, not a secret.
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(**_prod(**{setting: "change-me-" + "x" * 40}))


@pytest.mark.parametrize("setting", ["secret_key", "ops_token", "ingest_token"])
def test_production_refuses_short_secrets(setting: str) -> None:
    with pytest.raises(ConfigError, match=f"ALERTS_{setting.upper()} is 31 characters"):
        load_settings(**_prod(**{setting: "s" * 31}))
    assert load_settings(**_prod(**{setting: "s" * 32}))


def test_production_refuses_the_built_in_placeholder_and_names_every_bad_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env="prod", secret_key=PLACEHOLDER_SECRET, ops_token="short", ingest_token="change-me")
    message = str(caught.value)
    assert "ALERTS_SECRET_KEY" in message and "ALERTS_OPS_TOKEN" in message and "ALERTS_INGEST_TOKEN" in message


def test_production_accepts_unset_tokens_and_dev_keeps_short_ones() -> None:
    assert load_settings(env="prod", secret_key=STRONG).ops_token is None  # unset: the endpoint is closed
    assert load_settings(env="dev", ops_token="x", ingest_token="change-me").ops_token == "x"


def test_sendgrid_without_webhook_key_is_said_at_start(caplog: pytest.LogCaptureFixture) -> None:
    from alerts.config import startup_warnings
    from alerts.logs import warn_at_start

    settings = load_settings(**_prod(email_backend="sendgrid", sendgrid_api_key="SG.real-key"))
    warnings = startup_warnings(settings)
    assert len(warnings) == 1 and "bounces" in warnings[0] and "ALERTS_SENDGRID_WEBHOOK_PUBLIC_KEY" in warnings[0]
    warn_at_start(settings, "web")
    assert any("ALERTS_SENDGRID_WEBHOOK_PUBLIC_KEY" in str(r.msg) for r in caplog.records)
    with_key = load_settings(
        **_prod(email_backend="sendgrid", sendgrid_api_key="SG.real-key", sendgrid_webhook_public_key="MFkw")
    )
    assert startup_warnings(with_key) == []
    assert startup_warnings(load_settings(email_backend="file")) == []


def test_list_settings_are_words_and_reach_a_child_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from alerts.config import environment

    monkeypatch.setenv("ALERTS_EMBED_ORIGINS", "https://trials.example.org,https://b.example:8443")
    monkeypatch.setenv("ALERTS_TRUSTED_PROXIES", "172.18.0.0/16 10.0.0.5")
    settings = load_settings()
    assert settings.embed_origins == ("https://trials.example.org", "https://b.example:8443")
    assert settings.trusted_proxies == ("172.18.0.0/16", "10.0.0.5")
    for name, value in environment(settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings
    assert load_settings(embed_origins="", trusted_proxies="").embed_origins == ()
