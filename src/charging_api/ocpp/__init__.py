"""The charge point door: OCPP 1.6-J over WebSocket at ``/ocpp/{chargePointId}``.

It reads the OCA JSON schemas the ``ocpp`` library ships as package data and never imports
the library's code (only the simulator does). Framing and validation are our own, compiled
once: the library's dispatcher re-walks the schema and converts key case on every message,
several times our cost per MeterValues (see docs/architecture.md).
"""
