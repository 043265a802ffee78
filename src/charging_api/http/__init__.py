"""Plain HTTP routes served beside ``/ws``: ``/health``, ``/api/stats``."""
