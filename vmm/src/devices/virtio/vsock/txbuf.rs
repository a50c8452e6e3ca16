//! The bounded buffer of one connection for bytes on their way from the guest to
//! the host socket, when the socket cannot take them yet.
//!
//! Owns: a fixed-capacity byte ring, allocated only while it holds data. It must
//! not grow past its capacity: callers get told how much it accepted, and keep the
//! rest (in the guest's memory) until there is room.

use std::io::{self, IoSlice, Write};

#[derive(Debug)]
pub struct TxBuf {
    /// Empty (no allocation) while the buffer holds no data.
    data: Vec<u8>,
    cap: usize,
    head: usize,
    len: usize,
}

impl TxBuf {
    pub fn new(cap: usize) -> Self {
        TxBuf {
            data: Vec::new(),
            cap,
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free(&self) -> usize {
        self.cap - self.len
    }

    /// Appends as much of `src` as fits; returns how many bytes were taken.
    pub fn push(&mut self, src: &[u8]) -> usize {
        let n = src.len().min(self.free());
        if n == 0 {
            return 0;
        }
        if self.data.is_empty() {
            self.data = vec![0; self.cap];
            self.head = 0;
        }
        let tail = (self.head + self.len) % self.cap;
        let first = n.min(self.cap - tail);
        self.data[tail..tail + first].copy_from_slice(&src[..first]);
        self.data[..n - first].copy_from_slice(&src[first..n]);
        self.len += n;
        n
    }

    /// Writes buffered bytes to `w` until it would block or the buffer is empty.
    /// Returns the number of bytes written; `WouldBlock` is not an error.
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while self.len > 0 {
            let end = self.head + self.len;
            let res = if end <= self.cap {
                w.write(&self.data[self.head..end])
            } else {
                let bufs = [
                    IoSlice::new(&self.data[self.head..]),
                    IoSlice::new(&self.data[..end - self.cap]),
                ];
                w.write_vectored(&bufs)
            };
            match res {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ))
                }
                Ok(n) => {
                    let n = n.min(self.len);
                    self.head = (self.head + n) % self.cap;
                    self.len -= n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.len == 0 {
            // Release the memory of idle connections.
            self.data = Vec::new();
            self.head = 0;
        }
        Ok(total)
    }

    /// Drops all buffered bytes.
    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.head = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `budget` bytes, then would block.
    struct Limited {
        out: Vec<u8>,
        budget: usize,
    }

    impl Write for Limited {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget).min(3);
            self.out.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bounded_push_and_wrapping_flush_keep_order() {
        let mut b = TxBuf::new(8);
        assert_eq!(b.push(b"abcdef"), 6);
        assert_eq!(b.push(b"ghijk"), 2);
        assert_eq!(b.free(), 0);
        let mut w = Limited {
            out: Vec::new(),
            budget: 5,
        };
        assert_eq!(b.flush_to(&mut w).unwrap(), 5);
        assert_eq!(b.len(), 3);
        // Wraps around the end of the ring.
        assert_eq!(b.push(b"klmnopq"), 5);
        w.budget = 100;
        assert_eq!(b.flush_to(&mut w).unwrap(), 8);
        assert!(b.is_empty());
        assert_eq!(w.out, b"abcdefghklmno");
        assert!(b.data.is_empty(), "an empty buffer holds no memory");
    }

    #[test]
    fn write_errors_are_reported() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut b = TxBuf::new(4);
        b.push(b"ab");
        assert_eq!(
            b.flush_to(&mut Broken).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert_eq!(b.len(), 2);
        b.clear();
        assert!(b.is_empty());
    }
}
