//! CyberTracker Classic queues every upload with an `.OUT` file beside it: its
//! `FXSENDDATA` record, the sender's URL, user name and password in plain text. Such a
//! file is never data. Whatever channel brings it, it is deleted unread on arrival,
//! and only its name is logged, never a byte of what it holds.

use std::io::Read;
use std::path::Path;

/// `sizeof(FXSENDDATA)`: magic, protocol, URL[256], user[64], password[64].
const SEND_DATA_BYTES: u64 = 392;
/// `'FTPD'` stored as a little-endian `UINT`.
const SEND_DATA_MAGIC: [u8; 4] = *b"DPTF";

/// Whether a name is an `.OUT` file (any case).
pub fn is_out_name(name: &str) -> bool {
    name.len() > 4
        && name.is_char_boundary(name.len() - 4)
        && name[name.len() - 4..].eq_ignore_ascii_case(".out")
}

/// Whether a received file is a send-data record: by its name, or (for channels that
/// carry no name, such as an HTTP body) by its size and magic.
pub fn is_send_data(file: &Path, name: &str) -> bool {
    if is_out_name(name) {
        return true;
    }
    let Ok(mut f) = std::fs::File::open(file) else {
        return false;
    };
    let mut magic = [0u8; 4];
    f.metadata().is_ok_and(|m| m.len() == SEND_DATA_BYTES)
        && f.read_exact(&mut magic).is_ok()
        && magic == SEND_DATA_MAGIC
}

/// Says that a send-data file was dropped, naming only the file.
pub fn discarded(channel: &str, device: Option<&str>, name: &str) {
    tracing::warn!(
        channel,
        device = device.unwrap_or("-"),
        file = name,
        "deleted a CyberTracker .OUT file on arrival: it holds the sender's password in plain text and is never ingested or kept"
    );
}

/// Deletes a send-data file and says so, naming only the file.
pub fn discard(file: &Path, channel: &str, device: Option<&str>, name: &str) {
    let removed = std::fs::remove_file(file);
    match removed {
        Ok(()) => discarded(channel, device, name),
        Err(e) => tracing::error!(
            channel,
            device = device.unwrap_or("-"),
            file = name,
            "could not delete a CyberTracker .OUT file (it holds a password in plain text): {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_out_name("Kruger_0d6a_0.OUT"));
        assert!(is_out_name("x.out"));
        assert!(!is_out_name(".out"));
        assert!(!is_out_name("x.CTX"));
        assert!(!is_out_name("layout"));
    }
}
