"""Every Redis key and channel the cluster uses, in one place (one Redis, no key hash tags).

Nothing here is durable beyond Redis's own life: the machines this runs on start Redis without
persistence, so a Redis restart empties every key. Each user of a key says what happens then
(docs/scaling.md, "Where each piece of state lives").
"""

from __future__ import annotations

PREFIX = "cha:"

#: The cluster's push numbering epoch (``auth_response.epoch``); a new one after Redis lost it.
EPOCH = PREFIX + "epoch"
#: Pub/sub channel of numbered pushes, fanned out to every api node.
PUSHES = PREFIX + "pushes"
#: Hash of the nodes' heartbeats: node id -> JSON (role, connections, seen at).
NODES = PREFIX + "nodes"
#: Set of users whose admin stream watches every charge point.
WATCH_ALL = PREFIX + "watch:all"
#: Pub/sub channel of ownership changes: JSON ``["claim"|"release", charge point id, node id]``.
OWNERS = PREFIX + "owners"
#: ``SCAN`` pattern of every owner key (the api nodes' periodic refresh of their mirror).
OWNER_PATTERN = PREFIX + "owner:*"


def seq(user_id: str) -> str:
    """A user's push counter (INCR)."""
    return f"{PREFIX}seq:{user_id}"


def history(user_id: str) -> str:
    """A user's push history: a Stream whose entry ids are ``<seq>-1``."""
    return f"{PREFIX}hist:{user_id}"


def session_pushes(user_id: str) -> str:
    """Present while the user asked for ``session_event``/``session_update`` pushes."""
    return f"{PREFIX}sessionpushes:{user_id}"


def watch_cp(charge_point_id: str) -> str:
    """Set of users whose admin stream watches this charge point."""
    return f"{PREFIX}watch:cp:{charge_point_id}"


def owner(charge_point_id: str) -> str:
    """The node id of the gateway the charge point is connected to (with a TTL)."""
    return f"{PREFIX}owner:{charge_point_id}"


def commands(node_id: str) -> str:
    """The Stream of commands for one gateway node (charge point calls, routed app requests)."""
    return f"{PREFIX}cmd:{node_id}"


def replies(node_id: str) -> str:
    """Pub/sub channel of the answers to the commands one node sent."""
    return f"{PREFIX}reply:{node_id}"


def watching(user_id: str) -> str:
    """Set of the charge points a user's admin stream watches one by one."""
    return f"{PREFIX}watching:{user_id}"


def privileged(user_id: str) -> str:
    """Present once the user's stream subscribed: its history may hold other users' pushes."""
    return f"{PREFIX}privileged:{user_id}"


def non_admins(user_id: str) -> str:
    """Sorted set of the user's connections holding a user-role token, on any api node:
    member ``<node>:<connection>``, score the lease's expiry (epoch seconds). While one is
    live, the user's stream may not subscribe (its pushes reach every connection)."""
    return f"{PREFIX}nonadmin:{user_id}"
