//! The host side of the hybrid-vsock handshake: a client of the device's Unix
//! socket writes `CONNECT <port>\n` and, once the guest accepted, reads
//! `OK <hostport>\n` before the byte stream starts.
//!
//! Owns: reading and parsing the request line of one client, byte by byte so no
//! stream byte after the newline is consumed. It must not touch the guest side or
//! any other client; a bad line fails only this client.

use std::io::{self, Read};

/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("handshake line is not `CONNECT <port>`: {0:?}")]
    Malformed(String),
    #[error("handshake port {0:?} is not a decimal u32")]
    BadPort(String),
    #[error("client closed before completing the handshake")]
    Eof,
}

/// Parses one request line (without its newline) into the guest port.
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let text = String::from_utf8_lossy(line);
    let Some(port) = line.strip_prefix(b"CONNECT ") else {
        return Err(HandshakeError::Malformed(text.into_owned()));
    };
    // `u32::from_str` accepts a leading `+`; the protocol does not.
    if port.is_empty() || port.len() > 10 || !port.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::BadPort(
            String::from_utf8_lossy(port).into_owned(),
        ));
    }
    let digits = String::from_utf8_lossy(port);
    digits
        .parse::<u32>()
        .map_err(|_| HandshakeError::BadPort(digits.into_owned()))
}

/// The request line of one client, read incrementally from a non-blocking socket.
#[derive(Debug, Default)]
pub struct LineReader {
    line: Vec<u8>,
}

impl LineReader {
    /// Reads what is available. Returns `Ok(Some(port))` once a complete, valid
    /// line was read, `Ok(None)` when the socket would block first.
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> Result<Option<u32>, ReadError> {
        let mut byte = [0u8; 1];
        loop {
            match r.read(&mut byte) {
                Ok(0) => return Err(ReadError::Handshake(HandshakeError::Eof)),
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return parse_connect(&self.line)
                            .map(Some)
                            .map_err(ReadError::Handshake);
                    }
                    // The newline itself must still fit.
                    if self.line.len() + 1 >= MAX_LINE {
                        return Err(ReadError::Handshake(HandshakeError::TooLong));
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Handshake(HandshakeError),
    #[error("read handshake: {0}")]
    Io(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT 0"), Ok(0));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Ok(u32::MAX));
    }

    #[test]
    fn refuses_bad_lines() {
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT  52",
            b"connect 52",
            b"CONNECT +52",
            b"CONNECT -1",
            b"CONNECT 52 ",
            b"CONNECT 4294967296",
            b"CONNECT 99999999999",
            b"CONNECT 0x34",
            b"HELLO",
            b"",
            b"CONNECT 5\r",
        ] {
            assert!(
                parse_connect(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Hands out its input in chunks, then would block.
    struct Chunks(Vec<Vec<u8>>);
    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(first) = self.0.first_mut() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            if first.is_empty() {
                self.0.remove(0);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(first.len());
            buf[..n].copy_from_slice(&first[..n]);
            first.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn reads_incrementally_and_stops_at_the_newline() {
        let mut src = Chunks(vec![b"CONN".to_vec(), b"ECT 12\nrest".to_vec()]);
        let mut r = LineReader::default();
        assert_eq!(r.read_from(&mut src).unwrap(), None);
        assert_eq!(r.read_from(&mut src).unwrap(), Some(12));
        // Nothing after the newline was consumed.
        assert_eq!(src.0[0], b"rest");
    }

    #[test]
    fn overlong_and_eof() {
        let mut src = Chunks(vec![vec![b'A'; 200]]);
        let mut r = LineReader::default();
        assert!(matches!(
            r.read_from(&mut src),
            Err(ReadError::Handshake(HandshakeError::TooLong))
        ));
        // 63 bytes plus the newline is the longest accepted line.
        let mut line = b"CONNECT ".to_vec();
        line.resize(MAX_LINE - 1, b'0');
        line.push(b'7');
        line.push(b'\n');
        let mut r = LineReader::default();
        assert!(matches!(
            r.read_from(&mut Chunks(vec![line.clone()])),
            Err(ReadError::Handshake(HandshakeError::TooLong))
        ));
        line.remove(10);
        let mut r = LineReader::default();
        // 55 digits are too many for a port, but the length passes.
        assert!(matches!(
            r.read_from(&mut Chunks(vec![line])),
            Err(ReadError::Handshake(HandshakeError::BadPort(_)))
        ));
        struct Eof;
        impl Read for Eof {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        assert!(matches!(
            LineReader::default().read_from(&mut Eof),
            Err(ReadError::Handshake(HandshakeError::Eof))
        ));
    }
}
