"""The repository root installs as the package onnx_rcam.console, holding only cli.py (see pyproject.toml)."""
