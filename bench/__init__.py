"""``python -m bench``: the performance benchmarks of issue 5 (``make bench``; CI does not run it).

The server under test runs as a real ``charging-api serve`` subprocess on free loopback ports; the
load comes from several Node worker processes (``bench/node/loadgen.js``), never from the server's
event loop. Scenario 1 runs the same load against three peers in the same run: the transport limit
(a bare ``websockets`` server), the PyPI ``ocpp`` library and the npm ``ocpp-rpc`` library.
Results: a table on stdout and ``bench/results/latest.json``.
"""
