"""Command-line pipelines (run by `just`): thin front doors over featlib."""
