//! Whether the client is still on the control connection when an upload ends.
//!
//! In FTP's stream mode the end of the data connection *is* the end of the file, so
//! a client killed halfway through a STOR looks, on the data connection, exactly like
//! one that finished: its kernel closes both connections and the server reads a clean
//! end of file. Only the control connection tells them apart: a live client is still
//! there, waiting for "226"; a dead one has closed or reset it. When a process dies
//! its descriptors are closed in order, control (opened first) before data, so its
//! close reaches us before the data connection's end of file.
//!
//! Where libunftp could tell us (verified in libunftp 0.24 `datachan.rs`,
//! `controlchan/control_loop.rs`, `controlchan/notify.rs`): after `put` returns Ok the
//! data task sends `WrittenData` to the control loop; the loop passes it through the
//! `EventDispatcherMiddleware`, which emits `DataEvent::Put` to a `DataListener`,
//! and only then builds and writes the 226. So the Put event comes *before* the 226,
//! and it does not prove the client alive: the loop's `select!` picks among ready
//! branches at random, so with the client's close already read it may still handle
//! `WrittenData` first, emit Put and write the 226 into a half-closed socket (writing
//! to a connection the peer has closed succeeds). If the loop took the close first it
//! has exited and the message is lost ("Could not notify control channel of
//! successful STOR") — with the file already ingested by the old `put`. Waiting for
//! the 226 write does not help either (it succeeds on a half-closed socket), and a
//! Nor does a check when the data ends: a dying process's kernel may close the data
//! connection a moment before the control one (measured: cut uploads were still
//! ingested with such a check).
//!
//! So an upload of a final name is held under its hidden name when the data ends and
//! handed off only once the client has shown it was there after the 226:
//! - it made the session do anything more (any storage call after the 226), or
//! - the session ended with the client still connected (idle timeout, shutdown), or
//!   with the client closing cleanly (libunftp's `LoggedOut`, i.e. an end of file or
//!   QUIT, and no error pending on the socket).
//!
//! A client that dies without reading the 226 never closes cleanly: its kernel resets
//! the connection, either on close (the 226 unread in its buffer) or when the 226
//! arrives at its closed socket. The Put event (just before the 226) and the end of
//! the data also look at the socket, so an upload whose client is already gone is
//! dropped at once. Whatever is not handed off stays under its hidden `.part` name
//! for the stale sweep and is logged as an incomplete upload.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use libunftp::notification::{DataEvent, DataListener, EventMeta, PresenceEvent, PresenceListener};

use super::handoff::Handoff;

/// One session's control connection as far as uploads care: a second handle on its
/// socket (only ever peeked at) and the uploads waiting for the client's word.
#[derive(Debug)]
pub struct Control {
    sock: TcpStream,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    held: Vec<Held>,
    logged_in: bool,
    logged_out: bool,
}

/// A complete upload of a final name, still under its hidden name.
#[derive(Debug)]
pub struct Held {
    pub device: String,
    /// The folder it is in, opened beneath the device's root.
    pub dir: OwnedFd,
    pub temp: String,
    pub name: String,
    pub bytes: u64,
    /// libunftp is answering (or has answered) 226 for it.
    answered: bool,
}

impl Held {
    pub fn new(device: &str, dir: OwnedFd, temp: String, name: String, bytes: u64) -> Held {
        Held {
            device: device.to_string(),
            dir,
            temp,
            name,
            bytes,
            answered: false,
        }
    }

    pub fn incomplete(&self, why: &str) {
        tracing::warn!(
            device = %self.device,
            file = %self.name,
            bytes = self.bytes,
            left_as = %self.temp,
            "incomplete FTP upload: {why}; not ingested (removed after ftp.stale_part_secs)"
        );
    }
}

impl Control {
    /// Duplicates the descriptor of `stream` (libunftp gets the stream itself).
    pub fn of(stream: &tokio::net::TcpStream) -> io::Result<Control> {
        Ok(Control {
            sock: TcpStream::from(stream.as_fd().try_clone_to_owned()?),
            state: Mutex::new(State::default()),
        })
    }

    /// Whether the client has neither closed nor reset the connection. Pending
    /// commands are left for libunftp to read (peek only); the descriptor is
    /// non-blocking (tokio's), so this never waits.
    pub fn client_present(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.sock.peek(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Ends the connection of a client that has not logged in (libunftp then reads the
    /// end of the stream and ends the session): a socket that only waits, before any
    /// login, holds a slot and a descriptor for nothing. True when it was closed.
    pub fn close_unless_logged_in(&self) -> bool {
        if self.state().logged_in {
            return false;
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        true
    }

    /// Writes `text` on a plain control connection ahead of libunftp's next reply (see
    /// `auth::SessionAuth`). The descriptor is non-blocking: a client that leaves its
    /// replies unread gets a bounded wait, and one whose line could be written only in
    /// part is disconnected rather than sent a garbled reply.
    pub async fn say_first(&self, text: &str) {
        let mut rest = text.as_bytes();
        for _ in 0..50 {
            match (&self.sock).write(rest) {
                Ok(n) if n == rest.len() => return,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if rest.len() < text.len() {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a complete upload until the client shows it heard the 226.
    pub fn hold(&self, held: Held) {
        self.state().held.push(held);
    }

    /// The session did something after a 226: the uploads answered are confirmed.
    pub fn take_confirmed(&self) -> Vec<Held> {
        let mut state = self.state();
        let (done, waiting) = std::mem::take(&mut state.held)
            .into_iter()
            .partition(|h| h.answered);
        state.held = waiting;
        done
    }

    /// The session is over: what its client confirmed by how it left.
    pub fn finish(&self) -> Vec<Held> {
        let mut state = self.state();
        let still_there = self.client_present();
        let closed_cleanly = state.logged_out && matches!(self.sock.take_error(), Ok(None));
        let mut confirmed = Vec::new();
        for held in std::mem::take(&mut state.held) {
            if held.answered && (still_there || closed_cleanly) {
                confirmed.push(held);
            } else if held.answered {
                held.incomplete("the client never read the 226 reply (connection reset)");
            } else {
                held.incomplete("the client left before the upload was answered");
            }
        }
        confirmed
    }
}

/// libunftp's events for one session, fed to its [`Control`].
#[derive(Debug, Clone)]
pub struct Events(pub Arc<Control>);

#[async_trait]
impl DataListener for Events {
    async fn receive_data_event(&self, e: DataEvent, _m: EventMeta) {
        if !matches!(e, DataEvent::Put { .. }) {
            return;
        }
        // Emitted right before libunftp writes the 226.
        let present = self.0.client_present();
        let mut state = self.0.state();
        if present {
            state.held.iter_mut().for_each(|h| h.answered = true);
        } else {
            for held in std::mem::take(&mut state.held) {
                held.incomplete("the client left before the upload was answered");
            }
        }
    }
}

#[async_trait]
impl PresenceListener for Events {
    async fn receive_presence_event(&self, e: PresenceEvent, _m: EventMeta) {
        match e {
            PresenceEvent::LoggedIn => self.0.state().logged_in = true,
            PresenceEvent::LoggedOut => self.0.state().logged_out = true,
        }
    }
}

/// Hands the confirmed uploads to the ingest loop.
pub async fn hand_off(handoff: &Handoff, confirmed: Vec<Held>) -> io::Result<()> {
    for held in confirmed {
        let temp = std::ffi::OsString::from(&held.temp);
        if let Err(e) = handoff
            .complete(&held.device, held.dir, &temp, &held.name)
            .await
        {
            tracing::error!(
                device = %held.device,
                file = %held.name,
                left_as = %held.temp,
                "a complete FTP upload could not be queued for ingest: {e}"
            );
            return Err(e);
        }
    }
    Ok(())
}
