//! `strata._strata`, the native module of the `strata` Python package: the
//! Rust client (`strata_transport::Client`) behind a Python class, with the same
//! carrier negotiation (shared memory on the same host, TCP otherwise, gRPC when
//! the server offers no data path), deadlines and retries.
//!
//! Every call releases the GIL while it waits ([`Python::detach`]) and runs on one
//! tokio runtime shared by the process's clients. Reads into a caller's buffer
//! (`get_into`) copy straight from the server's arena (shared memory) or the
//! socket's buffer into it: one copy, no intermediate `bytes`.

use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use strata_transport::data::{Carrier, CarrierChoice, DataOptions};
use strata_transport::wire::Status as WireStatus;
use strata_transport::{Client as RustClient, ClientError, ClientOptions};
use strata_transport::{Key, proto as pb};

mod buffer;

use buffer::WritableBuffer;

pyo3::create_exception!(
    _strata,
    StrataError,
    PyException,
    "A Strata call failed; the message is the server's (or says what the client saw)."
);
pyo3::create_exception!(
    _strata,
    ConnectError,
    StrataError,
    "The server could not be reached."
);
pyo3::create_exception!(
    _strata,
    InvalidArgumentError,
    StrataError,
    "A key, range or value the server (or the client, before sending) refused."
);
pyo3::create_exception!(_strata, NotFoundError, StrataError, "The key is not there.");
pyo3::create_exception!(
    _strata,
    TooLargeError,
    StrataError,
    "A value or batch is larger than the server allows."
);
pyo3::create_exception!(
    _strata,
    BusyError,
    StrataError,
    "The server is over a budget; the client retried within its deadline and gave up."
);
pyo3::create_exception!(
    _strata,
    DeadlineExceededError,
    StrataError,
    "The call's deadline passed."
);
pyo3::create_exception!(
    _strata,
    ChecksumError,
    StrataError,
    "The bytes sent do not match their checksum."
);
pyo3::create_exception!(
    _strata,
    CorruptError,
    StrataError,
    "Stored bytes failed verification and no intact copy could be read."
);
pyo3::create_exception!(
    _strata,
    ChangedError,
    StrataError,
    "The origin's object changed while it was read; read it again."
);
pyo3::create_exception!(
    _strata,
    UnavailableError,
    StrataError,
    "The server is shutting down, or the connection to it broke."
);
pyo3::create_exception!(
    _strata,
    ProtocolError,
    StrataError,
    "The server's answer broke the protocol."
);

/// The runtime every client of the process runs on (two workers: the calls
/// mostly wait on the network or copy).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-client")
            .enable_all()
            .build()
            .expect("the client's tokio runtime starts")
    })
}

/// Runs `f` to its end on the runtime, the GIL released meanwhile.
fn block_on<F>(py: Python<'_>, f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    py.detach(|| runtime().block_on(f))
}

/// The Python exception for a client error, with its message.
fn to_py(e: ClientError) -> PyErr {
    let msg = e.to_string();
    match &e {
        ClientError::Connect { .. } => ConnectError::new_err(msg),
        ClientError::Key(_) => InvalidArgumentError::new_err(msg),
        ClientError::Protocol(_) | ClientError::Unsupported(_) => ProtocolError::new_err(msg),
        ClientError::Io(_) => UnavailableError::new_err(msg),
        ClientError::Timeout(_) => DeadlineExceededError::new_err(msg),
        ClientError::Data { status, .. } => match status {
            WireStatus::NotFound => NotFoundError::new_err(msg),
            WireStatus::Invalid | WireStatus::Range | WireStatus::UnknownId => {
                InvalidArgumentError::new_err(msg)
            }
            WireStatus::TooLarge => TooLargeError::new_err(msg),
            WireStatus::Checksum => ChecksumError::new_err(msg),
            WireStatus::Busy => BusyError::new_err(msg),
            WireStatus::Unavailable => UnavailableError::new_err(msg),
            WireStatus::DeadlineExceeded => DeadlineExceededError::new_err(msg),
            WireStatus::Corrupt => CorruptError::new_err(msg),
            WireStatus::Changed => ChangedError::new_err(msg),
            WireStatus::Ok | WireStatus::Internal => StrataError::new_err(msg),
        },
        ClientError::Status { status } => match status.code() {
            tonic::Code::NotFound => NotFoundError::new_err(msg),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                InvalidArgumentError::new_err(msg)
            }
            tonic::Code::ResourceExhausted => BusyError::new_err(msg),
            tonic::Code::DeadlineExceeded => DeadlineExceededError::new_err(msg),
            tonic::Code::Unavailable => UnavailableError::new_err(msg),
            tonic::Code::DataLoss => CorruptError::new_err(msg),
            tonic::Code::Aborted | tonic::Code::FailedPrecondition => ChangedError::new_err(msg),
            _ => StrataError::new_err(msg),
        },
        _ => StrataError::new_err(msg),
    }
}

/// A key from Python: a path (`str`, `namespace/tenant/body`) or the canonical
/// encoding (`bytes`, as [`encode_key`] makes it: a body of any bytes, as the KV
/// connectors' binary chunk keys).
fn key(obj: &Bound<'_, PyAny>) -> PyResult<Key> {
    if let Ok(s) = obj.cast::<PyString>() {
        let path = s.to_str()?;
        return Key::parse_path(path)
            .map_err(|e| InvalidArgumentError::new_err(format!("key {path:?}: {e}")));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Key::decode(b.as_bytes())
            .map_err(|e| InvalidArgumentError::new_err(format!("encoded key: {e}")));
    }
    Err(PyTypeError::new_err(format!(
        "a key is a str path or encoded bytes, not {}",
        obj.get_type().name()?
    )))
}

fn keys(objs: &Bound<'_, PyAny>) -> PyResult<Vec<Key>> {
    if obj_is_str_or_bytes(objs) {
        return Err(PyTypeError::new_err(
            "keys must be a sequence of keys, not one key",
        ));
    }
    objs.try_iter()?.map(|k| key(&k?)).collect()
}

fn obj_is_str_or_bytes(o: &Bound<'_, PyAny>) -> bool {
    o.is_instance_of::<PyString>() || o.is_instance_of::<PyBytes>()
}

/// The canonical encoding of the key `namespace/tenant/body` (`body` any bytes):
/// what every method takes as a key besides a path, and the keys the KV
/// connectors derive (`docs/kv-keys.md`).
#[pyfunction]
fn encode_key<'py>(
    py: Python<'py>,
    namespace: &str,
    tenant: &str,
    body: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let k = Key::new(namespace, tenant, body)
        .map_err(|e| InvalidArgumentError::new_err(format!("key: {e}")))?;
    Ok(PyBytes::new(py, k.as_bytes()))
}

/// The path form of a key (`str` or encoded `bytes`): `namespace/tenant/body`,
/// the body percent-escaped where it is not printable.
#[pyfunction]
fn key_path(key: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(self::key(key)?.display_path())
}

/// A client of one Strata server (or cluster, through one of its members).
///
/// `Client(addr, *, carrier="auto", timeout=30.0, connections=4)`: `addr` is
/// the server's gRPC address (`host:port`); `carrier` picks how values move:
/// `"auto"` (shared memory on the same host, TCP otherwise), `"shm"`, `"tcp"`,
/// `"rdma"` (where built), or `"grpc"` (no data path). `timeout` is each call's
/// deadline in seconds, sent to the server; `connections` the data-path
/// connections kept. Keys are paths, `namespace/tenant/body` (`kv/team/block-0`).
/// Safe to share between threads; every call releases the GIL while it waits.
#[pyclass(frozen, module = "strata._strata")]
struct Client {
    inner: RustClient,
    addr: String,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (addr, *, carrier = "auto", timeout = 30.0, connections = 4))]
    fn new(
        py: Python<'_>,
        addr: &str,
        carrier: &str,
        timeout: f64,
        connections: usize,
    ) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(PyValueError::new_err(format!(
                "timeout must be a positive number of seconds, not {timeout}"
            )));
        }
        let timeout = Duration::from_secs_f64(timeout);
        let (data_path, choice) = match carrier {
            "auto" => (true, CarrierChoice::Auto),
            "shm" => (true, CarrierChoice::Shm),
            "tcp" => (true, CarrierChoice::Tcp),
            "rdma" => (true, CarrierChoice::Rdma),
            "grpc" => (false, CarrierChoice::Auto),
            other => {
                return Err(PyValueError::new_err(format!(
                    "carrier must be one of auto, shm, tcp, rdma, grpc; not {other:?}"
                )));
            }
        };
        let options = ClientOptions {
            timeout,
            data_path,
            data: DataOptions {
                carrier: choice,
                connections: connections.max(1),
                timeout,
                ..DataOptions::default()
            },
            ..ClientOptions::default()
        };
        let addr = addr.to_owned();
        let inner = block_on(py, RustClient::connect(&addr, options)).map_err(to_py)?;
        Ok(Self { inner, addr })
    }

    /// How values move: `"shm"`, `"tcp"`, `"rdma"`, or `"grpc"`.
    #[getter]
    fn carrier(&self) -> &'static str {
        match self.inner.carrier() {
            Some(Carrier::Shm) => "shm",
            Some(Carrier::Tcp) => "tcp",
            Some(Carrier::Rdma) => "rdma",
            None => "grpc",
        }
    }

    /// The server's address, as given.
    #[getter]
    fn addr(&self) -> &str {
        &self.addr
    }

    fn __repr__(&self) -> String {
        format!("Client({:?}, carrier={:?})", self.addr, self.carrier())
    }

    /// The whole value of `key`, or `None` if it is absent.
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let k = self::key(key)?;
        let got = block_on(py, self.inner.get(&k)).map_err(to_py)?;
        Ok(got.map(|b| PyBytes::new(py, &b)))
    }

    /// `length` bytes of `key`'s value from `offset` (to its end when `length`
    /// is `None`), or `None` if the key is absent. A range past the end raises
    /// `InvalidArgumentError`.
    #[pyo3(signature = (key, offset, length = None))]
    fn get_range<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let k = self::key(key)?;
        let got = block_on(py, self.inner.get_range(&k, offset, length)).map_err(to_py)?;
        Ok(got.map(|(_, b)| PyBytes::new(py, &b)))
    }

    /// Reads `key`'s value, from `offset`, into `buffer`: any writable,
    /// C-contiguous object with the buffer protocol (a `bytearray`, a
    /// `memoryview`, a NumPy array, a CPU torch tensor's `.numpy()`), or a CPU
    /// tensor through DLPack. Reads at most `len(buffer)` bytes (in bytes, whatever
    /// the element type), copied once, straight from the server's arena over
    /// shared memory. Returns the bytes written (fewer at the value's end), or
    /// `None` if the key is absent. The buffer is held (it cannot be resized)
    /// until the call returns; no registration is needed.
    #[pyo3(signature = (key, buffer, offset = 0))]
    fn get_into(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyAny>,
        offset: u64,
    ) -> PyResult<Option<u64>> {
        let k = self::key(key)?;
        let mut dst = WritableBuffer::get(buffer)?;
        let len = dst.len() as u64;
        // The destination, for the closure run by the read (while the GIL is
        // released): `dst` outlives the call and nothing else writes it.
        let target = dst.target();
        let inner = &self.inner;
        let got = block_on(py, async move {
            inner
                .get_range_with(&k, offset, Some(len), move |_total, reader| {
                    let n = reader.remaining() as usize;
                    // SAFETY: `target` is the buffer held in `dst` for this call,
                    // `n <= len` (the range asked for at most `len` bytes).
                    let out = unsafe { target.slice(n) };
                    reader.read_exact(out).map(|()| n as u64)
                })
                .await
        });
        drop(dst);
        match got.map_err(to_py)? {
            None => Ok(None),
            Some(Ok(n)) => Ok(Some(n)),
            Some(Err(e)) => Err(UnavailableError::new_err(format!(
                "reading the value into the buffer: {e}"
            ))),
        }
    }

    /// The values of `keys`, in order: `bytes`, or `None` for an absent key.
    fn mget<'py>(&self, py: Python<'py>, keys: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let ks = self::keys(keys)?;
        let got = block_on(py, self.inner.mget(&ks)).map_err(to_py)?;
        PyList::new(py, got.into_iter().map(|v| v.map(|b| PyBytes::new(py, &b))))
    }

    /// Stores `value` (any bytes-like object) under `key`; returns its length.
    /// The write is whole or not at all: readers see the old value or the new.
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let k = self::key(key)?;
        let bytes = buffer::read_only_bytes(value)?;
        let r = block_on(py, self.inner.put(&k, bytes)).map_err(to_py)?;
        Ok(r.length)
    }

    /// Deletes `key` from the cache tiers; `True` if it was there.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = self::key(key)?;
        block_on(py, self.inner.delete(&k)).map_err(to_py)
    }

    /// Whether the cache holds `key` (without reading it, and without filling
    /// it from the origin).
    fn contains(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = self::key(key)?;
        let got = block_on(py, self.inner.contains(std::slice::from_ref(&k))).map_err(to_py)?;
        Ok(got.first().copied().unwrap_or(false))
    }

    /// How many of `keys`, from the first, the cache holds: the length of the
    /// cached prefix (a KV connector's prompt-prefix lookup).
    fn match_prefix(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u32> {
        let ks = self::keys(keys)?;
        block_on(py, self.inner.match_prefix(&ks)).map_err(to_py)
    }

    /// The server's statistics: `{"version", "uptime_secs", "tiers": [{"tier",
    /// "capacity_bytes", "used_bytes", "total": {...}, "namespaces": {ns:
    /// {...}}}]}`, counters as in `strata stats`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = block_on(py, self.inner.stats()).map_err(to_py)?;
        stats_dict(py, &s)
    }
}

fn counters_dict<'py>(py: Python<'py>, c: &pb::Counters) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("entries", c.entries)?;
    d.set_item("bytes", c.bytes)?;
    d.set_item("hits", c.hits)?;
    d.set_item("misses", c.misses)?;
    d.set_item("evictions", c.evictions)?;
    d.set_item("demotions", c.demotions)?;
    d.set_item("origin_reads", c.origin_reads)?;
    d.set_item("dropped_writes", c.dropped_writes)?;
    d.set_item("checksum_failures", c.checksum_failures)?;
    d.set_item("bypasses", c.bypasses)?;
    Ok(d)
}

fn stats_dict<'py>(py: Python<'py>, s: &pb::StatsResponse) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", &s.version)?;
    d.set_item("uptime_secs", s.uptime_secs)?;
    let tiers = PyList::empty(py);
    for t in &s.tiers {
        let td = PyDict::new(py);
        td.set_item("tier", &t.tier)?;
        td.set_item("capacity_bytes", t.capacity_bytes)?;
        td.set_item("used_bytes", t.used_bytes)?;
        td.set_item("total", counters_dict(py, &t.total.unwrap_or_default())?)?;
        let ns = PyDict::new(py);
        let mut names: Vec<_> = t.namespaces.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, c) in names {
            ns.set_item(name, counters_dict(py, c)?)?;
        }
        td.set_item("namespaces", ns)?;
        tiers.append(td)?;
    }
    d.set_item("tiers", tiers)?;
    Ok(d)
}

/// The module: the client class and its exceptions.
#[pymodule]
fn _strata(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Client>()?;
    m.add_function(wrap_pyfunction!(encode_key, m)?)?;
    m.add_function(wrap_pyfunction!(key_path, m)?)?;
    for (name, ty) in [
        ("StrataError", py.get_type::<StrataError>()),
        ("ConnectError", py.get_type::<ConnectError>()),
        (
            "InvalidArgumentError",
            py.get_type::<InvalidArgumentError>(),
        ),
        ("NotFoundError", py.get_type::<NotFoundError>()),
        ("TooLargeError", py.get_type::<TooLargeError>()),
        ("BusyError", py.get_type::<BusyError>()),
        (
            "DeadlineExceededError",
            py.get_type::<DeadlineExceededError>(),
        ),
        ("ChecksumError", py.get_type::<ChecksumError>()),
        ("CorruptError", py.get_type::<CorruptError>()),
        ("ChangedError", py.get_type::<ChangedError>()),
        ("UnavailableError", py.get_type::<UnavailableError>()),
        ("ProtocolError", py.get_type::<ProtocolError>()),
    ] {
        m.add(name, ty)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
