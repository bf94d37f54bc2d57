"""Who is connected where: local connection registry, fan-out, and the broker between
processes (in-process by default; Redis in a later issue)."""

from .broker import Broker, InProcessBroker
from .hub import Endpoint, Hub

__all__ = ["Broker", "Endpoint", "Hub", "InProcessBroker"]
