"""The service: the edges (HTTP, database, Codat, CLI) around the pure handlers."""
