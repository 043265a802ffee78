"""The charge point door: OCPP 1.6-J over WebSocket at ``/ocpp/{chargePointId}``.

The only package that imports the ``ocpp`` library (for its OCA JSON schemas). Framing and
validation are our own, compiled once, because the library's dispatcher costs ~220 µs per
MeterValues: see docs/architecture.md.
"""
