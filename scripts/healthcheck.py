#!/usr/bin/env python3
"""Docker HEALTHCHECK: exit 0 when the local server's gRPC health service says SERVING, else 1.

    HEALTHCHECK CMD ["python", "scripts/healthcheck.py"]

Target: ``--target HOST:PORT``, default 127.0.0.1 at the port of ``FACESEARCH_LISTEN`` (50051).
With ``FACESEARCH_TLS_CERT`` set, it connects over TLS trusting ``FACESEARCH_HEALTHCHECK_CA``
(default: the server certificate itself) and presents ``FACESEARCH_HEALTHCHECK_CLIENT_CERT`` /
``_KEY`` when the server requires client certificates. The health service needs no token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def default_target() -> str:
    listen = os.environ.get("FACESEARCH_LISTEN", "127.0.0.1:50051")
    port = listen.rpartition(":")[2] or "50051"
    return f"127.0.0.1:{port}"


def check(target: str, timeout: float, service: str = "") -> str:
    import grpc  # noqa: PLC0415 - keep --help fast
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    cert = os.environ.get("FACESEARCH_TLS_CERT")
    if cert:
        ca = Path(os.environ.get("FACESEARCH_HEALTHCHECK_CA") or cert).read_bytes()
        key_path = os.environ.get("FACESEARCH_HEALTHCHECK_CLIENT_KEY")
        chain_path = os.environ.get("FACESEARCH_HEALTHCHECK_CLIENT_CERT")
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=Path(key_path).read_bytes() if key_path else None,
            certificate_chain=Path(chain_path).read_bytes() if chain_path else None,
        )
        name = os.environ.get("FACESEARCH_HEALTHCHECK_SERVER_NAME", "localhost")
        channel = grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", name)])
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=default_target(), help="HOST:PORT (default from FACESEARCH_LISTEN)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--service", default="", help="service name to check (default: the whole server)")
    args = parser.parse_args(argv)
    try:
        status = check(args.target, args.timeout, args.service)
    except Exception as err:  # any failure means unhealthy; say why for `docker inspect`
        print(f"unhealthy: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
