"""strata.Client against a real server, over each carrier."""

import array
import threading

import numpy as np
import pytest

import strata

CARRIERS = ["shm", "tcp", "grpc"]


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


@pytest.fixture(params=CARRIERS)
def client(server, request):
    c = strata.Client(server.addr, carrier=request.param)
    assert c.carrier == request.param
    return c


def test_put_get_delete_over_each_carrier(client):
    k = f"kv/py/{client.carrier}/v"
    v = pattern(300_000, 1)
    assert client.put(k, v) == len(v)
    assert client.get(k) == v
    assert client.contains(k)
    assert client.delete(k)
    assert client.get(k) is None
    assert not client.contains(k)
    assert not client.delete(k)


def test_values_of_every_size_and_kind(client):
    for n in [0, 1, 4095, 4096, (1 << 20) + 7, 3 << 20]:
        k = f"obj/py/{client.carrier}/n{n}"
        v = pattern(n, n % 251)
        # bytes (lent without a copy), bytearray and memoryview (copied).
        for value in (v, bytearray(v), memoryview(v)):
            assert client.put(k, value) == n
            assert client.get(k) == v


def test_ranges(client):
    k = f"obj/py/{client.carrier}/ranged"
    v = pattern(2 << 20, 9)
    client.put(k, v)
    assert client.get_range(k, 0, 10) == v[:10]
    assert client.get_range(k, (1 << 20) - 5, 100) == v[(1 << 20) - 5:(1 << 20) + 95]
    assert client.get_range(k, len(v) - 3) == v[-3:]
    assert client.get_range(k, len(v)) == b""
    with pytest.raises(strata.InvalidArgumentError):
        client.get_range(k, len(v) + 1)
    assert client.get_range(f"obj/py/{client.carrier}/none", 0, 1) is None


def test_get_into_buffers(client):
    k = f"obj/py/{client.carrier}/into"
    v = pattern((1 << 20) + 100, 3)
    client.put(k, v)
    # bytearray, exactly the size.
    b = bytearray(len(v))
    assert client.get_into(k, b) == len(v)
    assert bytes(b) == v
    # Larger than the value: the rest is left as it was.
    b = bytearray(b"\xee" * (len(v) + 50))
    assert client.get_into(k, b) == len(v)
    assert bytes(b[: len(v)]) == v and b[len(v):] == b"\xee" * 50
    # A numpy array of another dtype: bytes, whatever the element type.
    a = np.zeros(len(v) // 4, dtype=np.float32)
    assert client.get_into(k, a) == a.nbytes
    assert a.tobytes() == v[: a.nbytes]
    # From an offset, into a memoryview of part of a buffer.
    b = bytearray(100)
    assert client.get_into(k, memoryview(b)[10:60], offset=1000) == 50
    assert bytes(b[10:60]) == v[1000:1050]
    # array.array
    arr = array.array("B", bytes(16))
    assert client.get_into(k, arr, offset=7) == 16
    assert arr.tobytes() == v[7:23]
    # Absent.
    assert client.get_into(f"obj/py/{client.carrier}/none", bytearray(8)) is None


def test_get_into_refuses_what_it_cannot_write(client):
    k = f"obj/py/{client.carrier}/ro"
    client.put(k, b"x" * 100)
    with pytest.raises(TypeError):
        client.get_into(k, b"read-only bytes")
    a = np.zeros((10, 10), dtype=np.uint8)[:, ::2]  # not contiguous
    with pytest.raises((TypeError, BufferError)):
        client.get_into(k, a)


def test_mget_and_match_prefix(client):
    ks = [f"kv/py/{client.carrier}/b{i}" for i in range(6)]
    for i, k in enumerate(ks[:4]):
        client.put(k, pattern(1000 + i, i))
    got = client.mget(ks)
    assert got[:4] == [pattern(1000 + i, i) for i in range(4)]
    assert got[4:] == [None, None]
    assert client.match_prefix(ks) == 4
    assert client.match_prefix(ks[4:] + ks[:4]) == 0
    assert client.mget([]) == []


def test_errors_carry_the_servers_message(client):
    with pytest.raises(strata.InvalidArgumentError, match="key"):
        client.get("no-namespace")
    with pytest.raises(strata.InvalidArgumentError):
        client.put("nosuchns/t/k", b"x")
    # The server's own keys are refused whoever asks (issue 21).
    with pytest.raises(strata.StrataError, match="_strata"):
        client.put("obj/_strata/datasets/index.json", b"x")


def test_stats(client):
    s = client.stats()
    assert s["version"]
    names = [t["tier"] for t in s["tiers"]]
    assert "dram" in names
    dram = next(t for t in s["tiers"] if t["tier"] == "dram")
    assert dram["capacity_bytes"] == 64 << 20
    assert set(dram["total"]) >= {"hits", "misses", "entries", "bytes"}


def test_threads_share_a_client_and_the_gil_is_released(server):
    c = strata.Client(server.addr)
    v = pattern(256 << 10, 5)
    errors = []

    def work(t):
        try:
            for i in range(20):
                k = f"kv/py/threads/{t}-{i}"
                c.put(k, v)
                assert c.get(k) == v
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_connecting_to_nothing_is_a_clear_error():
    with pytest.raises(strata.ConnectError, match="127.0.0.1:1"):
        strata.Client("127.0.0.1:1", timeout=2.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="carrier"):
        strata.Client("127.0.0.1:1", carrier="pigeon")
    with pytest.raises(ValueError, match="timeout"):
        strata.Client("127.0.0.1:1", timeout=0)


class DlpackOnly:
    """Memory offered through DLPack alone (as a torch tensor offers it)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_get_into_through_dlpack(client):
    k = f"obj/py/{client.carrier}/dlpack"
    v = pattern(64 << 10, 11)
    client.put(k, v)
    a = np.zeros((128, 128), dtype=np.float32)  # 64 KiB
    assert client.get_into(k, DlpackOnly(a)) == len(v)
    assert a.tobytes() == v
    # Part of a larger array, contiguous: an offset into its memory.
    big = np.zeros(100, dtype=np.uint8)
    assert client.get_into(k, DlpackOnly(big[10:30]), offset=5) == 20
    assert big[10:30].tobytes() == v[5:25] and not big[:10].any() and not big[30:].any()
    # Not contiguous: refused.
    with pytest.raises(BufferError, match="contiguous"):
        client.get_into(k, DlpackOnly(np.zeros((8, 8), dtype=np.uint8)[:, ::2]))


def test_binary_keys(client):
    body = bytes(range(256)) * 2  # not text: a KV connector's chunk key is 64 such bytes
    k = strata.encode_key("kv", "team", body)
    assert isinstance(k, bytes)
    client.put(k, b"binary-keyed")
    assert client.get(k) == b"binary-keyed"
    assert client.mget([k, strata.encode_key("kv", "team", b"\x00none")]) == [b"binary-keyed", None]
    assert client.match_prefix([k]) == 1
    assert strata.key_path(k).startswith("kv/team/")
    # A path and its encoding name the same key.
    assert client.put("obj/t/same", b"1") == 1
    assert client.get(strata.encode_key("obj", "t", b"same")) == b"1"
    with pytest.raises(strata.InvalidArgumentError):
        client.get(b"\xff not an encoded key")
    with pytest.raises(TypeError):
        client.get(42)
    with pytest.raises(TypeError):
        client.mget("kv/t/one-key-not-a-list")


def test_empty_batches_on_every_carrier(client):
    assert client.mget([]) == []
    assert client.match_prefix([]) == 0
