"""The environment readers fail loudly, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import env_port_range
from tests.conftest import ROOT


def test_a_port_range_reads_both_ends(monkeypatch):
    monkeypatch.setenv("SLIPWAY_LOCAL_PORTS", " 9000 - 9010 ")
    assert env_port_range("SLIPWAY_LOCAL_PORTS", (8100, 8999)) == (9000, 9010)
    monkeypatch.setenv("SLIPWAY_LOCAL_PORTS", "9000-9000")
    assert env_port_range("SLIPWAY_LOCAL_PORTS", (8100, 8999)) == (9000, 9000)
    monkeypatch.delenv("SLIPWAY_LOCAL_PORTS")
    assert env_port_range("SLIPWAY_LOCAL_PORTS", (8100, 8999)) == (8100, 8999)


@pytest.mark.parametrize("raw", ["9000", "9010-9000", "0-10", "8000-70000", "a-b", "8000:9000"])
def test_a_bad_port_range_stops_start_up_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("SLIPWAY_LOCAL_PORTS", raw)
    with pytest.raises(ImproperlyConfigured, match=r"SLIPWAY_LOCAL_PORTS=.* must be a port range FIRST-LAST"):
        env_port_range("SLIPWAY_LOCAL_PORTS", (8100, 8999))


def manage_check(tmp_path, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    env |= {"SLIPWAY_VAR_DIR": str(tmp_path / "var"), **variables}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_log_level_is_read_in_either_case_and_a_wrong_one_names_the_variable(tmp_path):
    assert manage_check(tmp_path, SLIPWAY_LOG_LEVEL="debug").returncode == 0  # as people write it
    assert manage_check(tmp_path, SLIPWAY_LOG_LEVEL="WARNING").returncode == 0
    refused = manage_check(tmp_path, SLIPWAY_LOG_LEVEL="verbose")
    assert refused.returncode != 0
    assert "SLIPWAY_LOG_LEVEL='verbose' must be one of: debug, info, warning, error, critical." in refused.stderr


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgres//bob:s3cret@db.example.com/slipway", "Scheme '://' is unknown"),
        ("mysqlx://bob:s3cret@db/x", "Scheme 'mysqlx://' is unknown"),
    ],
)
def test_a_database_url_that_is_none_names_the_variable_and_keeps_its_password(tmp_path, url, reason):
    refused = manage_check(tmp_path, DATABASE_URL=url)
    assert refused.returncode != 0
    assert "DATABASE_URL is not a database URL Slipway can use" in refused.stderr and reason in refused.stderr
    assert "s3cret" not in refused.stdout + refused.stderr


@pytest.mark.parametrize(
    ("url", "given"),
    [("redis//:s3cret@cache.example.com:6379/1", "no scheme://"), ("memcache://u:s3cret@cache/1", "'memcache://'")],
)
def test_a_cache_url_that_is_none_names_the_variable_and_keeps_its_password(tmp_path, url, given):
    refused = manage_check(tmp_path, SLIPWAY_CACHE_URL=url)
    assert refused.returncode != 0
    assert "SLIPWAY_CACHE_URL is not a cache URL Slipway knows" in refused.stderr and given in refused.stderr
    assert "s3cret" not in refused.stdout + refused.stderr
