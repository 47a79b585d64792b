"""The gRPC server: services, interceptors, TLS material, tokens and authorization."""
