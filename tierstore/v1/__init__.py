"""Generated modules of the tierstore.v1 gRPC API (proto/generate.py)."""
