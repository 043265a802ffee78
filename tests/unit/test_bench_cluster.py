"""What the cluster benchmark's summary tells its reader: medians per arm, B / A, and parts of the
cluster that did not work named as problems instead of passed off as figures."""

from __future__ import annotations

from typing import Any

from bench.cluster import NO_FANOUT, summarize
from bench.report import _cluster_lines


def _run(arm: str, round_no: int, *, mps: float, cpu_us: float, delivered: int) -> dict[str, Any]:
    return {
        "arm": arm,
        "round": round_no,
        "problems": [],
        "fanout": {
            "deliveriesPerSecond": delivered / 5,
            "deliveriesExpected": 400,
            "deliveriesReceived": delivered,
            "lost": 400 - delivered,
            "latency": {"p50": 1.0, "p99": 4.0} if delivered else {"p50": None, "p99": None},
            "cpuUsPerUpdate": cpu_us * 3,
            "otherCpu": 0.1,
            "cpu": {"servers": 0.1, "perServer": {"server": 0.1}},
        },
        "ingest": {
            "messagesPerSecond": mps,
            "pushesPerSecond": mps if delivered else 0.0,
            "rtt": {"p50": 5.0, "p99": 20.0},
            "cpuUsPerMessage": cpu_us,
            "otherCpu": 0.1,
            "cpu": {"servers": 0.7, "perServer": {"server": 0.7}},
        },
    }


def _runs(b_delivered: int) -> list[dict[str, Any]]:
    return [
        _run("A", 1, mps=4000, cpu_us=150, delivered=400),
        _run("B", 1, mps=5000, cpu_us=200, delivered=b_delivered),
        _run("A", 2, mps=4400, cpu_us=170, delivered=400),
        _run("B", 2, mps=6000, cpu_us=220, delivered=b_delivered),
    ]


def test_medians_per_arm_and_their_ratio() -> None:
    summary = summarize(_runs(b_delivered=400))

    assert summary["order"] == ["A1", "B1", "A2", "B2"]
    assert summary["medians"]["A"]["ingest"]["messagesPerSecond"] == 4200
    assert summary["medians"]["B"]["ingest"]["cpuUsPerMessage"] == 210
    assert summary["ratiosBOverA"]["ingest"]["cpuUsPerMessage"] == 1.312
    assert summary["problems"] == []
    assert summary["notComparable"] == {"fanout": None, "ingest": None}


def test_pushes_that_do_not_cross_nodes_are_a_problem_not_a_figure() -> None:
    summary = summarize(_runs(b_delivered=0))

    assert f"arm B fan-out: {NO_FANOUT}" in summary["problems"]
    assert any("arm B ingest" in p and "no push" in p for p in summary["problems"])
    assert summary["notComparable"]["fanout"] and summary["notComparable"]["ingest"]
    assert summary["medians"]["B"]["fanout"]["latency.p99"] is None
    printed = "\n".join(_cluster_lines({**summary, "profile": _profile()}))
    assert "1.31*" in printed  # the CPU ratio is shown, marked as not like for like
    assert "B / A is not like for like" in printed
    assert "problem: arm B fan-out" in printed


def test_a_failed_load_leaves_the_others_reported() -> None:
    runs = _runs(b_delivered=400)
    runs[1]["ingest"] = {"error": "worker 0: no 'ready' within 150 s"}

    summary = summarize(runs)

    assert summary["medians"]["B"]["ingest"]["messagesPerSecond"] == 6000
    assert summary["notComparable"]["ingest"] == "the ingest load failed in arm B"
    assert summary["notComparable"]["fanout"] is None
    printed = "\n".join(_cluster_lines({**summary, "profile": _profile()}))
    assert "B1: fanout 0.10" in printed and "ingest FAILED" in printed


def _profile() -> dict[str, Any]:
    return {
        "fanoutChargePoints": 200,
        "fanoutAdmins": 3,
        "fanoutSeconds": 5.0,
        "ingestChargePoints": 50,
        "ingestSeconds": 3.0,
    }
