"""Offline tooling (export, eval, reporting): reads the ledger or runs benchmarks, never on a call's path."""
