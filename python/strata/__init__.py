"""Strata, the tiered cache for AI clusters, from Python.

``strata.Client(addr)`` talks to a Strata server (or a cluster, through one of
its members) with the Rust client underneath: values move over shared memory
when the server is on the same host, over TCP otherwise, or over gRPC; every
call releases the GIL while it waits.

    >>> import strata
    >>> c = strata.Client("127.0.0.1:50051")
    >>> c.put("obj/team/greeting", b"hello")
    5
    >>> c.get("obj/team/greeting")
    b'hello'

Keys are paths, ``namespace/tenant/body`` (``kv``, ``obj``, ``shard``, ``kb``
namespaces; see the server's docs/keys.md), or their canonical encoding as
``bytes`` (``encode_key``), whose body may be any bytes. Errors are ``StrataError``
subclasses carrying the server's message.
"""

from ._strata import (
    BusyError,
    ChangedError,
    ChecksumError,
    Client,
    ConnectError,
    CorruptError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ProtocolError,
    StrataError,
    TooLargeError,
    UnavailableError,
    __version__,
    encode_key,
    key_path,
)

__all__ = [
    "BusyError",
    "ChangedError",
    "ChecksumError",
    "Client",
    "ConnectError",
    "CorruptError",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "NotFoundError",
    "ProtocolError",
    "StrataError",
    "TooLargeError",
    "UnavailableError",
    "__version__",
    "encode_key",
    "key_path",
]
