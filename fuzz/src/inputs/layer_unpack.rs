//! The `layer_unpack` target (structured mode): tar entries.

use arbitrary::Arbitrary;

use crate::Bytes;

/// Names the structured mode draws from; `@` stands for the temp dir's path.
pub const NAMES: [&str; 24] = [
    "a",
    "b",
    "dir",
    "dir/x",
    "dir/sub",
    "dir/sub/y",
    ".wh.a",
    "dir/.wh.x",
    ".wh..wh..opq",
    "dir/.wh..wh..opq",
    "link",
    "link/x",
    "./c",
    "d/",
    ".",
    "",
    "../canary",
    "dir/../../canary",
    "@/canary",
    "@/outside/new",
    "out",
    "out/new",
    "/etc/moat-fuzz-escape",
    "dir/../a",
];

#[derive(Arbitrary, Debug)]
pub enum Name {
    Known(u8),
    Raw(Bytes),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char { major: u8, minor: u8 },
    Block,
    Fifo,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
pub struct Entry {
    pub kind: Kind,
    pub name: Name,
    pub link: Name,
    pub mode: u32,
    pub uid: u16,
    pub gid: u16,
    pub data: Bytes,
    /// The header's size when it should lie about the data.
    pub size: Option<u32>,
    /// PAX records written before the entry.
    pub pax: Vec<(Bytes, Bytes)>,
    /// Write the name as a GNU long-name entry.
    pub gnu_long_name: bool,
}

#[derive(Arbitrary, Debug)]
pub struct Layer {
    pub gzip: bool,
    pub skip_devices: bool,
    pub entries: Vec<Entry>,
    /// Cut the stream after this many bytes.
    pub truncate: Option<u16>,
}
