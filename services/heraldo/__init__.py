"""Heraldo: invoice notifications in bulk over a gRPC service mesh."""

__version__ = "0.1.0"
