//! Process-wide care for what the server writes: files private to its user, and log
//! lines that a file name cannot forge or break.

use std::io::{self, Write};

/// Everything the server creates is private to its user: the SQLite database, the
/// data folder, the drop directory's archive, rejected and spool folders (files 0600,
/// folders 0700). Folders that already exist keep their modes, so an administrator can
/// open CTData and the device folders to a share's or an FTP daemon's group.
pub fn private_files() {
    #[cfg(unix)]
    {
        use nix::sys::stat::{umask, Mode};
        umask(Mode::from_bits_truncate(0o077));
    }
}

/// `MakeWriter` for the log: stderr, with control characters escaped (`\n` as `\u{a}`)
/// except the newline that ends each event, so a file or device name holding a newline
/// or a terminal escape cannot forge a log line or repaint the terminal.
pub struct EscapedStderr {
    /// ANSI colours are on: the formatter's own escape sequences pass.
    pub ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapedStderr {
    type Writer = Escaping<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping {
            inner: io::stderr(),
            ansi: self.ansi,
        }
    }
}

pub struct Escaping<W> {
    inner: W,
    ansi: bool,
}

impl<W: Write> Write for Escaping<W> {
    /// Takes the whole buffer: the formatter writes an event at once.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let body = text.strip_suffix('\n');
        let mut out = String::with_capacity(text.len() + 8);
        for c in body.unwrap_or(&text).chars() {
            if c.is_control() && c != '\t' && !(self.ansi && c == '\u{1b}') {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
        }
        if body.is_some() {
            out.push('\n');
        }
        self.inner.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `Content-Disposition: attachment` for a file name of any characters: a plain ASCII
/// fallback (anything else as `_`) and the exact name percent-encoded (RFC 6266), so a
/// control character or an accent cannot make the header invalid.
pub fn attachment(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' && c != '%' => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                encoded.push(b as char)
            }
            _ => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_line_end_kept() {
        let mut w = Escaping {
            inner: Vec::new(),
            ansi: false,
        };
        w.write_all(b"file=\"a\nb\x1b[31m\" x\n").unwrap();
        let out = String::from_utf8(w.inner).unwrap();
        assert_eq!(out, "file=\"a\\u{a}b\\u{1b}[31m\" x\n");
    }

    #[test]
    fn any_file_name_makes_a_valid_header() {
        for name in ["plain.csv", "a\nb\r.csv", "é\"\\%.csv", "\u{7f}\u{85}"] {
            let value = attachment(name);
            assert!(
                axum::http::HeaderValue::from_str(&value).is_ok(),
                "{value:?}"
            );
        }
        assert_eq!(
            attachment("a b.csv"),
            "attachment; filename=\"a b.csv\"; filename*=UTF-8''a%20b.csv"
        );
    }
}
