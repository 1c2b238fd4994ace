"""The gRPC transport: server assembly, auth interceptor, servicers, proto conversion, statuses."""
