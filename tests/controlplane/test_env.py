"""The environment readers fail loudly, naming the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import env_port_range


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
