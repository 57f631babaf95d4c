"""Conformance tests of the Consul development stand-in, runnable against a real agent too."""
