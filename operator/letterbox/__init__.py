"""Letterbox: declarative mail for Kubernetes (the operator and its CLI)."""

__version__ = "0.1.0"
