"""The HTTP API: accounts, conversations, history, health and readiness."""

from .api import HttpApi

__all__ = ["HttpApi"]
