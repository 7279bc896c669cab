//! Whole-table reads and writes of a `u32 -> u32` BPF array in a few system calls
//! (`BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_UPDATE_BATCH`, Linux 5.6+) instead of one per slot: a
//! 65,537-slot Maglev table is one call instead of 65,537, which is what keeps a reload, a
//! health change or an agent's adoption of pinned maps from holding the agent's single thread
//! for a noticeable time. aya 0.14 has no batch operations, so this is the raw `bpf(2)` call.
//! `Ok(false)` means the kernel does not know the command; the caller then goes element by
//! element.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for the batch commands, its pointers point at
    // buffers of `count` elements that outlive the call, and the size passed is its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The kernel predates the batch commands (or the map type has none).
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP))
}

/// Writes `values[i]` at index `keys[i]`.
pub fn update(fd: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<bool> {
    assert_eq!(keys.len(), values.len());
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(()) => {}
            Err(e) if done == 0 && attr.count == 0 && unsupported(&e) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        // On success and on EINTR the kernel reports how many it wrote.
        done += attr.count as usize;
    }
    Ok(true)
}

/// Reads `count` consecutive entries starting at index `first`.
pub fn lookup(fd: BorrowedFd<'_>, first: u32, count: u32) -> io::Result<Option<Vec<u32>>> {
    let mut keys = vec![0u32; count as usize];
    let mut values = vec![0u32; count as usize];
    let mut done = 0usize;
    // The batch resumes after `in_batch` (the previous index); null starts at index 0.
    let mut prev: u32 = first.wrapping_sub(1);
    let mut next: u32 = 0;
    while done < count as usize {
        let mut attr = BatchAttr {
            in_batch: if done == 0 && first == 0 {
                0
            } else {
                &prev as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys[done..].as_mut_ptr() as u64,
            values: values[done..].as_mut_ptr() as u64,
            count: count - done as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        match r {
            Ok(()) => {}
            Err(e) if done == 0 && got == 0 && unsupported(&e) => return Ok(None),
            // ENOENT: the end of the map was reached; what was read is valid.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && got > 0 => {}
            Err(e) => return Err(e),
        }
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the map ended at index {}", first as usize + done),
            ));
        }
        done += got;
        prev = next;
    }
    for (i, k) in keys.iter().enumerate() {
        if *k != first + i as u32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "batch read returned index {k} where {} was expected",
                    first + i as u32
                ),
            ));
        }
    }
    Ok(Some(values))
}
