"""Which scope each gRPC method needs: one table for every method of every service the server registers.

The server checks the table against the descriptors of the services it registers before it starts
(:func:`check_table`) and refuses to start when a method has no entry, so a method added to the proto
cannot be served without a decision here; a call of a method the table lacks (a service registered
without its descriptor in that check) is refused at run time, PERMISSION_DENIED with reason
``METHOD_NOT_MAPPED``. An entry of ``None`` is public (the health service, which
load balancers probe without credentials). ``admin`` holds every scope but ``candidates``
(:mod:`server.principal`); reflection needs ``admin``.

=========================================================  ===========
method                                                     scope
=========================================================  ===========
FaceSearch Identify, Verify, Detect, StreamIdentify        identify
FaceSearch GetIdentity, ListIdentities, GetStats           read
FaceSearch Enroll (adding faces: its ``append`` flag too)  enroll
FaceSearch DeleteIdentity, DeleteFaces                     delete
grpc.reflection v1 and v1alpha ServerReflectionInfo        admin
grpc.health.v1.Health Check, List, Watch                   public
=========================================================  ===========
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.descriptor import ServiceDescriptor

from facesearch.errors import PermissionDeniedError, PreconditionError, Reason
from server.principal import Principal, Scope

FACESEARCH = "facesearch.v1.FaceSearch"
HEALTH = "grpc.health.v1.Health"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _service(name: str, methods: Mapping[str, Scope | None]) -> dict[str, Scope | None]:
    return {f"/{name}/{method}": scope for method, scope in methods.items()}


METHOD_SCOPES: Mapping[str, Scope | None] = {
    **_service(
        FACESEARCH,
        {
            "Identify": Scope.IDENTIFY,
            "Verify": Scope.IDENTIFY,
            "Detect": Scope.IDENTIFY,
            "StreamIdentify": Scope.IDENTIFY,
            "GetIdentity": Scope.READ,
            "ListIdentities": Scope.READ,
            "GetStats": Scope.READ,
            "Enroll": Scope.ENROLL,
            "DeleteIdentity": Scope.DELETE,
            "DeleteFaces": Scope.DELETE,
        },
    ),
    **_service(HEALTH, {"Check": None, "List": None, "Watch": None}),
    **_service(REFLECTION_V1ALPHA, {"ServerReflectionInfo": Scope.ADMIN}),
    **_service(REFLECTION_V1, {"ServerReflectionInfo": Scope.ADMIN}),
}


def method_names(services: Iterable[ServiceDescriptor]) -> list[str]:
    """``/package.Service/Method`` of every method of ``services`` (what a call's method is)."""
    return [f"/{service.full_name}/{method.name}" for service in services for method in service.methods]


def check_table(services: Iterable[ServiceDescriptor], table: Mapping[str, Scope | None] = METHOD_SCOPES) -> None:
    """Refuse to start (BAD_CONFIG) when a method of a registered service has no entry in ``table``."""
    missing = [name for name in method_names(services) if name not in table]
    if missing:
        raise PreconditionError(
            f"methods with no scope in server/auth_scopes.py METHOD_SCOPES: {', '.join(missing)}; every "
            "registered method needs an entry before the server may serve it",
            reason=Reason.BAD_CONFIG,
        )


class NotMapped:
    """The table's answer for a method it does not hold (refused)."""


NOT_MAPPED = NotMapped()


def required_scope(method: str, table: Mapping[str, Scope | None] = METHOD_SCOPES) -> Scope | NotMapped | None:
    return table.get(method, NOT_MAPPED)


def authorize(principal: Principal, method: str, required: Scope | NotMapped | None) -> None:
    """Raise PERMISSION_DENIED unless ``principal`` holds the scope ``method`` needs (``None``: public)."""
    if required is None:
        return
    short = method.rsplit("/", 1)[-1]
    if isinstance(required, NotMapped):
        raise PermissionDeniedError(f"{method} has no scope in the server's table", reason=Reason.METHOD_NOT_MAPPED)
    if not principal.has(required):
        held = ",".join(sorted(s.value for s in principal.scopes)) or "none"
        raise PermissionDeniedError(
            f"{short} needs scope '{required.value}' (caller {principal.name} has: {held})",
            reason=Reason.SCOPE_REQUIRED,
        )
