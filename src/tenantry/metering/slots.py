"""Redis Cluster hash slots: which slot a key lives in, and which key of a command decides it.

A cluster splits the key space into 16,384 slots, each served by one master. A key's slot is
CRC16 (XMODEM) of its hash tag (the text between the first `{` and the next `}`, when not empty)
or of the whole key, modulo 16,384. A script or a multi-key command must touch keys of one slot:
that is why every key of a tenant carries the tag `{<tenant uuid>}` and every ledger stream a tag
of its own.
"""

from __future__ import annotations

import binascii
from typing import Final

from redis.exceptions import ConnectionError as RedisConnectionError

from tenantry.metering.resp import Arg, Command

__all__ = ["SLOTS", "SlotUnavailable", "command_key", "hash_tag", "key_slot"]

SLOTS: Final = 16_384

# Commands that name no key: any node answers them.
_KEYLESS: Final = frozenset({"PING", "SCRIPT", "INFO", "CLUSTER", "ASKING", "AUTH", "SELECT", "HELLO", "TIME"})
_SCRIPTS: Final = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
_STREAM_READS: Final = frozenset({"XREAD", "XREADGROUP"})
_SUBCOMMANDED: Final = frozenset({"XGROUP", "XINFO", "OBJECT"})  # the key follows a subcommand


class SlotUnavailable(RedisConnectionError):
    """The command's slot cannot be served now, and the command did not run: the slot is being migrated
    and its keys are split between two masters (`TRYAGAIN`), or its master refuses connections (it is
    down: until a replica takes over). Only the keys of the slots of that master or migration (some
    tenants', some ledger shards') are affected; Redis as a whole is not down."""


class SlotLost(RedisConnectionError):
    """The connection to the master of the command's slot broke before its reply (the master died): the
    command may or may not have run, so its outcome is unknown (unlike `SlotUnavailable`), but as there
    only that master's slots are out; Redis as a whole is not down."""


def _bytes(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else str(value)).encode()


def hash_tag(key: Arg) -> bytes:
    """What of `key` decides its slot."""
    raw = _bytes(key)
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            return raw[start + 1 : end]
    return raw


def key_slot(key: Arg) -> int:
    """The slot of `key`, as `CLUSTER KEYSLOT` answers (CRC16/XMODEM is `binascii.crc_hqx` from 0)."""
    return binascii.crc_hqx(hash_tag(key), 0) % SLOTS


def command_key(command: Command) -> Arg | None:
    """The key that routes `command` (its first one), or None when it names none."""
    name = _bytes(command[0]).decode().upper()
    if name in _KEYLESS or len(command) < 2:
        return None
    if name in _SCRIPTS:
        return command[3] if int(command[2]) > 0 else None
    if name in _STREAM_READS:
        for i, arg in enumerate(command):
            if _bytes(arg).upper() == b"STREAMS":
                return command[i + 1]
        return None
    if name in _SUBCOMMANDED:
        return command[2] if len(command) > 2 else None
    return command[1]
