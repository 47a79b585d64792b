"""Translation between the engine's types and errors and the tierstore.v1 wire format."""
