"""charging-api: apps start, stop and watch EV charging; charge points speak OCPP 1.6-J to the same service."""

__version__ = "0.1.0"
