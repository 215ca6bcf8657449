"""Several targets for the Python client and CLI (issue 14): one target is passed as it is, several
comma-separated become one static ipv4:/// (or ipv6:///) target balanced round-robin, bad parts are
named. (That calls really alternate between two servers: tests/integration/test_pg_servers.py.)"""

from __future__ import annotations

import pytest

from facesearch.client.service_client import channel_target
from facesearch.errors import InvalidInputError


def test_one_target_is_unchanged() -> None:
    assert channel_target("localhost:50051") == ("localhost:50051", [])
    assert channel_target("dns:///faces.internal:443") == ("dns:///faces.internal:443", [])


def test_several_targets_are_balanced_round_robin() -> None:
    uri, options = channel_target("127.0.0.1:50051, 127.0.0.2:50052")
    assert uri == "ipv4:///127.0.0.1:50051,127.0.0.2:50052"
    assert options == [("grpc.lb_policy_name", "round_robin")]
    assert channel_target("[::1]:1,[::1]:2")[0] == "ipv6:///[::1]:1,[::1]:2"
    assert channel_target("localhost:1,127.0.0.1:2")[0] == "ipv4:///127.0.0.1:1,127.0.0.1:2"  # names resolved


@pytest.mark.parametrize("bad", ["127.0.0.1:1,nope", "127.0.0.1:1,127.0.0.1:x", "127.0.0.1:1,[::1]:2"])
def test_bad_targets_are_named(bad: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        channel_target(bad)
    assert err.value.reason == "BAD_CONFIG" and bad in err.value.message
