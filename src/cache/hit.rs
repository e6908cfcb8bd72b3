//! The cache hit write: the stored head, a few per-response lines (`Age`,
//! `Cache-Status`, `Connection`) and the stored body go out in one vectored
//! write, without copying the body and without allocating per request (the
//! buffer and its iovecs belong to the connection and are reused).

use bytes::Bytes;
use monoio::buf::IoVecBuf;

struct Parts {
    head: Bytes,
    suffix: Vec<u8>,
    body: Bytes,
    iov: [libc::iovec; 3],
    count: usize,
}

/// A reusable three-part write buffer (head, per-response suffix, body).
pub struct HitBuf(Box<Parts>);

impl Default for HitBuf {
    fn default() -> Self {
        HitBuf(Box::new(Parts {
            head: Bytes::new(),
            suffix: Vec::with_capacity(128),
            body: Bytes::new(),
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 3],
            count: 0,
        }))
    }
}

impl HitBuf {
    /// The per-response lines, to be filled in after [`HitBuf::set`].
    pub fn suffix(&mut self) -> &mut Vec<u8> {
        &mut self.0.suffix
    }

    /// Starts a new write of `head`, the suffix (cleared here) and `body`.
    pub fn set(&mut self, head: Bytes, body: Bytes) {
        self.0.head = head;
        self.0.body = body;
        self.0.suffix.clear();
        self.0.count = 0;
    }

    /// Points the iovecs at the parts; call once the suffix is written.
    pub fn prepare(&mut self) {
        let parts = &mut *self.0;
        let slices: [&[u8]; 3] = [&parts.head, &parts.suffix, &parts.body];
        let mut count = 0;
        for slice in slices {
            if !slice.is_empty() {
                parts.iov[count] = libc::iovec {
                    iov_base: slice.as_ptr() as *mut libc::c_void,
                    iov_len: slice.len(),
                };
                count += 1;
            }
        }
        parts.count = count;
    }

    /// The three parts, in write order (for a TLS session, which encrypts
    /// them instead of handing iovecs to the kernel).
    pub fn parts(&self) -> [&[u8]; 3] {
        [&self.0.head, &self.0.suffix, &self.0.body]
    }

    /// The body part (a reference to the stored body, not a copy).
    pub fn body(&self) -> Bytes {
        self.0.body.clone()
    }

    /// Bytes still to write.
    pub fn remaining(&self) -> usize {
        self.0.iov[..self.0.count].iter().map(|v| v.iov_len).sum()
    }

    /// Advances past `n` written bytes; true when everything was written.
    pub fn consume(&mut self, mut n: usize) -> bool {
        let parts = &mut *self.0;
        let mut first = 0;
        while first < parts.count && n >= parts.iov[first].iov_len {
            n -= parts.iov[first].iov_len;
            first += 1;
        }
        if first < parts.count {
            let v = &mut parts.iov[first];
            // SAFETY: n < iov_len, so the new base stays inside the same slice.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
            v.iov_len -= n;
        }
        parts.iov.copy_within(first..parts.count, 0);
        parts.count -= first;
        parts.count == 0
    }

    /// Drops the references to the stored response.
    pub fn release(&mut self) {
        self.0.head = Bytes::new();
        self.0.body = Bytes::new();
        self.0.count = 0;
    }
}

// SAFETY: the iovecs live in a heap allocation that does not move while the
// runtime owns the buffer, and they point into `head`, `suffix` and `body`,
// which are owned by the same allocation and not modified during a write.
unsafe impl IoVecBuf for HitBuf {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.0.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.0.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(buf: &HitBuf) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &buf.0.iov[..buf.0.count] {
            // SAFETY: test-only read of the slices the iovecs point into.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        out
    }

    #[test]
    fn parts_are_written_in_order_and_empty_parts_skipped() {
        let mut b = HitBuf::default();
        b.set(Bytes::from_static(b"HEAD\r\n"), Bytes::new());
        b.suffix().extend_from_slice(b"\r\n");
        b.prepare();
        assert_eq!(b.0.count, 2);
        assert_eq!(gather(&b), b"HEAD\r\n\r\n");
    }

    #[test]
    fn partial_writes_advance_across_parts() {
        let mut b = HitBuf::default();
        b.set(Bytes::from_static(b"abc"), Bytes::from_static(b"ghij"));
        b.suffix().extend_from_slice(b"def");
        b.prepare();
        assert_eq!(b.remaining(), 10);
        assert!(!b.consume(4));
        assert_eq!(gather(&b), b"efghij");
        assert!(!b.consume(3));
        assert_eq!(gather(&b), b"hij");
        assert!(b.consume(3));
        assert_eq!(b.remaining(), 0);
    }
}
