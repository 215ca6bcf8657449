"""Generated gRPC stubs of proto/facesearch/v1 (scripts/gen-proto.sh); do not edit."""
