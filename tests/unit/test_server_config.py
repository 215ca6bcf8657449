"""ServerConfig: flags > FACESEARCH_* variables > defaults; problems name the variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from facesearch.errors import InvalidInputError
from server.config import add_arguments, load_config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_come_from_home() -> None:
    config = load_config(parse([]), env={"FACESEARCH_HOME": "/data"})
    assert config.bundle == Path("/data/models/dlib")
    assert config.index_root == Path("/data/index") and config.live_dir == Path("/data/index/live")
    assert config.listen == "127.0.0.1:50051" and config.metrics_listen == "127.0.0.1:9464"  # loopback only
    assert config.security_warnings() == ()
    assert (config.max_concurrent_streams, config.max_concurrent_rpcs) == (100, 256)
    assert (config.connection_idle_s, config.connection_age_s) == (300.0, 3600.0)
    assert config.max_message_bytes == 32 << 20 and config.min_similarity is None
    assert config.workers >= 1 and not config.tls


def test_flags_override_environment() -> None:
    env = {
        "FACESEARCH_LISTEN": "127.0.0.1:1",
        "FACESEARCH_INDEX": "/env/index",
        "FACESEARCH_WORKERS": "3",
        "FACESEARCH_MAX_MESSAGE_BYTES": "64M",
        "FACESEARCH_METRICS_LISTEN": "off",
        "FACESEARCH_MIN_SIMILARITY": "0.9",
        "FACESEARCH_ACCESS_LOG": "off",
    }
    config = load_config(parse(["--listen", "127.0.0.1:2", "--workers", "5"]), env=env)
    assert config.listen == "127.0.0.1:2" and config.workers == 5
    assert config.index_root == Path("/env/index")
    assert config.max_message_bytes == 64 << 20 and config.metrics_listen is None
    assert config.min_similarity == 0.9 and not config.access_log
    assert load_config(parse([]), env={"FACESEARCH_MAX_FPIR": "0.001"}).max_fpir == 0.001


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"FACESEARCH_WORKERS": "many"}, "FACESEARCH_WORKERS"),
        ({"FACESEARCH_QUEUE_SIZE": "0"}, "FACESEARCH_QUEUE_SIZE"),
        ({"FACESEARCH_LISTEN": "nowhere"}, "FACESEARCH_LISTEN"),
        ({"FACESEARCH_MIN_SIMILARITY": "2"}, "FACESEARCH_MIN_SIMILARITY"),
        ({"FACESEARCH_MAX_FPIR": "1"}, "FACESEARCH_MAX_FPIR"),
        ({"FACESEARCH_MAX_FPIR": "0.01", "FACESEARCH_MIN_SIMILARITY": "0.9"}, "FACESEARCH_MAX_FPIR"),
        ({"FACESEARCH_TLS_CERT": "/no/such/cert.pem"}, "FACESEARCH_TLS"),
        ({"FACESEARCH_AUTH_TOKENS_FILE": "/no/such/file"}, "FACESEARCH_AUTH_TOKENS_FILE"),
        ({"FACESEARCH_LOG_LEVEL": "chatty"}, "FACESEARCH_LOG_LEVEL"),
        ({"FACESEARCH_ACCESS_LOG": "maybe"}, "FACESEARCH_ACCESS_LOG"),
        ({"FACESEARCH_MAX_CONCURRENT_STREAMS": "0"}, "FACESEARCH_MAX_CONCURRENT_STREAMS"),
        ({"FACESEARCH_MAX_CONCURRENT_RPCS": "-1"}, "FACESEARCH_MAX_CONCURRENT_RPCS"),
        ({"FACESEARCH_CONNECTION_IDLE_S": "0"}, "FACESEARCH_CONNECTION_IDLE_S"),
        ({"FACESEARCH_CONNECTION_AGE_S": "soon"}, "FACESEARCH_CONNECTION_AGE_S"),
        ({"FACESEARCH_ALLOW_PLAINTEXT_TOKENS": "perhaps"}, "FACESEARCH_ALLOW_PLAINTEXT_TOKENS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        load_config(parse([]), env=env)
    assert names in str(err.value)


def test_tls_key_without_cert_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(InvalidInputError, match="together"):
        load_config(parse(["--tls-key", str(key)]), env={})
