//! A streaming tar reader for hostile layer streams. It decodes header blocks with
//! the `tar` crate's `Header` (octal and base-256 numbers, ustar prefixes, the
//! checksum) but drives the stream itself, because the layer unpacker needs what the
//! `tar` crate's iterator does not give: hard limits on GNU long names and PAX
//! headers before they are read into memory, Go's rule that header-only entry types
//! carry no data (so moat sees the same entries as Docker), PAX `size` overrides,
//! and a clear error for every unsupported type. Owns tar syntax only; it must not
//! touch the filesystem.

use std::io::{self, Read};

use super::{Refusal, UnpackError, UnpackLimits};

const BLOCK: usize = 512;

/// What an entry creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

/// A time stamp from a header or a PAX record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// One decoded entry, with extension headers applied.
#[derive(Debug)]
pub(crate) struct Entry {
    pub kind: Kind,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    /// Data bytes that follow the header (0 for header-only types).
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Time,
    pub atime: Option<Time>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
    atime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads entries from an uncompressed tar stream.
pub(crate) struct TarReader<'a, R> {
    r: R,
    limits: &'a UnpackLimits,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    done: bool,
}

fn truncated(what: &str) -> UnpackError {
    UnpackError::Truncated(what.to_owned())
}

fn corrupt(what: impl Into<String>) -> UnpackError {
    UnpackError::Corrupt(what.into())
}

fn read_err(e: io::Error) -> UnpackError {
    super::stream_error(e)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
fn read_block_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, UnpackError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(truncated("end of stream inside a header block")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok(true)
}

fn skip<R: Read>(r: &mut R, mut n: u64) -> Result<(), UnpackError> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let want = usize::try_from(n.min(buf.len() as u64)).unwrap_or(buf.len());
        match r.read(&mut buf[..want]) {
            Ok(0) => return Err(truncated("end of stream inside entry data")),
            Ok(k) => n -= k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok(())
}

fn padding_for(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

impl<'a, R: Read> TarReader<'a, R> {
    pub(crate) fn new(r: R, limits: &'a UnpackLimits) -> Self {
        Self {
            r,
            limits,
            remaining: 0,
            padding: 0,
            done: false,
        }
    }

    /// Gives back the underlying reader (to drain what follows the archive).
    pub(crate) fn into_inner(self) -> R {
        self.r
    }

    /// Reads the current entry's data (at most what is left of it).
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining.min(buf.len() as u64)).unwrap_or(buf.len());
        loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => return Err(truncated("end of stream inside file data")),
                Ok(n) => {
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
    }

    /// The next entry, or `None` after the end-of-archive marker (or a clean EOF at
    /// a header boundary, which Go's reader and so Docker also accept; the diff-id
    /// check catches a stream cut there).
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, UnpackError> {
        if self.done {
            return Ok(None);
        }
        skip(&mut self.r, self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;

        let mut pending = Pending::default();
        let mut extension_headers = 0u32;
        loop {
            let mut header = tar::Header::new_old();
            if !read_block_or_eof(&mut self.r, header.as_mut_bytes())? {
                if extension_headers > 0 {
                    return Err(truncated("end of stream after an extension header"));
                }
                self.done = true;
                return Ok(None);
            }
            if header.as_bytes().iter().all(|&b| b == 0) {
                if extension_headers > 0 {
                    return Err(corrupt("end-of-archive marker after an extension header"));
                }
                // End of archive: a second zero block should follow; a clean EOF
                // instead is accepted.
                let mut second = [0u8; BLOCK];
                if read_block_or_eof(&mut self.r, &mut second)? && second.iter().any(|&b| b != 0) {
                    return Err(corrupt("single zero block inside the archive"));
                }
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&header)?;

            let type_byte = header.entry_type().as_byte();
            let old = header.as_old();
            let raw_size =
                numeric(&old.size).ok_or_else(|| corrupt("bad size field (not a tar stream?)"))?;
            match type_byte {
                b'L' | b'K' | b'x' | b'g' => {
                    extension_headers += 1;
                    if extension_headers > 8 {
                        return Err(corrupt("more than 8 extension headers for one entry"));
                    }
                    let limit = if matches!(type_byte, b'L' | b'K') {
                        // The name plus its terminating NUL.
                        self.limits.max_path_len as u64 + 1
                    } else {
                        self.limits.max_pax_header_size
                    };
                    if raw_size > limit {
                        return Err(UnpackError::Limit(format!(
                            "{} header of {raw_size} bytes (limit {limit})",
                            match type_byte {
                                b'L' => "GNU long name",
                                b'K' => "GNU long link",
                                b'x' => "PAX",
                                _ => "PAX global",
                            }
                        )));
                    }
                    let len = usize::try_from(raw_size)
                        .map_err(|_| UnpackError::Limit("extension header size".into()))?;
                    let mut data = vec![0u8; len];
                    self.r.read_exact(&mut data).map_err(read_err)?;
                    skip(&mut self.r, padding_for(raw_size))?;
                    match type_byte {
                        b'L' | b'K' => {
                            while data.last() == Some(&0) {
                                data.pop();
                            }
                            let slot = if type_byte == b'L' {
                                &mut pending.long_name
                            } else {
                                &mut pending.long_link
                            };
                            if slot.is_some() {
                                return Err(corrupt("two GNU long name headers for one entry"));
                            }
                            *slot = Some(data);
                        }
                        b'x' => {
                            if pending.pax.is_some() {
                                return Err(corrupt("two PAX headers for one entry"));
                            }
                            pending.pax = Some(parse_pax(&data)?);
                        }
                        _ => {
                            // Global PAX headers are validated and ignored, as Docker
                            // ignores them.
                            parse_pax(&data)?;
                        }
                    }
                    continue;
                }
                _ => {}
            }

            let mut path = match pending.long_name.take() {
                Some(p) => p,
                None => header.path_bytes().into_owned(),
            };
            let mut link = match pending.long_link.take() {
                Some(l) => l,
                None => header
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            };
            let pax = pending.pax.take().unwrap_or_default();
            if let Some(p) = pax.path {
                path = p;
            }
            if let Some(l) = pax.linkpath {
                link = l;
            }
            let entry_label = lossy(&path);
            let kind = match type_byte {
                b'0' | b'7' => Kind::File,
                // V7 tar: a regular-file type with a trailing slash is a directory.
                b'\0' if path.ends_with(b"/") => Kind::Dir,
                b'\0' => Kind::File,
                b'1' => Kind::Hardlink,
                b'2' => Kind::Symlink,
                b'3' => Kind::CharDevice,
                b'4' => Kind::BlockDevice,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                b'S' => {
                    return Err(UnpackError::Refused {
                        entry: entry_label,
                        reason: Refusal::Unsupported("GNU sparse files are not supported yet"),
                    })
                }
                other => {
                    return Err(UnpackError::Refused {
                        entry: entry_label,
                        reason: Refusal::UnsupportedType(other),
                    })
                }
            };
            if path.len() > self.limits.max_path_len || link.len() > self.limits.max_path_len {
                return Err(UnpackError::Limit(format!(
                    "entry {entry_label:?}: name longer than {} bytes",
                    self.limits.max_path_len
                )));
            }
            if path.contains(&0) || link.contains(&0) {
                return Err(UnpackError::Refused {
                    entry: entry_label,
                    reason: Refusal::NulInName,
                });
            }
            let size = pax.size.unwrap_or(raw_size);
            // Go's archive/tar (and so Docker) reads no data for header-only types,
            // whatever their size field says; do the same so both see one stream.
            let data_size = match kind {
                Kind::File => size,
                _ => 0,
            };
            let field = |f: &[u8], what: &str| {
                numeric(f)
                    .ok_or_else(|| corrupt(format!("entry {entry_label:?}: bad {what} field")))
            };
            let mode = u32::try_from(field(&old.mode, "mode")? & 0o7777).unwrap_or(0);
            let uid = match pax.uid {
                Some(u) => u,
                None => field(&old.uid, "uid")?,
            };
            let gid = match pax.gid {
                Some(g) => g,
                None => field(&old.gid, "gid")?,
            };
            let mtime = match pax.mtime {
                Some(t) => t,
                None => Time {
                    secs: i64::try_from(field(&old.mtime, "mtime")?).unwrap_or(i64::MAX),
                    nanos: 0,
                },
            };
            self.remaining = data_size;
            self.padding = padding_for(data_size);
            return Ok(Some(Entry {
                kind,
                path,
                link,
                size: data_size,
                mode,
                uid,
                gid,
                mtime,
                atime: pax.atime,
                xattrs: pax.xattrs,
            }));
        }
    }
}

fn verify_checksum(header: &tar::Header) -> Result<(), UnpackError> {
    let bytes = header.as_bytes();
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    let stored = header
        .cksum()
        .map_err(|_| corrupt("unreadable header checksum (not a tar stream?)"))?;
    if u64::from(stored) == unsigned || i64::from(stored) == signed {
        Ok(())
    } else {
        Err(corrupt("header checksum mismatch (not a tar stream?)"))
    }
}

/// A numeric header field as Go's archive/tar reads it: octal, with leading and
/// trailing spaces and NULs ignored (an empty field is 0), or GNU base-256 when the
/// high bit is set (negative values refused).
fn numeric(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return None;
            }
            let mut v = u64::from(first & 0x3f);
            for &b in &field[1..] {
                v = v.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            return Some(v);
        }
    }
    let is_pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !is_pad(b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |i| i + 1);
    let digits = &field[start..end];
    let mut v: u64 = 0;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_pax_time(v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let secs = i64::try_from(parse_decimal(int.as_bytes())?).ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.5 means 1.5 s before the epoch.
        if nanos > 0 {
            Some(Time {
                secs: -secs - 1,
                nanos: 1_000_000_000 - nanos,
            })
        } else {
            Some(Time { secs: -secs, nanos })
        }
    } else {
        Some(Time { secs, nanos })
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`).
fn parse_pax(data: &[u8]) -> Result<Pax, UnpackError> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        // Some writers pad the record area with NULs.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| corrupt("PAX record without length"))?;
        let len = parse_decimal(&rest[..sp])
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| corrupt("PAX record with a bad length"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(corrupt("PAX record length out of range"));
        }
        let record = &rest[sp + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| corrupt("PAX record without '='"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let bad = |k: &[u8]| corrupt(format!("PAX record {:?} has a bad value", lossy(k)));
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(parse_decimal(value).ok_or_else(|| bad(key))?),
            b"uid" => pax.uid = Some(parse_decimal(value).ok_or_else(|| bad(key))?),
            b"gid" => pax.gid = Some(parse_decimal(value).ok_or_else(|| bad(key))?),
            b"mtime" => pax.mtime = Some(parse_pax_time(value).ok_or_else(|| bad(key))?),
            b"atime" => pax.atime = Some(parse_pax_time(value).ok_or_else(|| bad(key))?),
            k if k.starts_with(b"SCHILY.xattr.") => {
                let name = &k[b"SCHILY.xattr.".len()..];
                if name.is_empty() || name.contains(&0) {
                    return Err(bad(key));
                }
                pax.xattrs.push((name.to_vec(), value.to_vec()));
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(UnpackError::Refused {
                    entry: String::new(),
                    reason: Refusal::Unsupported("GNU sparse files are not supported yet"),
                })
            }
            // uname, gname, ctime, comment, charset, LIBARCHIVE.* and vendor keys
            // carry nothing moat applies.
            _ => {}
        }
    }
    Ok(pax)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One PAX record with its self-inclusive length prefix.
    pub(crate) fn rec(k: &str, v: &str) -> String {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while n != body.len() + n.to_string().len() {
            n = body.len() + n.to_string().len();
        }
        format!("{n}{body}")
    }

    #[test]
    fn pax_records() {
        let data = format!(
            "{}{}{}{}",
            rec("path", "a/very/long/name"),
            rec("size", "12345678901"),
            rec("mtime", "1700000000.25"),
            rec("SCHILY.xattr.user.k", "v=1")
        );
        let pax = parse_pax(data.as_bytes()).unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"a/very/long/name"[..]));
        assert_eq!(pax.size, Some(12_345_678_901));
        assert_eq!(
            pax.mtime,
            Some(Time {
                secs: 1_700_000_000,
                nanos: 250_000_000
            })
        );
        assert_eq!(pax.xattrs, vec![(b"user.k".to_vec(), b"v=1".to_vec())]);
    }

    #[test]
    fn pax_rejects_malformed() {
        for bad in [
            &b"5 a=b"[..],
            b"x path=a\n",
            b"100 path=a\n",
            b"9 size=x\n",
            b"11 pathnoeq\n",
            b"3 \n",
        ] {
            assert!(
                parse_pax(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_pax(rec("GNU.sparse.major", "1").as_bytes()).is_err());
        assert_eq!(rec("a", "b"), "6 a=b\n");
    }

    #[test]
    fn numeric_fields_like_go() {
        assert_eq!(numeric(b"0000644\0"), Some(0o644));
        assert_eq!(numeric(b"  755 \0"), Some(0o755));
        assert_eq!(numeric(b"\0\0\0\0"), Some(0));
        assert_eq!(numeric(b""), Some(0));
        assert_eq!(numeric(b"12a"), None);
        assert_eq!(numeric(b"1 2"), None);
        assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(numeric(&[0xff, 0xff]), None);
        assert_eq!(
            numeric(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn negative_pax_time() {
        assert_eq!(
            parse_pax_time(b"-1.5"),
            Some(Time {
                secs: -2,
                nanos: 500_000_000
            })
        );
        assert_eq!(parse_pax_time(b"7"), Some(Time { secs: 7, nanos: 0 }));
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
