"""The domain core: charge points, connectors, transactions and who may do what.

Knows nothing of sockets, JSON, OCPP libraries, SQL or Redis; the doors and adapters call it
through the types here and the Protocols in :mod:`charging_api.domain.ports`.
"""
