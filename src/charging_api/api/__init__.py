"""The app door: JSON messages over WebSocket at ``/ws``, authenticated with JWTs."""
