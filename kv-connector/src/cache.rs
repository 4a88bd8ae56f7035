//! The engine's paged KV caches and the host-side gathers and scatters between
//! them and the stored chunk layout.
//!
//! A layer's cache is a candle tensor, `(2, num_blocks, block_size, num_kv_heads,
//! head_size)` (MHA) or `(num_blocks, block_size, head_size)` (MLA). Viewed as
//! bytes it is `(kv, num_blocks, row)` with `row = block_size · heads · head_size ·
//! elem_size`; a stored layer is `(kv, blocks_per_chunk, row)`, so a block's K (and
//! V) is one contiguous run on both sides and a gather or scatter is `kv ·
//! blocks` row copies, indexed with ndarray.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Tensor};
use ndarray::{ArrayView3, ArrayViewMut3, Axis};
use strata_transport::data::ValueReader;

use crate::error::{Error, Result};
use crate::keys::{KvLayout, ModelFingerprint};

/// The geometry every registered layer shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheGeometry {
    /// MHA or MLA.
    pub layout: KvLayout,
    /// 2 (K, V) or 1 (MLA).
    pub kv: usize,
    /// Blocks in each layer's cache.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Bytes of one block's K (or V) in one layer.
    pub row_bytes: usize,
    /// The dtype.
    pub dtype: DType,
}

impl CacheGeometry {
    /// Checks one layer's tensor against the fingerprint and returns its geometry.
    pub fn of(t: &Tensor, fp: &ModelFingerprint) -> Result<Self> {
        if !t.is_contiguous() {
            return Err(Error::Layout("a KV cache tensor must be contiguous".into()));
        }
        let dims = t.dims();
        let (kv, num_blocks, block_size, heads, head) = match (fp.layout, dims) {
            (KvLayout::Mha, &[2, nb, bs, h, d]) => (2, nb, bs, h, d),
            (KvLayout::Mla, &[nb, bs, d]) => (1, nb, bs, 1, d),
            (l, d) => {
                return Err(Error::Layout(format!(
                    "shape {d:?} is not the {} layout {}",
                    l.as_str(),
                    match l {
                        KvLayout::Mha => "(2, num_blocks, block_size, num_kv_heads, head_size)",
                        KvLayout::Mla => "(num_blocks, block_size, head_size)",
                    }
                )));
            }
        };
        if heads != fp.num_kv_heads as usize || head != fp.head_size as usize {
            return Err(Error::Layout(format!(
                "{heads} heads of size {head}, but the fingerprint says {} of size {}",
                fp.num_kv_heads, fp.head_size
            )));
        }
        if dtype_name(t.dtype()) != fp.dtype {
            return Err(Error::Layout(format!(
                "dtype {:?}, but the fingerprint says {}",
                t.dtype(),
                fp.dtype
            )));
        }
        Ok(Self {
            layout: fp.layout,
            kv,
            num_blocks,
            block_size,
            row_bytes: block_size * heads * head * t.dtype().size_in_bytes(),
            dtype: t.dtype(),
        })
    }
}

/// The name of a dtype in a fingerprint.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::U8 => "u8",
        _ => "other",
    }
}

/// The bytes of a CPU storage.
fn bytes_of(s: &CpuStorage) -> Result<&[u8]> {
    fn cast<T>(v: &[T]) -> &[u8] {
        // SAFETY: plain numeric element types, no padding; u8 has alignment 1.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
    }
    Ok(match s {
        CpuStorage::BF16(v) => cast(v),
        CpuStorage::F16(v) => cast(v),
        CpuStorage::F32(v) => cast(v),
        CpuStorage::F64(v) => cast(v),
        CpuStorage::U8(v) => v,
        other => {
            return Err(Error::Layout(format!(
                "unsupported dtype {:?}",
                other.dtype()
            )));
        }
    })
}

fn bytes_of_mut(s: &mut CpuStorage) -> Result<&mut [u8]> {
    fn cast<T>(v: &mut [T]) -> &mut [u8] {
        // SAFETY: as in `bytes_of`; every byte pattern is a valid value of these types.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
    }
    Ok(match s {
        CpuStorage::BF16(v) => cast(v),
        CpuStorage::F16(v) => cast(v),
        CpuStorage::F32(v) => cast(v),
        CpuStorage::F64(v) => cast(v),
        CpuStorage::U8(v) => v,
        other => {
            return Err(Error::Layout(format!(
                "unsupported dtype {:?}",
                other.dtype()
            )));
        }
    })
}

fn check_blocks(g: &CacheGeometry, blocks: &[u32]) -> Result<()> {
    match blocks.iter().find(|&&b| b as usize >= g.num_blocks) {
        Some(b) => Err(Error::Layout(format!(
            "block {b} is out of range (num_blocks {})",
            g.num_blocks
        ))),
        None => Ok(()),
    }
}

/// Copies `blocks` of one layer's cache into `out`, laid out `(kv, blocks.len(),
/// row)`. `out.len()` must be `kv · blocks.len() · row`.
pub fn gather(t: &Tensor, g: &CacheGeometry, blocks: &[u32], out: &mut [u8]) -> Result<()> {
    check_blocks(g, blocks)?;
    let (storage, layout) = t.storage_and_layout();
    let src = match &*storage {
        candle_core::Storage::Cpu(s) => bytes_of(s)?,
        _ => {
            return Err(Error::Layout(
                "gather from a non-CPU tensor needs feature `gpu`".into(),
            ));
        }
    };
    let start = layout.start_offset() * g.dtype.size_in_bytes();
    let len = g.kv * g.num_blocks * g.row_bytes;
    let src = ArrayView3::from_shape((g.kv, g.num_blocks, g.row_bytes), &src[start..start + len])
        .map_err(|e| Error::Layout(e.to_string()))?;
    let dst = ArrayViewMut3::from_shape((g.kv, blocks.len(), g.row_bytes), out)
        .map_err(|e| Error::Layout(format!("gather buffer: {e}")))?;
    copy_rows(
        dst,
        src,
        blocks.iter().enumerate().map(|(i, &b)| (i, b as usize)),
    );
    Ok(())
}

/// Reads one stored layer, laid out `(kv, src_blocks, row)`, from `src` in order,
/// copies stored blocks `first .. first + blocks.len()` into the cache's `blocks` and
/// returns the CRC-32C of the whole layer. Each row is summed in the same pass
/// that copies it, from the words as they are stored
/// ([`ValueReader::read_exact_crc32c`]): the bytes are read once, and what is
/// checked is what was placed, not the source, which for a leased arena could
/// change under a broken lease. Rows not loaded pass through a scratch row.
pub fn scatter_from(
    t: &Tensor,
    g: &CacheGeometry,
    src: &mut ValueReader<'_>,
    src_blocks: usize,
    first: usize,
    blocks: &[u32],
) -> Result<u32> {
    check_blocks(g, blocks)?;
    let len = (g.kv * src_blocks * g.row_bytes) as u64;
    if first + blocks.len() > src_blocks || src.remaining() < len {
        return Err(Error::Layout(format!(
            "scatter of {} blocks from {first} out of a {src_blocks}-block source with {} bytes left",
            blocks.len(),
            src.remaining()
        )));
    }
    let op = ScatterFrom {
        g,
        src: std::cell::RefCell::new(src),
        src_blocks,
        first,
        blocks,
        crc: std::cell::Cell::new(0),
    };
    t.inplace_op1(&op)?;
    Ok(op.crc.get())
}

/// For each `(to, from)`, copies row `from` of `src` to row `to` of `dst`, in every
/// `kv` plane. Both are `(kv, blocks, row_bytes)` with contiguous rows.
fn copy_rows(
    mut dst: ArrayViewMut3<'_, u8>,
    src: ArrayView3<'_, u8>,
    pairs: impl Iterator<Item = (usize, usize)> + Clone,
) {
    for (mut d, s) in dst.axis_iter_mut(Axis(0)).zip(src.axis_iter(Axis(0))) {
        for (to, from) in pairs.clone() {
            let row = s.index_axis(Axis(0), from);
            d.index_axis_mut(Axis(0), to)
                .as_slice_mut()
                .expect("rows are contiguous")
                .copy_from_slice(row.as_slice().expect("rows are contiguous"));
        }
    }
}

struct ScatterFrom<'a, 'r, 's> {
    g: &'a CacheGeometry,
    src: std::cell::RefCell<&'r mut ValueReader<'s>>,
    src_blocks: usize,
    first: usize,
    blocks: &'a [u32],
    crc: std::cell::Cell<u32>,
}

impl candle_core::InplaceOp1 for ScatterFrom<'_, '_, '_> {
    fn name(&self) -> &'static str {
        "strata-kv-scatter-from"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let g = self.g;
        let dst = bytes_of_mut(storage).map_err(candle_core::Error::wrap)?;
        let start = layout.start_offset() * g.dtype.size_in_bytes();
        let len = g.kv * g.num_blocks * g.row_bytes;
        let mut dst = ArrayViewMut3::from_shape(
            (g.kv, g.num_blocks, g.row_bytes),
            &mut dst[start..start + len],
        )
        .map_err(candle_core::Error::wrap)?;
        let mut src = self.src.borrow_mut();
        let mut scratch = Vec::new();
        let mut crc = 0u32;
        for mut plane in dst.axis_iter_mut(Axis(0)) {
            for j in 0..self.src_blocks {
                let row: &mut [u8] =
                    match j.checked_sub(self.first).and_then(|i| self.blocks.get(i)) {
                        Some(&b) => plane
                            .index_axis_mut(Axis(0), b as usize)
                            .into_slice()
                            .expect("rows are contiguous"),
                        None => {
                            scratch.resize(g.row_bytes, 0);
                            &mut scratch
                        }
                    };
                crc = src
                    .read_exact_crc32c(row, crc)
                    .map_err(candle_core::Error::wrap)?;
            }
        }
        self.crc.set(crc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn fp(layout: KvLayout) -> ModelFingerprint {
        ModelFingerprint {
            model_id: "t".into(),
            revision: "r".into(),
            dtype: "f32".into(),
            layout,
            num_layers: 1,
            num_kv_heads: if layout == KvLayout::Mha { 2 } else { 1 },
            head_size: 3,
            tp_rank: 0,
            tp_size: 1,
            lora_id: None,
            tenant: String::new(),
            cache_salt: None,
        }
    }

    #[test]
    fn gather_then_scatter_moves_blocks() {
        let n = 2 * 5 * 4 * 2 * 3;
        let t = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape((2, 5, 4, 2, 3))
            .unwrap();
        let g = CacheGeometry::of(&t, &fp(KvLayout::Mha)).unwrap();
        assert_eq!(g.row_bytes, 4 * 2 * 3 * 4);
        let mut buf = vec![0u8; 2 * 2 * g.row_bytes];
        gather(&t, &g, &[3, 1], &mut buf).unwrap();
        let dst = Tensor::zeros((2, 5, 4, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let crc = scatter_from(&dst, &g, &mut ValueReader::new(&buf), 2, 0, &[0, 4]).unwrap();
        assert_eq!(crc, crc32c::crc32c(&buf), "the whole layer is summed");
        // Block `b` of the K (kv = 0) or V (kv = 1) half, flattened.
        let block = |x: &Tensor, kv: usize, b: usize| {
            x.get(kv)
                .unwrap()
                .get(b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        for kv in 0..2 {
            assert_eq!(block(&t, kv, 3), block(&dst, kv, 0));
            assert_eq!(block(&t, kv, 1), block(&dst, kv, 4));
            assert!(block(&dst, kv, 2).iter().all(|&x| x == 0.0));
        }
        // A partial scatter: the second stored block only.
        let dst2 = Tensor::zeros((2, 5, 4, 2, 3), DType::F32, &Device::Cpu).unwrap();
        // A partial scatter sums the rows it skips as well.
        let crc = scatter_from(&dst2, &g, &mut ValueReader::new(&buf), 2, 1, &[2]).unwrap();
        assert_eq!(crc, crc32c::crc32c(&buf));
        assert_eq!(block(&dst2, 0, 2), block(&t, 0, 1));
    }

    #[test]
    fn mla_and_refusals() {
        let t = Tensor::zeros((6, 4, 3), DType::F32, &Device::Cpu).unwrap();
        let g = CacheGeometry::of(&t, &fp(KvLayout::Mla)).unwrap();
        assert_eq!((g.kv, g.num_blocks), (1, 6));
        let e = CacheGeometry::of(&t, &fp(KvLayout::Mha))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the mha layout"), "{e}");
        let mut buf = vec![0u8; g.row_bytes];
        let e = gather(&t, &g, &[6], &mut buf).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = scatter_from(&t, &g, &mut ValueReader::new(&buf), 1, 1, &[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("scatter of 1 blocks"), "{e}");
        let e = scatter_from(&t, &g, &mut ValueReader::new(&buf[1..]), 1, 0, &[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bytes left"), "a short source is refused: {e}");
        let bf = Tensor::zeros((6, 4, 3), DType::BF16, &Device::Cpu).unwrap();
        let e = CacheGeometry::of(&bf, &fp(KvLayout::Mla))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtype"), "{e}");
    }
}
