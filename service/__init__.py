"""Herald: a pub/sub broadcaster over Redis Streams and Server-Sent Events."""

__version__ = "0.1.0"
