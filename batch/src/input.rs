//! Opening a batch file: gzip detection by magic bytes, size and ratio limits enforced
//! on the *decompressed* stream as it is produced, and the SHA-256 of that stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::model::{Limits, RejectKind, Rejection};
use crate::problems::reject;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Also the largest sniffing window: the first fill of the buffer is what `sniff` looks at.
pub(crate) const BUF_CAPACITY: usize = 64 * 1024;

/// Counts the compressed bytes the gzip decoder pulls from the file, for the ratio check.
struct Counted {
    file: File,
    count: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

enum Inner {
    Plain(File),
    Gzip(Box<MultiGzDecoder<Counted>>),
}

/// The decompressed byte stream. Once a limit trips or gzip breaks, the reason is kept
/// here and every later read fails, so whichever parser sits on top stops at once and
/// the caller can recover the precise rejection with [`Input::fail`].
pub(crate) struct Source {
    inner: Inner,
    limits: Limits,
    hasher: Sha256,
    bytes: u64,
    eof: bool,
    failure: Option<Rejection>,
}

impl Source {
    /// The content has been read to its end (what is left is in the reader's buffer).
    pub(crate) fn ended(&self) -> bool {
        self.eof
    }

    fn compressed(&self) -> Option<u64> {
        match &self.inner {
            Inner::Plain(_) => None,
            Inner::Gzip(d) => Some(d.get_ref().count),
        }
    }

    fn check_limits(&self) -> Result<(), Rejection> {
        let max = self.limits.max_bytes;
        if self.bytes > max {
            let what = if self.compressed().is_some() {
                "decompressed content"
            } else {
                "file"
            };
            return Err(reject(
                RejectKind::TooLarge,
                format!("{what} is larger than the limit of {max} bytes"),
            ));
        }
        let Some(packed) = self.compressed() else {
            return Ok(());
        };
        let ratio = self.limits.max_gzip_ratio;
        if self.bytes > self.limits.ratio_grace_bytes && self.bytes > packed.saturating_mul(ratio) {
            return Err(reject(
                RejectKind::TooLarge,
                format!(
                    "gzip expands more than the allowed ratio of {ratio}:1 ({} bytes from {packed}): refusing a likely gzip bomb",
                    self.bytes
                ),
            ));
        }
        Ok(())
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(f) => f.read(buf),
            Inner::Gzip(d) => d.read(buf),
        }
    }

    fn broken(&mut self, r: Rejection) -> io::Error {
        self.failure = Some(r);
        io::Error::other("batch input stopped")
    }
}

impl Read for Source {
    /// Fills `buf` completely unless the stream ends, so the first buffer fill is a
    /// reliable sniffing window.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("batch input stopped"));
        }
        let mut filled = 0;
        while filled < buf.len() && !self.eof {
            let n = match self.read_inner(&mut buf[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let r = inner_error(self.compressed().is_some(), e);
                    return Err(self.broken(r));
                }
            };
            self.bytes += n as u64;
            if let Err(r) = self.check_limits() {
                return Err(self.broken(r));
            }
            self.hasher.update(&buf[filled..filled + n]);
            filled += n;
        }
        Ok(filled)
    }
}

fn inner_error(gzip: bool, e: io::Error) -> Rejection {
    if !gzip {
        return reject(RejectKind::Io, format!("reading the file failed: {e}"));
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        reject(
            RejectKind::Compression,
            format!("gzip data is truncated: {e}"),
        )
    } else {
        reject(
            RejectKind::Compression,
            format!("gzip data is corrupt: {e}"),
        )
    }
}

pub(crate) struct Input {
    pub reader: BufReader<Source>,
    pub gzip: bool,
    /// A UTF-8 byte order mark was skipped: it still counts for the NDJSON trailer hash.
    pub bom: bool,
}

impl Input {
    pub fn open(path: &Path, limits: &Limits) -> Result<Input, Rejection> {
        let io_err = |e: io::Error| reject(RejectKind::Io, format!("cannot open the file: {e}"));
        let mut file = File::open(path).map_err(io_err)?;
        let gzip = starts_with_gzip_magic(&mut file).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        // A plain file's size is known up front; no need to read it to refuse it.
        if !gzip && size > limits.max_bytes {
            return Err(reject(
                RejectKind::TooLarge,
                format!(
                    "file is {size} bytes, over the limit of {} bytes",
                    limits.max_bytes
                ),
            ));
        }
        let inner = if gzip {
            Inner::Gzip(Box::new(MultiGzDecoder::new(Counted { file, count: 0 })))
        } else {
            Inner::Plain(file)
        };
        let source = Source {
            inner,
            limits: *limits,
            hasher: Sha256::new(),
            bytes: 0,
            eof: false,
            failure: None,
        };
        // A small plain file needs no 64 KiB buffer (one allocation less per read, and
        // the first fill still holds all of it).
        let capacity = if gzip {
            BUF_CAPACITY
        } else {
            usize::try_from(size.saturating_add(1))
                .unwrap_or(BUF_CAPACITY)
                .clamp(4096, BUF_CAPACITY)
        };
        Ok(Input {
            reader: BufReader::with_capacity(capacity, source),
            gzip,
            bom: false,
        })
    }

    /// Turns an I/O error that surfaced through a parser into the rejection that caused
    /// it (limit, gzip) or a plain I/O rejection.
    pub fn fail(&mut self, e: io::Error) -> Rejection {
        self.reader
            .get_mut()
            .failure
            .take()
            .unwrap_or_else(|| reject(RejectKind::Io, format!("reading the file failed: {e}")))
    }

    /// Skips a UTF-8 byte order mark; line numbers are unaffected.
    pub fn skip_bom(&mut self) -> Result<(), Rejection> {
        let bom = match self.reader.fill_buf() {
            Ok(buf) => buf.starts_with(b"\xEF\xBB\xBF"),
            Err(e) => return Err(self.fail(e)),
        };
        if bom {
            self.reader.consume(3);
            self.bom = true;
        }
        Ok(())
    }

    /// True when everything left of the content is in the reader's buffer (the stream
    /// ended within the last fill): a parser may then work on the buffer as a slice.
    pub fn rest_is_buffered(&mut self) -> bool {
        match self.reader.fill_buf() {
            Ok(_) => self.reader.get_ref().ended(),
            Err(_) => false,
        }
    }

    /// Reads whatever the parser left, so the hash covers the whole content and the
    /// limits are enforced on all of it.
    pub fn drain(&mut self) -> Result<(), Rejection> {
        io::copy(&mut self.reader, &mut io::sink())
            .map(drop)
            .map_err(|e| self.fail(e))
    }

    /// Hex SHA-256 and size of the decompressed content. Only meaningful after [`drain`].
    pub fn finish(self) -> (String, u64) {
        let source = self.reader.into_inner();
        (hex::encode(source.hasher.finalize()), source.bytes)
    }
}

fn starts_with_gzip_magic(file: &mut File) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match file.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(got == 2 && magic == GZIP_MAGIC)
}
