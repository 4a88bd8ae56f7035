"""Type stubs of the native module (src/lib.rs)."""

from typing import Any, Literal, Optional, Sequence, Union

from typing_extensions import Buffer

__version__: str

Key = Union[str, bytes]
"""A key: a path (``namespace/tenant/body``) or its canonical encoding."""

def encode_key(namespace: str, tenant: str, body: bytes) -> bytes:
    """The canonical encoding of ``namespace/tenant/body`` (any bytes as body)."""

def key_path(key: Key) -> str:
    """The path form of a key."""

class StrataError(Exception): ...
class ConnectError(StrataError): ...
class InvalidArgumentError(StrataError): ...
class NotFoundError(StrataError): ...
class TooLargeError(StrataError): ...
class BusyError(StrataError): ...
class DeadlineExceededError(StrataError): ...
class ChecksumError(StrataError): ...
class CorruptError(StrataError): ...
class ChangedError(StrataError): ...
class UnavailableError(StrataError): ...
class ProtocolError(StrataError): ...

class Client:
    """A client of one Strata server (or cluster, through one of its members)."""

    def __init__(
        self,
        addr: str,
        *,
        carrier: Literal["auto", "shm", "tcp", "rdma", "grpc"] = "auto",
        timeout: float = 30.0,
        connections: int = 4,
    ) -> None: ...
    @property
    def carrier(self) -> Literal["shm", "tcp", "rdma", "grpc"]:
        """How values move."""
    @property
    def addr(self) -> str:
        """The server's address, as given."""
    def get(self, key: Key) -> Optional[bytes]:
        """The whole value of ``key``, or ``None`` if it is absent."""
    def get_range(self, key: Key, offset: int, length: Optional[int] = None) -> Optional[bytes]:
        """``length`` bytes of the value from ``offset`` (to its end if ``None``)."""
    def get_into(self, key: Key, buffer: Any, offset: int = 0) -> Optional[int]:
        """Reads the value, from ``offset``, into a writable C-contiguous buffer
        (or a CPU tensor through DLPack); returns the bytes written, or ``None``."""
    def mget(self, keys: Sequence[Key]) -> list[Optional[bytes]]:
        """The values of ``keys``, in order (``None`` for an absent key)."""
    def put(self, key: Key, value: Buffer) -> int:
        """Stores ``value`` under ``key``; returns its length."""
    def delete(self, key: Key) -> bool:
        """Deletes ``key`` from the cache tiers; ``True`` if it was there."""
    def contains(self, key: Key) -> bool:
        """Whether the cache holds ``key``."""
    def match_prefix(self, keys: Sequence[Key]) -> int:
        """How many of ``keys``, from the first, the cache holds."""
    def stats(self) -> dict[str, Any]:
        """The server's statistics (version, uptime, per-tier counters)."""
