"""Credentials without a server: the token file (hashed, scoped; the old plain format), reloads, client
certificate scopes, the method -> scope table and its start-up check, the token command, and the
transport rules of the config (plaintext tokens refused off loopback, security warnings)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.errors import InvalidInputError, PermissionDeniedError, PreconditionError, UnauthenticatedError
from server.app import main as server_main
from server.auth import (
    Authenticator,
    TokenTable,
    WatchedFile,
    digest_of,
    parse_client_scopes,
    parse_token_file,
    token_line,
)
from server.auth_scopes import METHOD_SCOPES, authorize, check_table, method_names, required_scope
from server.config import ServerConfig, is_loopback
from server.principal import ANONYMOUS, IMPLIED_BY_ADMIN, Principal, Scope
from server.reflection import v1_service_descriptor


def _tokens(path: Path) -> WatchedFile[TokenTable]:
    return WatchedFile(path, lambda text: parse_token_file(text, where=str(path)), "token file")


def test_hashed_and_plain_tokens_parse_and_match(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "# comment",
            token_line("front", [Scope.IDENTIFY], "secret-front"),
            f"ops admin,candidates {digest_of('secret-ops')}",
            "",
            "old-plain-token",
        ]
    )
    table = parse_token_file(text, where="f")
    front = table.find("secret-front")
    assert front is not None and front.name == "front" and front.scopes == {Scope.IDENTIFY}
    ops = table.find("secret-ops")
    assert ops is not None and ops.scopes == IMPLIED_BY_ADMIN | {Scope.CANDIDATES}
    legacy = table.find("old-plain-token")
    assert legacy is not None and legacy.name == "legacy-token-5" and legacy.scopes == IMPLIED_BY_ADMIN
    assert table.legacy == 1
    assert table.find("secret-fron") is None and table.find("") is None
    assert "secret-front" not in text  # only the digest is stored


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no tokens"),
        ("# only a comment\n", "no tokens"),
        ("a identify sha256:abc\n", "64 hex"),
        (f"a wizard {digest_of('x')}\n", "unknown scope 'wizard'"),
        (f"a identify {digest_of('x')}\na read {digest_of('y')}\n", "appears twice"),
        ("a b c d\n", "expected 'NAME SCOPES sha256:HEX'"),
        (f"a , {digest_of('x')}\n", "no scopes"),
    ],
)
def test_bad_token_files_are_refused_naming_the_line(text: str, words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        parse_token_file(text, where="tokens")


def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(token_line("a", [Scope.READ], "sa") + "\n")
    watched = _tokens(path)
    assert not watched.reload()  # unchanged
    path.write_text(token_line("a", [Scope.READ], "sa") + "\n" + token_line("b", [Scope.ENROLL], "sb") + "\n")
    assert watched.reload()
    assert watched.value.find("sb") is not None
    caplog.set_level(logging.ERROR)
    path.write_text("this is : not a token file\n")
    assert not watched.reload()
    assert "not reloaded" in caplog.text and watched.value.find("sb") is not None
    path.unlink()
    assert not watched.reload() and watched.value.find("sa") is not None
    path.write_text(token_line("c", [Scope.DELETE], "sc") + "\n")
    assert watched.reload(force=True) and watched.value.find("sa") is None


def test_authenticator_tokens_and_client_certificates(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("reader", [Scope.READ], "s-read") + "\n")
    clients = tmp_path / "clients"
    clients.write_text("# CN scopes\nbilling frontend identify\nops admin\n")
    auth = Authenticator.from_files(tokens, clients)
    cert = {"x509_common_name": [b"billing frontend"]}
    assert auth.principal({"authorization": "Bearer s-read"}, {}).name == "reader"
    assert auth.principal({"authorization": "bearer s-read"}, cert).name == "reader"  # a token wins
    assert auth.principal({}, cert) == Principal("cert:billing frontend", frozenset({Scope.IDENTIFY}))
    with pytest.raises(UnauthenticatedError) as err:
        auth.principal({}, {})
    assert err.value.reason == "MISSING_TOKEN"
    for header in ("Bearer nope", "Basic s-read", "Bearer "):
        with pytest.raises(UnauthenticatedError) as err:
            auth.principal({"authorization": header}, cert)
        assert err.value.reason == "BAD_TOKEN"
    with pytest.raises(PermissionDeniedError) as denied:
        auth.principal({}, {"x509_common_name": [b"stranger"]})
    assert denied.value.reason == "CLIENT_NOT_MAPPED" and "stranger" in str(denied.value)
    open_auth = Authenticator.from_files(None, None)
    assert not open_auth.enabled and open_auth.principal({}, {}) == ANONYMOUS
    assert open_auth.principal({}, cert).name == "cert:billing frontend"
    with pytest.raises(InvalidInputError, match="line 1"):
        parse_client_scopes("lonely\n", where="clients")


def _registered() -> list[ServiceDescriptor]:
    return [
        pb.DESCRIPTOR.services_by_name["FaceSearch"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        v1_service_descriptor(),
    ]


def test_every_registered_method_has_a_scope_and_a_new_one_stops_the_start() -> None:
    names = method_names(_registered())
    assert len(names) >= 15 and set(names) == set(METHOD_SCOPES)
    check_table(_registered())
    # a FaceSearch method added to the proto without a scope: the server refuses to start
    proto = descriptor_pb2.FileDescriptorProto(name="future.proto", package="facesearch.v1")
    proto.message_type.add(name="Empty")
    service = proto.service.add(name="FaceSearch")
    service.method.add(name="Identify", input_type=".facesearch.v1.Empty", output_type=".facesearch.v1.Empty")
    service.method.add(name="Frobnicate", input_type=".facesearch.v1.Empty", output_type=".facesearch.v1.Empty")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    future = pool.FindServiceByName("facesearch.v1.FaceSearch")
    with pytest.raises(PreconditionError, match="Frobnicate") as err:
        check_table([*_registered(), future])
    assert "Identify" not in str(err.value)


def test_scopes_of_the_methods() -> None:
    reader = Principal("reader", frozenset({Scope.READ}))
    admin = Principal("root", IMPLIED_BY_ADMIN)
    authorize(reader, "/facesearch.v1.FaceSearch/GetStats", required_scope("/facesearch.v1.FaceSearch/GetStats"))
    authorize(reader, "/grpc.health.v1.Health/Watch", required_scope("/grpc.health.v1.Health/Watch"))
    with pytest.raises(PermissionDeniedError, match="Enroll needs scope 'enroll'") as err:
        authorize(reader, "/facesearch.v1.FaceSearch/Enroll", required_scope("/facesearch.v1.FaceSearch/Enroll"))
    assert err.value.reason == "SCOPE_REQUIRED"
    for method, scope in METHOD_SCOPES.items():
        authorize(admin, method, scope)  # admin may call everything
    with pytest.raises(PermissionDeniedError) as err:
        authorize(admin, "/x.Y/Z", required_scope("/x.Y/Z"))
    assert err.value.reason == "METHOD_NOT_MAPPED"


def test_token_command_mints_appends_and_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert server_main(["token", "new", "--name", "front", "--scopes", "identify,read"]) == 0
    secret, _, line = capsys.readouterr().out.strip().splitlines()
    found = parse_token_file(line, where="new").find(secret)
    assert found is not None and found.scopes == {Scope.IDENTIFY, Scope.READ} and secret not in line
    path = tmp_path / "tokens"
    assert server_main(["token", "new", "--name", "a", "--scopes", "enroll", "--append", str(path)]) == 0
    first = capsys.readouterr().out.strip()
    assert server_main(["token", "new", "--name", "b", "--scopes", "delete", "--append", str(path)]) == 0
    table = parse_token_file(path.read_text(), where="f")
    assert [e.principal.name for e in table.entries] == ["a", "b"] and table.find(first) is not None
    assert server_main(["token", "new", "--name", "a", "--scopes", "read", "--append", str(path)]) == 2
    assert "appears twice" in capsys.readouterr().err
    assert server_main(["token", "new", "--name", "c", "--scopes", "root"]) == 2
    legacy = tmp_path / "legacy"
    legacy.write_text("# old\nplain-one\n")
    assert server_main(["token", "hash", "--file", str(legacy)]) == 0
    converted = parse_token_file(capsys.readouterr().out, where="converted")
    assert converted.legacy == 0 and converted.find("plain-one") == Principal("legacy-token-2", IMPLIED_BY_ADMIN)


@pytest.mark.parametrize(
    ("hostport", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:1", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:1", False),
        ("facesearch.internal:1", False),
    ],
)
def test_loopback_addresses(hostport: str, loopback: bool) -> None:
    assert is_loopback(hostport) is loopback


def test_plaintext_tokens_off_loopback_are_refused_and_warnings_say_why(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("a", [Scope.READ], "s") + "\n")
    base = {"bundle": tmp_path, "index_root": tmp_path, "live_dir": tmp_path}
    with pytest.raises(InvalidInputError, match="FACESEARCH_ALLOW_PLAINTEXT_TOKENS"):
        ServerConfig(**base, listen="0.0.0.0:50051", auth_tokens_file=tokens)  # type: ignore[arg-type]
    assert ServerConfig(**base, listen="127.0.0.1:1", auth_tokens_file=tokens).security_warnings() == ()  # type: ignore[arg-type]
    allowed = ServerConfig(**base, listen="0.0.0.0:1", auth_tokens_file=tokens, allow_plaintext_tokens=True)  # type: ignore[arg-type]
    assert len(allowed.security_warnings()) == 2  # no TLS; tokens in plaintext
    open_server = ServerConfig(**base, listen="0.0.0.0:1", metrics_listen="0.0.0.0:2")  # type: ignore[arg-type]
    warnings = open_server.security_warnings()
    assert len(warnings) == 3 and "without TLS" in warnings[0] and "without authentication" in warnings[1]
    assert "metrics" in warnings[2]


def test_tls_with_client_certificates_on_the_network_has_no_warning(tmp_path: Path) -> None:
    for name in ("cert", "key", "ca"):
        (tmp_path / name).write_text("pem")
    base = {"bundle": tmp_path, "index_root": tmp_path, "live_dir": tmp_path, "listen": "0.0.0.0:50051"}
    tls = {"tls_cert": tmp_path / "cert", "tls_key": tmp_path / "key"}
    assert ServerConfig(**base, **tls, tls_client_ca=tmp_path / "ca").security_warnings() == ()  # type: ignore[arg-type]
    (only,) = ServerConfig(**base, **tls).security_warnings()  # type: ignore[arg-type]
    assert "without authentication" in only
