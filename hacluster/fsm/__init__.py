"""The replicated state machine: state, commands, codec, apply. Pure: no I/O."""

from hacluster.fsm.apply import apply
from hacluster.fsm.codec import (
    decode_command,
    decode_snapshot,
    encode_command,
    encode_snapshot,
    state_digest,
)
from hacluster.fsm.events import Event
from hacluster.fsm.model import ClusterState
from hacluster.fsm.validate import command_problem, settings_problem

__all__ = [
    "ClusterState",
    "Event",
    "apply",
    "command_problem",
    "decode_command",
    "decode_snapshot",
    "encode_command",
    "encode_snapshot",
    "settings_problem",
    "state_digest",
]
