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
