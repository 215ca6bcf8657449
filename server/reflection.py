"""Server reflection as ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection ships only the v1alpha service; newer grpcurl, grpcui, Postman and Evans ask for
``grpc.reflection.v1.ServerReflection`` first. The two protocols are the same messages under another
package, so v1 is served here by the same servicer: its file descriptor is the v1alpha one with the
package (and file name) renamed, added to the descriptor pool so reflection can describe it too, and
its one method reads and writes the v1alpha messages (identical on the wire).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1 = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def v1_file_descriptor() -> FileDescriptor:
    """The ``grpc.reflection.v1`` file in the default pool (added once, from the v1alpha one)."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old = f".{proto.package}."
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.options.Clear()  # the v1alpha file's language options name its own package
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = f".{V1_PACKAGE}." + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{V1_PACKAGE}." + method.input_type[len(old) :]
            method.output_type = f".{V1_PACKAGE}." + method.output_type[len(old) :]
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(V1_FILE)


def v1_service_descriptor() -> ServiceDescriptor:
    return v1_file_descriptor().services_by_name["ServerReflection"]


def enable(service_names: tuple[str, ...], server: grpc.aio.Server) -> tuple[str, ...]:
    """Serve reflection (both versions) of ``service_names`` and of itself; returns the names listed."""
    v1_file_descriptor()
    names = (*service_names, V1ALPHA, V1)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": handler}),))
    return names
