import pytest

from config.env import ConfigError, load_config, read_environment

URL = "http://admin:s3cret@127.0.0.1:5984/medic"


def test_defaults_from_a_minimal_environment():
    config = load_config({"COUCH_URL": URL})
    assert config.couch.server_url == "http://127.0.0.1:5984"
    assert config.couch.db_name == "medic"
    assert config.couch.vault_db_name == "medic-vault"
    assert (config.couch.username, config.couch.password) == ("admin", "s3cret")
    assert config.worker_db == "medic-rapidpro"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 5989)
    assert config.status_poll_interval == 60.0
    assert (config.log_level, config.log_format) == ("info", "json")
    assert config.couch_secret is None
    assert (config.in_doubt_check_after, config.in_doubt_clock_margin) == (120.0, 60.0)
    assert load_config({"COUCH_URL": URL, "RAPIDPRO_TIMEOUT": "2", "IN_DOUBT_CHECK_AFTER": "4"}
                       ).in_doubt_check_after == 4.0


def test_log_format_defaults_to_console_only_for_a_person_at_a_terminal():
    assert load_config({"COUCH_URL": URL}, stdout_is_terminal=True).log_format == "console"
    assert load_config({"COUCH_URL": URL}, stdout_is_terminal=False).log_format == "json"
    # An explicit choice wins either way (e.g. JSON piped through a terminal multiplexer).
    assert load_config({"COUCH_URL": URL, "LOG_FORMAT": "json"}, stdout_is_terminal=True).log_format == "json"
    assert load_config({"COUCH_URL": URL, "LOG_FORMAT": "console"}).log_format == "console"


def test_redacted_url_and_repr_hide_the_password():
    config = load_config({"COUCH_URL": URL})
    assert config.couch.redacted_url == "http://admin:***@127.0.0.1:5984/medic"
    assert "s3cret" not in repr(config)


def test_path_prefix_and_encoded_credentials():
    config = load_config({"COUCH_URL": "https://us%40er:p%3Ass@couch.example.org/db/medic"})
    assert config.couch.server_url == "https://couch.example.org/db"
    assert config.couch.db_name == "medic"
    assert (config.couch.username, config.couch.password) == ("us@er", "p:ss")


@pytest.mark.parametrize(
    ("values", "variable", "fragment"),
    [
        ({}, "COUCH_URL", "is required"),
        ({"COUCH_URL": "not a url"}, "COUCH_URL", "http(s) URL"),
        ({"COUCH_URL": "http://h:5984/"}, "COUCH_URL", "database name"),
        ({"COUCH_URL": "http://h:5984/Medic"}, "COUCH_URL", "not a valid CouchDB database name"),
        ({"COUCH_URL": URL, "LISTEN_PORT": "70000"}, "LISTEN_PORT", "port number"),
        ({"COUCH_URL": URL, "LISTEN_PORT": "abc"}, "LISTEN_PORT", "'abc'"),
        ({"COUCH_URL": URL, "STATUS_POLL_INTERVAL": "0"}, "STATUS_POLL_INTERVAL", "positive"),
        ({"COUCH_URL": URL, "LOG_LEVEL": "loud"}, "LOG_LEVEL", "debug, info, warning, error"),
        ({"COUCH_URL": URL, "LOG_FORMAT": "xml"}, "LOG_FORMAT", "json, console"),
        ({"COUCH_URL": URL, "WORKER_DB": "medic"}, "WORKER_DB", "own"),
        ({"COUCH_URL": URL, "CONCURRENCY": "-1"}, "CONCURRENCY", "positive whole number"),
        ({"COUCH_URL": URL, "IN_DOUBT_CHECK_AFTER": "59"}, "IN_DOUBT_CHECK_AFTER",
         "twice RAPIDPRO_TIMEOUT (60)"),
        ({"COUCH_URL": URL, "RAPIDPRO_TIMEOUT": "2", "IN_DOUBT_CHECK_AFTER": "3.9"}, "IN_DOUBT_CHECK_AFTER",
         "twice RAPIDPRO_TIMEOUT (4)"),
        ({"COUCH_URL": URL, "IN_DOUBT_CLOCK_MARGIN": "30"}, "IN_DOUBT_CLOCK_MARGIN", "from 60"),
    ],
)
def test_invalid_values_name_the_variable(values, variable, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(values)
    assert error.value.variable == variable
    assert fragment in str(error.value)
    assert str(error.value).startswith(variable)
    assert "\n" not in str(error.value)
    assert "s3cret" not in str(error.value)


def test_values_are_case_insensitive_where_they_are_words():
    config = load_config({"COUCH_URL": URL, "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "Console"})
    assert (config.log_level, config.log_format) == ("debug", "console")


def test_env_file_is_read_and_the_real_environment_wins(tmp_path):
    env_file = tmp_path / "worker.env"
    env_file.write_text(f"COUCH_URL={URL}\nLISTEN_PORT=7000\nLOG_LEVEL=debug\n")
    values = read_environment(env_file, {"LISTEN_PORT": "7001"})
    config = load_config(values)
    assert config.listen_port == 7001
    assert config.log_level == "debug"


def test_missing_env_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        read_environment(tmp_path / "nope.env", {})
    assert error.value.variable == "--env-file"


def test_dot_env_in_working_directory_is_read_by_default(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("LISTEN_PORT=7002\n")
    monkeypatch.chdir(tmp_path)
    assert read_environment(None, {})["LISTEN_PORT"] == "7002"


def test_the_public_door_is_off_unless_asked_for():
    config = load_config({"COUCH_URL": URL})
    assert config.webhook_listen_host is None
    assert (config.webhook_read_timeout, config.webhook_client_concurrency) == (10.0, 32)
    port_only = load_config({"COUCH_URL": URL, "WEBHOOK_LISTEN_PORT": "6000"})
    assert (port_only.webhook_listen_host, port_only.webhook_listen_port) == ("0.0.0.0", 6000)
    host_only = load_config({"COUCH_URL": URL, "WEBHOOK_LISTEN_HOST": "10.0.0.5"})
    assert (host_only.webhook_listen_host, host_only.webhook_listen_port) == ("10.0.0.5", 5990)
    for name, bad in [("WEBHOOK_LISTEN_PORT", "70000"), ("WEBHOOK_READ_TIMEOUT", "0"),
                      ("WEBHOOK_READ_TIMEOUT", "61"), ("WEBHOOK_CLIENT_CONCURRENCY", "0")]:
        with pytest.raises(ConfigError) as error:
            load_config({"COUCH_URL": URL, name: bad})
        assert error.value.variable == name


def test_the_webhook_public_url_and_the_channel_check_interval():
    config = load_config({"COUCH_URL": URL})
    assert (config.webhook_public_url, config.channel_check_interval) == (None, 300.0)
    given = load_config({"COUCH_URL": URL, "WEBHOOK_PUBLIC_URL": " https://cht.example.org/rapidpro-worker/ ",
                         "CHANNEL_CHECK_INTERVAL": "5"})
    assert given.webhook_public_url == "https://cht.example.org/rapidpro-worker"
    assert given.channel_check_interval == 5.0
    for name, bad, fragment in [
            ("WEBHOOK_PUBLIC_URL", "cht.example.org", "http(s) URL"),
            ("WEBHOOK_PUBLIC_URL", "https://user:pw@cht.example.org", "credentials"),
            ("WEBHOOK_PUBLIC_URL", "https://cht.example.org/?a=1", "query"),
            ("WEBHOOK_PUBLIC_URL", "https://cht.example.org:99999", "port"),
            ("CHANNEL_CHECK_INTERVAL", "4", "at least 5")]:
        with pytest.raises(ConfigError) as error:
            load_config({"COUCH_URL": URL, name: bad})
        assert error.value.variable == name and fragment in str(error.value)
        assert "pw" not in str(error.value)


def test_rates_per_rapidpro_scope_and_the_deprecated_single_budget():
    base = {"COUCH_URL": "http://a:b@127.0.0.1:5984/medic"}
    config = load_config(base)
    assert config.rapidpro_calls_per_hour is None
    assert config.rapidpro_scope_rates == {"v2.broadcasts": None, "v2.messages": None, "v2": None}
    config = load_config({**base, "RAPIDPRO_BROADCASTS_CALLS_PER_HOUR": "36000",
                          "RAPIDPRO_MESSAGES_CALLS_PER_HOUR": "2500", "RAPIDPRO_CALLS_PER_HOUR": "3600"})
    assert config.rapidpro_scope_rates == {"v2.broadcasts": 36000, "v2.messages": 2500, "v2": None}
    assert config.rapidpro_calls_per_hour == 3600
    for name in ("RAPIDPRO_V2_CALLS_PER_HOUR", "RAPIDPRO_CALLS_PER_HOUR"):
        with pytest.raises(ConfigError) as error:
            load_config({**base, name: "0"})
        assert name in str(error.value)
