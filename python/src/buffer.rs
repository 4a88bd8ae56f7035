//! Caller memory for reads and writes: any writable, C-contiguous object with
//! the buffer protocol, or a CPU tensor through DLPack, held for the call; and
//! a value to put, without a copy when it is `bytes`.

use std::ffi::{CStr, c_void};
use std::ptr::NonNull;

use bytes::Bytes;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Memory a read writes into, held (and so neither freed nor resized) until
/// this is dropped.
pub(crate) struct WritableBuffer {
    ptr: NonNull<u8>,
    len: usize,
    /// What keeps the memory: a buffer view to release, or a DLPack capsule
    /// (whose producer frees what it lent when the capsule goes).
    hold: Hold,
}

enum Hold {
    View(Box<ffi::Py_buffer>),
    Capsule(#[expect(dead_code, reason = "held, not read: it keeps the tensor lent")] Py<PyAny>),
    Empty,
}

/// Where a read writes, for a closure that runs without the GIL.
#[derive(Clone, Copy)]
pub(crate) struct Target {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is held by its `WritableBuffer` for the whole call, and the
// one read of the call is its only writer.
unsafe impl Send for Target {}

impl Target {
    /// The first `n` bytes.
    ///
    /// # Safety
    /// The `WritableBuffer` this came from is alive, and nothing else uses its
    /// memory while the slice lives.
    pub(crate) unsafe fn slice<'a>(self, n: usize) -> &'a mut [u8] {
        assert!(n <= self.len, "a read of {n} bytes into {}", self.len);
        // SAFETY: `n <= len` bytes of memory the caller keeps alive and unshared.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), n) }
    }
}

/// DLPack's device type of host memory (`kDLCPU`).
const DL_CPU: i32 = 1;

#[repr(C)]
struct DlDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DlDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DlTensor {
    data: *mut c_void,
    device: DlDevice,
    ndim: i32,
    dtype: DlDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

impl WritableBuffer {
    /// Holds `obj`'s memory: through the buffer protocol (writable and
    /// C-contiguous), else through `__dlpack__` (a CPU tensor, contiguous).
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        // SAFETY: `Py_buffer` is plain data, filled by `PyObject_GetBuffer`.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: a live object and an out-pointer to a zeroed view; the GIL is held.
        let rc = unsafe {
            ffi::PyObject_GetBuffer(
                obj.as_ptr(),
                &mut *view,
                ffi::PyBUF_WRITABLE | ffi::PyBUF_C_CONTIGUOUS,
            )
        };
        if rc == 0 {
            let len = usize::try_from(view.len).unwrap_or(0);
            let Some(ptr) = NonNull::new(view.buf.cast::<u8>()) else {
                // SAFETY: the view just filled.
                unsafe { ffi::PyBuffer_Release(&mut *view) };
                return Ok(Self::empty());
            };
            return Ok(Self {
                ptr,
                len,
                hold: Hold::View(view),
            });
        }
        let buffer_error = PyErr::fetch(obj.py());
        if !obj.hasattr("__dlpack__")? {
            return Err(PyTypeError::new_err(format!(
                "get_into needs a writable, C-contiguous buffer (bytearray, memoryview, numpy \
                 array) or a CPU tensor with __dlpack__; {} gives neither: {buffer_error}",
                obj.get_type().name()?
            )));
        }
        Self::from_dlpack(obj)
    }

    fn empty() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
            hold: Hold::Empty,
        }
    }

    fn from_dlpack(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let capsule = obj.call_method0("__dlpack__")?;
        const NAME: &CStr = c"dltensor";
        // SAFETY: a live object; `PyCapsule_GetPointer` checks it is a capsule of
        // that name and sets an error if not.
        let managed = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), NAME.as_ptr()) };
        if managed.is_null() {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: a "dltensor" capsule holds a DLManagedTensor, whose first field
        // is the DLTensor; it stays valid while the capsule lives (held below).
        let t = unsafe { &*managed.cast::<DlTensor>() };
        if t.device.device_type != DL_CPU {
            return Err(PyBufferError::new_err(format!(
                "get_into writes host memory; this tensor is on DLPack device type {} (copy \
                 it to the CPU, or read into a host buffer and copy it over)",
                t.device.device_type
            )));
        }
        let ndim = usize::try_from(t.ndim).unwrap_or(0);
        // SAFETY: `shape` (and `strides`, when not null) hold `ndim` entries.
        let shape = unsafe { slice_or_empty(t.shape, ndim) };
        let elem = usize::from(t.dtype.bits) * usize::from(t.dtype.lanes);
        if elem % 8 != 0 {
            return Err(PyBufferError::new_err(format!(
                "get_into needs whole-byte elements; this tensor's are {elem} bits"
            )));
        }
        let mut count: usize = 1;
        for &d in shape {
            count = count.saturating_mul(usize::try_from(d).unwrap_or(0));
        }
        if !t.strides.is_null() {
            // SAFETY: as above.
            let strides = unsafe { slice_or_empty(t.strides, ndim) };
            let mut want = 1i64;
            for (&d, &s) in shape.iter().zip(strides).rev() {
                if d > 1 && s != want {
                    return Err(PyBufferError::new_err(
                        "get_into needs a contiguous tensor (call .contiguous() first)",
                    ));
                }
                want = want.saturating_mul(d);
            }
        }
        let len = count.saturating_mul(elem / 8);
        // SAFETY: the tensor's memory starts `byte_offset` bytes into `data`.
        let start = unsafe { t.data.cast::<u8>().add(t.byte_offset as usize) };
        let Some(ptr) = NonNull::new(start).filter(|_| len > 0) else {
            return Ok(Self::empty());
        };
        Ok(Self {
            ptr,
            len,
            hold: Hold::Capsule(capsule.unbind()),
        })
    }

    /// Bytes it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Where a read may write, for as long as this lives.
    pub(crate) fn target(&mut self) -> Target {
        Target {
            ptr: self.ptr,
            len: self.len,
        }
    }
}

impl Drop for WritableBuffer {
    fn drop(&mut self) {
        if let Hold::View(view) = &mut self.hold {
            // Dropped where the GIL is held (the methods drop it before they
            // return to Python).
            // SAFETY: the view filled by `PyObject_GetBuffer`, released once.
            unsafe { ffi::PyBuffer_Release(&mut **view) };
        }
    }
}

/// `n` entries at `p`, or none when `p` is null.
///
/// # Safety
/// A non-null `p` points at `n` readable entries that outlive the slice.
unsafe fn slice_or_empty<'a, T>(p: *const T, n: usize) -> &'a [T] {
    if p.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(p, n) }
    }
}

/// `bytes` shared without a copy (kept alive, immutable, until the put is done);
/// any other bytes-like object copied (it may change under the put).
pub(crate) fn read_only_bytes(value: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(Bytes::from_owner(PyBytesOwner::new(b)));
    }
    // SAFETY: `Py_buffer` is plain data, filled by `PyObject_GetBuffer`.
    let mut view: ffi::Py_buffer = unsafe { std::mem::zeroed() };
    // SAFETY: a live object and an out-pointer to a zeroed view; the GIL is held.
    let rc = unsafe { ffi::PyObject_GetBuffer(value.as_ptr(), &mut view, ffi::PyBUF_C_CONTIGUOUS) };
    if rc != 0 {
        let e = PyErr::fetch(value.py());
        return Err(PyTypeError::new_err(format!(
            "put needs a bytes-like, C-contiguous value; {} is not: {e}",
            value.get_type().name()?
        )));
    }
    let len = usize::try_from(view.len).unwrap_or(0);
    let copy = if view.buf.is_null() || len == 0 {
        Bytes::new()
    } else {
        // SAFETY: the view's `len` readable bytes, held until released below.
        Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(view.buf.cast::<u8>(), len) })
    };
    // SAFETY: the view filled above, released once.
    unsafe { ffi::PyBuffer_Release(&mut view) };
    Ok(copy)
}

/// A `bytes` object lent to a put: immutable, so its memory can be sent as it
/// is; the reference is let go (when the GIL is next held) once the put is done.
struct PyBytesOwner {
    ptr: *const u8,
    len: usize,
    _obj: Py<PyBytes>,
}

// SAFETY: `bytes` objects never change, and the memory lives as long as `_obj`,
// a reference that may be sent between threads.
unsafe impl Send for PyBytesOwner {}
// SAFETY: as above: read-only memory.
unsafe impl Sync for PyBytesOwner {}

impl PyBytesOwner {
    fn new(b: &Bound<'_, PyBytes>) -> Self {
        let s = b.as_bytes();
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
            _obj: b.clone().unbind(),
        }
    }
}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the object's bytes, alive and unchanged while `_obj` is held.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
