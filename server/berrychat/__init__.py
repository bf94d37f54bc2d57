"""BerryChat: a self-hosted instant-messaging server for Raspberry Pi fleets."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
