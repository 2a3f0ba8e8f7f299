"""`cds serve` settings: one dataclass gives the flags, the defaults and the checks."""

from __future__ import annotations

import dataclasses

import pytest

from cds.cli import build_parser
from cds.config import ConfigError, ServeConfig


def _config(**settings):
    return ServeConfig(catalog="catalog.json", **settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert": "c.pem"}, "--tls-cert and --tls-key go together"),
        ({"tls_key": "k.pem"}, "--tls-cert and --tls-key go together"),
        ({"tls_client_ca": "ca.pem"}, "--tls-client-ca needs --tls-cert and --tls-key"),
        ({"workers": 2}, "--workers 2 needs a shared results store"),
        ({"workers": 0}, "--workers 0: must be more than 0"),
        ({"max_decisions": 0}, "--max-decisions 0: must be more than 0"),
        ({"max_results_per_item": 0}, "--max-results-per-item 0: must be more than 0"),
        ({"grace": -1.0}, "--grace -1.0: must not be negative"),
        ({"decision_log_backups": -1}, "--decision-log-backups -1: must not be negative"),
        ({"deadline_cap": 0.0}, "--deadline-cap 0.0: must be more than 0"),
        ({"results": "memcached://h:1"}, "--results 'memcached://h:1': expected redis://"),
        ({"listen": "nowhere"}, "--listen 'nowhere': expected HOST:PORT"),
        ({"metrics_listen": "[::1]"}, "--metrics-listen '[::1]': expected [IPV6]:PORT"),
        ({"log_level": "LOUD"}, "--log-level 'LOUD': not a logging level"),
        ({"hooks_listen": "127.0.0.1:0"}, "--hooks-listen needs --hooks-institution"),
        ({"hooks_listen": "nowhere", "hooks_institution": "H1"},
         "--hooks-listen 'nowhere': expected HOST:PORT"),
        ({"hooks_institution": "H1"}, "--hooks-institution needs --hooks-listen"),
        ({"hooks_jwt_issuers": "i.json"}, "--hooks-jwt-issuers needs --hooks-listen"),
        ({"hooks_listen": "127.0.0.1:0", "hooks_institution": "H1",
          "hooks_base_url": "cds.example"}, "--hooks-base-url 'cds.example': expected http"),
    ],
)  # fmt: skip
def test_a_contradictory_setting_is_refused_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _config(**settings)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as refused:
        _config(workers=0, grace=-1.0)
    assert "--workers 0" in str(refused.value) and "--grace -1.0" in str(refused.value)


def test_the_defaults_are_a_valid_configuration_and_unix_sockets_may_be_listened_on():
    assert _config().listen == "127.0.0.1:50051"
    assert _config(listen="unix:/run/cds.sock").listen == "unix:/run/cds.sock"


def test_every_setting_is_a_serve_flag_with_the_same_default():
    args = build_parser().parse_args(["serve", "--catalog", "c.json"])
    for f in dataclasses.fields(ServeConfig):
        expected = "c.json" if f.name == "catalog" else f.default
        assert getattr(args, f.name) == expected, f.name


def test_no_decision_log_clears_the_path():
    args = build_parser().parse_args(["serve", "--catalog", "c.json", "--no-decision-log"])
    assert args.decision_log is None
