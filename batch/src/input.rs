//! Opening a batch file: compression recognised by content (gzip, zlib, raw deflate),
//! size and ratio limits enforced on the *decompressed* stream as it is produced, and
//! the SHA-256 of that stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use flate2::{Decompress, FlushDecompress};
use sha2::{Digest, Sha256};

use crate::model::{Compression, Limits, RejectKind, Rejection};
use crate::problems::reject;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Also the largest sniffing window: the first fill of the buffer is what `sniff` looks at.
pub(crate) const BUF_CAPACITY: usize = 64 * 1024;

/// How much of the file is tried to decide whether it is a zlib or raw deflate stream.
const TRIAL_BYTES: usize = 4096;

/// Counts the compressed bytes the decoder pulls from the file, for the ratio check.
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
    Zlib(Box<ZlibDecoder<Counted>>),
    Deflate(Box<DeflateDecoder<Counted>>),
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

    fn compression(&self) -> Option<Compression> {
        match &self.inner {
            Inner::Plain(_) => None,
            Inner::Gzip(_) => Some(Compression::Gzip),
            Inner::Zlib(_) => Some(Compression::Zlib),
            Inner::Deflate(_) => Some(Compression::Deflate),
        }
    }

    fn compressed(&self) -> Option<u64> {
        match &self.inner {
            Inner::Plain(_) => None,
            Inner::Gzip(d) => Some(d.get_ref().count),
            Inner::Zlib(d) => Some(d.get_ref().count),
            Inner::Deflate(d) => Some(d.get_ref().count),
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
        let (Some(packed), Some(how)) = (self.compressed(), self.compression()) else {
            return Ok(());
        };
        let ratio = self.limits.max_gzip_ratio;
        if self.bytes > self.limits.ratio_grace_bytes && self.bytes > packed.saturating_mul(ratio) {
            return Err(reject(
                RejectKind::TooLarge,
                format!(
                    "{how} expands more than the allowed ratio of {ratio}:1 ({} bytes from {packed}): refusing a likely {how} bomb",
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
            Inner::Zlib(d) => d.read(buf),
            Inner::Deflate(d) => d.read(buf),
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
                    let r = inner_error(self.compression(), e);
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

fn inner_error(compression: Option<Compression>, e: io::Error) -> Rejection {
    let Some(how) = compression else {
        return reject(RejectKind::Io, format!("reading the file failed: {e}"));
    };
    if e.kind() == io::ErrorKind::UnexpectedEof {
        reject(
            RejectKind::Compression,
            format!("{how} data is truncated: {e}"),
        )
    } else {
        reject(
            RejectKind::Compression,
            format!("{how} data is corrupt: {e}"),
        )
    }
}

pub(crate) struct Input {
    pub reader: BufReader<Source>,
    pub compression: Option<Compression>,
    /// A UTF-8 byte order mark was skipped: it still counts for the NDJSON trailer hash.
    pub bom: bool,
}

impl Input {
    pub fn open(path: &Path, limits: &Limits) -> Result<Input, Rejection> {
        let io_err = |e: io::Error| reject(RejectKind::Io, format!("cannot open the file: {e}"));
        let mut file = File::open(path).map_err(io_err)?;
        let compression = detect(&mut file).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        // A plain file's size is known up front; no need to read it to refuse it.
        if compression.is_none() && size > limits.max_bytes {
            return Err(reject(
                RejectKind::TooLarge,
                format!(
                    "file is {size} bytes, over the limit of {} bytes",
                    limits.max_bytes
                ),
            ));
        }
        let counted = Counted { file, count: 0 };
        let inner = match compression {
            None => Inner::Plain(counted.file),
            Some(Compression::Gzip) => Inner::Gzip(Box::new(MultiGzDecoder::new(counted))),
            Some(Compression::Zlib) => Inner::Zlib(Box::new(ZlibDecoder::new(counted))),
            Some(Compression::Deflate) => Inner::Deflate(Box::new(DeflateDecoder::new(counted))),
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
        let capacity = if compression.is_some() {
            BUF_CAPACITY
        } else {
            usize::try_from(size.saturating_add(1))
                .unwrap_or(BUF_CAPACITY)
                .clamp(4096, BUF_CAPACITY)
        };
        Ok(Input {
            reader: BufReader::with_capacity(capacity, source),
            compression,
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

/// Recognises compression from the first bytes. gzip has its magic; zlib has a
/// two-byte header with a check sum, tried by inflating the start; raw deflate (what
/// CyberTracker's HTTPZ may send) has no header at all, so it is only tried on a start
/// that is not text anyway, and accepted when it inflates to text.
fn detect(file: &mut File) -> io::Result<Option<Compression>> {
    let mut start = Vec::with_capacity(TRIAL_BYTES);
    file.by_ref()
        .take(TRIAL_BYTES as u64)
        .read_to_end(&mut start)?;
    file.seek(SeekFrom::Start(0))?;
    if start.starts_with(&GZIP_MAGIC) {
        return Ok(Some(Compression::Gzip));
    }
    if zlib_header(&start) && inflates_to_text(&start, true) {
        return Ok(Some(Compression::Zlib));
    }
    let text = !start.iter().any(|b| crate::sniff::is_binary(*b));
    if !text && inflates_to_text(&start, false) {
        return Ok(Some(Compression::Deflate));
    }
    Ok(None)
}

/// RFC 1950: method 8 (deflate), a window of at most 32 KiB, no preset dictionary, and
/// the two bytes a multiple of 31.
fn zlib_header(start: &[u8]) -> bool {
    let [cmf, flg, ..] = *start else {
        return false;
    };
    cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && flg & 0x20 == 0
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// Whether the start of a stream inflates without error to something that is not binary.
fn inflates_to_text(start: &[u8], zlib: bool) -> bool {
    let mut out = vec![0u8; TRIAL_BYTES];
    let mut d = Decompress::new(zlib);
    if d.decompress(start, &mut out, FlushDecompress::None)
        .is_err()
    {
        return false;
    }
    let made = &out[..d.total_out() as usize];
    !made.is_empty() && !made.iter().any(|b| crate::sniff::is_binary(*b))
}
