//! Writing frames: every byte of several buffers with vectored writes (both sides
//! of the data path send a header, metadata and a value's slices this way).

use std::io::IoSlice;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes every byte of `parts`, in order, with as few syscalls as the kernel allows.
pub async fn write_all_vectored<S: AsyncWrite + Unpin>(
    stream: &mut S,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    write_all_vectored_within(stream, parts, None).await
}

/// As [`write_all_vectored`], failing with `TimedOut` when one write makes no
/// progress for `stall`.
pub async fn write_all_vectored_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    parts: &[&[u8]],
    stall: Option<Duration>,
) -> std::io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    loop {
        // Skip what is written (and empty parts).
        while i < parts.len() && off == parts[i].len() {
            i += 1;
            off = 0;
        }
        if i == parts.len() {
            break;
        }
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[i][off..]))
            .chain(
                parts[i + 1..]
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| IoSlice::new(p)),
            )
            .take(64)
            .collect();
        let write = stream.write_vectored(&slices);
        let mut n = match stall {
            Some(d) => tokio::time::timeout(d, write).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the peer took no bytes of an answer for {d:?}"),
                )
            })??,
            None => write.await?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = parts[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
                while i < parts.len() && parts[i].is_empty() {
                    i += 1;
                }
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}
