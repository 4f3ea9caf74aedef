"""Configuration: TOML into Structs, unknown keys named, secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as cfg
from tests.conftest import ROOT, run_cli

MINIMAL = """
[[sources]]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/"
queue = "mailbox"
[[sinks]]
type = "jsonl"
path = "out.jsonl"
"""


def test_minimal_configuration_gets_the_documented_defaults() -> None:
    config = cfg.parse(MINIMAL)
    assert config.store.path == "gateway.db"
    assert config.store.retention_days == 400
    assert config.matching.tolerance_seconds == 120
    assert config.http.listen == "127.0.0.1:9464"
    source = config.sources[0]
    assert isinstance(source, cfg.AmqpSource)
    assert source.prefetch == 1000


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (MINIMAL + "[store]\npaht = 'x'\n", "paht"),
        (MINIMAL.replace('queue = "mailbox"', 'queue = "mailbox"\nqueu = "x"'), "queu"),
        (MINIMAL + "[bogus]\nx = 1\n", "bogus"),
        (MINIMAL.replace('type = "jsonl"', 'type = "kafka"'), "type"),
    ],
)
def test_unknown_keys_are_errors_that_name_the_key(text: str, named: str) -> None:
    with pytest.raises(cfg.ConfigError, match=named):
        cfg.parse(text)


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_PASSWORD", "s3cret")
    config = cfg.parse(MINIMAL.replace("guest:guest", "guest:${AMQP_PASSWORD}"))
    assert config.sources[0].url == "amqp://guest:s3cret@127.0.0.1:5672/"  # type: ignore[union-attr]
    monkeypatch.delenv("AMQP_PASSWORD")
    with pytest.raises(cfg.ConfigError, match="AMQP_PASSWORD"):
        cfg.parse(MINIMAL.replace("guest:guest", "guest:${AMQP_PASSWORD}"))


def test_every_variable_not_set_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until stop 23 only the first was named: set it, run again, learn of the next."""
    for name in ("AMQP_PASSWORD", "KEY"):
        monkeypatch.delenv(name, raising=False)
    text = (MINIMAL.replace("guest:guest", "guest:${AMQP_PASSWORD}")
            + '[[sinks]]\ntype = "jsonl"\npath = "p.jsonl"\ncpr = "pseudonym"\n'
              'cpr_secret = "${KEY}"\n')
    with pytest.raises(cfg.ConfigError) as raised:
        cfg.parse(text)
    assert str(raised.value) == (
        "environment variables not set: 'AMQP_PASSWORD' (used at $.sources[0].url); "
        "'KEY' (used at $.sinks[1].cpr_secret)")

PUSH_LOCAL = """
[[sinks]]
type = "jsonl"
path = "out.jsonl"
[[sources]]
type = "push"
listen = "127.0.0.1:8443"
"""

PUSH_TLS = """
[[sources]]
type = "push"
[sources.tls]
cert_file = "server.pem"
{rules}
[[sinks]]
type = "jsonl"
path = "out.jsonl"
"""


def test_an_allowed_client_rule_reads_short_and_long_names() -> None:
    assert cfg.subject_rule("CN=Beskedfordeler, organizationIdentifier=NTRDK-19435075") == {
        ("commonName", "Beskedfordeler"), ("organizationIdentifier", "NTRDK-19435075")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL.split("[[sinks]]")[0], "no \\[\\[sinks\\]\\]"),
        ("[[sinks]]\ntype = 'jsonl'\npath = 'x'\n", "no \\[\\[sources\\]\\]"),
        (MINIMAL + "[store]\nbatch_size = 0\n", "batch_size"),
        (MINIMAL.replace('path = "out.jsonl"', 'path = "o"\ncpr = "pseudonymised"'),
         "cpr_secret"),
        (MINIMAL.replace('path = "out.jsonl"', 'path = "o"\ncpr = "hashed"'), "cpr"),
        (MINIMAL.replace('path = "out.jsonl"', 'path = "o"\ncpr = "pseudonymised"\n'
                         'cpr_secret = "kommune"'), "cpr_secret is shorter than 16"),
        ("not = [toml", "not valid TOML"),
        (MINIMAL + '[[sinks]]\ntype = "jsonl"\npath = "./out.jsonl"\ncpr = "omitted"\n',
         r"sinks\[0\] and sinks\[1\] are the same destination \(jsonl:/"),
        (PUSH_TLS.format(rules='allowed_clients = ["CN=Beskedfordeler"]'),
         "allowed_clients needs require_client_cert = true"),
        (PUSH_TLS.format(rules='require_client_cert = true\nallowed_clients = ["CN"]'),
         "allowed_clients: 'CN' is not one of"),
        (PUSH_TLS.format(rules='require_client_cert = true\nallowed_clients = ["E=x@y.dk"]'),
         "allowed_clients: 'E=x@y.dk' is not one of"),
        ("[store]\nretention_days = 0\n" + MINIMAL, "retention_days and quarantine"),
        ("[store]\nquarantine_retention_days = -1\n" + MINIMAL, "at least 1"),
        ('[store]\npath = " "\n' + MINIMAL, "store.path is empty"),
        ("[store]\nretention_days = 2\n[matching]\npair_window_hours = 72\n" + MINIMAL,
         r"retention_days \(2\) is shorter than matching.pair_window_hours \(72\)"),
        ("[matching]\npair_window_hours = 0\n" + MINIMAL, "pair_window_hours must be above 0"),
        ("[matching]\ntolerance_seconds = -60\n" + MINIMAL, "tolerance_seconds at least 0"),
        ("[matching]\nmax_message_bytes = 0\n" + MINIMAL, "max_message_bytes must be at"),
        ("[processing]\nparse_workers = -1\n" + MINIMAL, "parse_workers must be at least 0"),
        *((PUSH_LOCAL + setting, r"sources\[0\]: timeout_seconds and idle_seconds must be")
          for setting in ("max_connections = 0", "idle_seconds = 0", "timeout_seconds = -1")),
        *((MINIMAL + "[http]\n" + setting, "http: idle_seconds must be above 0, max_connections")
          for setting in ("max_connections = 0", "idle_seconds = 0")),
    ],
)
def test_invalid_configurations_say_why(text: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.parse(text)


@pytest.mark.parametrize("name", ["local.toml", "beskedfordeler-test.toml"])
def test_the_shipped_examples_are_valid(name: str) -> None:
    env = {"AMQP_PASSWORD": "x", "MUNICIPALITY_CVR": "29189846", "LOCAL_AMQP_PASSWORD": "y",
           "CPR_PSEUDONYM_KEY": "0123456789abcdef"}
    text = (ROOT / "examples" / name).read_text()
    for key, value in env.items():
        text = text.replace("${" + key + "}", value)
    config = cfg.parse(text)
    assert config.sources
    assert config.sinks


def test_config_check_explains_without_showing_passwords(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(MINIMAL)
    out = run_cli("config", "check", "--config", str(path)).stdout
    assert "configuration is valid" in out
    assert "AMQP queue 'mailbox'" in out
    assert "guest:***@" in out
    # a relative store path is shown as the file it names: the one a gateway started here opens
    assert f"store: {ROOT / 'gateway.db'} (" in out
    assert (f"sink: JSON Lines file {ROOT / 'out.jsonl'} (new files 0600, a new file past "
            "100 MiB, rotated files kept 400 days), CPR full") in out
    assert "http: 127.0.0.1:9464 (up to 32 connections, idle ones closed after 120 s)" in out


def test_config_check_says_what_bounds_a_push_receiver(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(MINIMAL + '[[sources]]\ntype = "push"\nlisten = "127.0.0.1:8080"\n'
                    "max_held_bytes = 8388608\n")
    out = run_cli("config", "check", str(path)).stdout
    assert ("source: push receiver on http://127.0.0.1:8080/ (up to 256 connections, idle "
            "ones closed after 60 s), 8 MiB of bodies held at most (past it: 40)") in out
    path.write_text(MINIMAL + '[[sources]]\ntype = "push"\nmax_held_bytes = 0\n')
    refused = run_cli("config", "check", str(path), check=False)
    assert refused.returncode == 2
    assert "max_held_bytes at least 1" in refused.stderr


@pytest.mark.parametrize(
    ("mode", "refused"),
    [("0640", None), ("640", None), ("0600", None),
     ("0644", "gives others access"), ("0666", "gives others access"),
     ("0440", "does not let the gateway write"), ("rw-r-----", "not an octal file mode"),
     ("0800", "not an octal file mode")],
)
def test_a_jsonl_sinks_mode_is_for_the_owner_and_a_group_only(mode: str, refused: str) -> None:
    text = MINIMAL + f'mode = "{mode}"\n'
    if refused is None:
        (sink,) = cfg.parse(text).sinks
        assert isinstance(sink, cfg.JsonlSink)
        assert sink.file_mode() == int(mode, 8)
    else:
        with pytest.raises(cfg.ConfigError, match=refused):
            cfg.parse(text)


@pytest.mark.parametrize(("keep", "days"), [("", 400), ("keep_days = 30", 30),
                                            ("keep_days = 0", 0), ("keep_days = -1", None)])
def test_rotated_jsonl_files_are_kept_as_long_as_the_store_keeps_events(
    keep: str, days: int | None
) -> None:
    text = MINIMAL + keep + "\n"
    if days is None:
        with pytest.raises(cfg.ConfigError, match="keep_days must be at least 0"):
            cfg.parse(text)
        return
    config = cfg.parse(text)
    (sink,) = config.sinks
    assert isinstance(sink, cfg.JsonlSink)
    assert sink.rotated_keep_days(config.store) == days


@pytest.mark.parametrize("named", [["--config"], []], ids=["--config FILE", "FILE"])
def test_config_check_fails_with_the_reason(tmp_path: Path, named: list[str]) -> None:
    """`config check FILE` is what an operator types first; until stop 23 only --config."""
    path = tmp_path / "g.toml"
    path.write_text(MINIMAL + "[store]\npaht = 'x'\n")
    result = run_cli("config", "check", *named, str(path), check=False)
    assert result.returncode == 2
    assert "paht" in result.stderr


def test_config_check_takes_one_configuration(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(MINIMAL)
    assert run_cli("config", "check", str(path)).stdout.startswith("configuration is valid:")
    for args in ([], [str(path), "--config", str(path)]):
        result = run_cli("config", "check", *args, check=False)
        assert result.returncode == 2
        assert "one configuration: FILE or --config FILE" in result.stderr


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (MINIMAL.replace("127.0.0.1:5672", "mq.example.dk:5672"), "amqps"),
        (MINIMAL + '[[sinks]]\ntype = "mqtt"\nurl = "mqtt://mqtt.example.dk"\n', "mqtts"),
        (MINIMAL + '[[sources]]\ntype = "push"\nlisten = "0.0.0.0:8080"\n', "needs \\[tls\\]"),
        (PUSH_TLS.format(rules=""), "would take case events from any client"),
    ],
)
def test_plaintext_beyond_this_machine_is_refused(text: str, named: str) -> None:
    with pytest.raises(cfg.ConfigError, match=named):
        cfg.parse(text)


def test_plaintext_beyond_this_machine_only_with_the_insecure_key() -> None:
    text = MINIMAL.replace("127.0.0.1:5672", "mq.example.dk:5672").replace(
        'queue = "mailbox"', 'queue = "mailbox"\ninsecure_plaintext = true')
    assert cfg.parse(text).sources[0].insecure_plaintext  # type: ignore[union-attr]


@pytest.mark.parametrize(("args", "says"), [
    (["purge", "--retention-days", "-5"], "-5 is below the least allowed, 1"),
    (["purge", "--quarantine-days", "-1"], "-1 is below the least allowed, 0"),
    (["replay", "in", "--max-bytes", "0"], "0 is below the least allowed, 1"),
    (["replay", "in", "--pair-window-hours", "nan"], "nan is not above 0"),
])
def test_an_option_out_of_range_is_a_usage_error_that_touches_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    """`purge --retention-days -5` deleted every event, and with them what tells a
    redelivery or a twin from a new event."""
    store = tmp_path / "s.db"
    result = run_cli(*args, "--store", str(store), check=False)
    assert result.returncode == 2
    assert says in result.stderr
    assert not store.exists()


def test_a_push_receiver_for_any_client_is_taken_when_asked_for_by_name() -> None:
    """Behind a proxy that checks the Beskedfordeler's certificate itself."""
    text = PUSH_TLS.format(rules="").replace('type = "push"',
                                             'type = "push"\ninsecure_any_client = true')
    (source,) = cfg.parse(text).sources
    assert isinstance(source, cfg.PushSource)
    assert source.insecure_any_client
