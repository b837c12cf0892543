//! Assisted sync (`compare`, `push`, `fetch`, after DataTracker) and the device sync
//! switches (`sync off|on|purge`, after a diary app's device sync).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::home::{list_files, move_into, sync_dir, Home, DOCKED, INBOX, OUTBOX, REJECTED, SENT};
use crate::remote::Remote;
use crate::state;

/// The local side of a comparison: pending batches and fetched files.
const LOCAL: [&str; 2] = [OUTBOX, INBOX];

pub fn compare(home: &Home) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    let mut remote = Remote::open(&config)?;
    let there: BTreeMap<String, u64> = remote.list()?.into_iter().collect();
    remote.close();
    let mut here = BTreeMap::new();
    for dir in LOCAL {
        for name in list_files(&home.dir(dir))? {
            let size = std::fs::metadata(home.dir(dir).join(&name))?.len();
            here.insert(name, (dir, size));
        }
    }
    let only_here: Vec<_> = here
        .iter()
        .filter(|(n, _)| !there.contains_key(*n))
        .collect();
    let only_there: Vec<_> = there
        .iter()
        .filter(|(n, _)| !here.contains_key(*n))
        .collect();
    println!(
        "comparing {} with {}",
        home.root.display(),
        config.upload.url
    );
    println!("only here ({}):", only_here.len());
    for (name, (dir, size)) in &only_here {
        println!("  {dir}/{name}  {size} bytes");
    }
    println!("only there ({}):", only_there.len());
    for (name, size) in &only_there {
        println!("  {name}  {size} bytes");
    }
    let both: Vec<_> = here
        .iter()
        .filter(|(n, _)| there.contains_key(*n))
        .collect();
    println!("on both ({}):", both.len());
    for (name, (dir, size)) in both {
        let theirs = there[name];
        let verdict = if theirs == *size {
            "same size".to_string()
        } else {
            format!("DIFFERENT: {size} bytes here, {theirs} there")
        };
        println!("  {dir}/{name}  {verdict}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Finds FILE as given, or by name in outbox/ or inbox/.
fn local_file(home: &Home, file: &str) -> anyhow::Result<PathBuf> {
    let given = PathBuf::from(file);
    if given.is_file() {
        return Ok(given);
    }
    LOCAL
        .iter()
        .map(|d| home.dir(d).join(file))
        .find(|p| p.is_file())
        .with_context(|| format!("{file} is not a file, nor in outbox/ or inbox/"))
}

/// Moves files to the remote: uploaded through a temporary name, then a batch from
/// outbox/ goes to sent/ and any other file is removed here.
pub fn push(home: &Home, files: &[String]) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    let mut remote = Remote::open(&config)?;
    let mut failed = 0;
    for file in files {
        let done = local_file(home, file).and_then(|path| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            remote.put(&path, &name)?;
            if path.parent() == Some(home.dir(OUTBOX).as_path()) {
                move_into(&path, &home.dir(SENT))?;
            } else {
                std::fs::remove_file(&path)?;
            }
            home.log(&format!("push: {name} moved to {}", config.upload.url));
            Ok(name)
        });
        match done {
            Ok(name) => println!("pushed {name}"),
            Err(e) => {
                failed += 1;
                eprintln!("not pushed: {file}: {e:#}");
            }
        }
    }
    remote.close();
    Ok(exit(failed))
}

/// Moves files from the remote into inbox/: downloaded through a temporary name, the
/// size checked, then removed there.
pub fn fetch(home: &Home, files: &[String]) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    let mut remote = Remote::open(&config)?;
    let there: BTreeMap<String, u64> = remote.list()?.into_iter().collect();
    let inbox = home.dir(INBOX);
    let mut failed = 0;
    for name in files {
        let done = match there.get(name) {
            None => Err(anyhow::anyhow!("{name} is not on the remote")),
            Some(&size) => remote.get(name, &inbox).and_then(|got| {
                if got != size {
                    std::fs::remove_file(inbox.join(name))?;
                    bail!("{name}: received {got} of {size} bytes; the remote copy is kept");
                }
                remote.delete(name)
            }),
        };
        match done {
            Ok(()) => {
                println!("fetched {name} into {}", inbox.display());
                home.log(&format!("fetch: {name} moved into inbox/"));
            }
            Err(e) => {
                failed += 1;
                eprintln!("not fetched: {e:#}");
            }
        }
    }
    remote.close();
    Ok(exit(failed))
}

fn exit(failed: usize) -> ExitCode {
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `sync off` / `sync on`: a running autosend pauses at its next look and waits.
pub fn switch(home: &Home, on: bool) -> anyhow::Result<ExitCode> {
    Config::load(home)?;
    let mut locked = state::lock(home)?;
    locked.state.sync_off = !on;
    locked.save()?;
    home.log(if on {
        "sync turned on"
    } else {
        "sync turned off"
    });
    println!(
        "{}",
        if on {
            "sync is on: `ctdata autosend` may run again"
        } else {
            "sync is off for this device: autosend pauses at its next look and waits, \
             `send` asks for --force; local data is kept (`ctdata sync on` undoes this)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `sync purge`: deletes this device's local sync data (the settings stay); with
/// `remote`, also its files on the remote that the server has not taken yet.
pub fn purge(home: &Home, remote: bool, yes: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    if home.try_lock(".autosend.lock")?.is_none() {
        bail!("autosend is running for this home: stop it first");
    }
    let what = if remote {
        format!(
            "all local sync data in {} and this device's files not yet taken by the server at {}",
            home.root.display(),
            config.upload.url
        )
    } else {
        format!(
            "all local sync data in {} (the settings stay)",
            home.root.display()
        )
    };
    if !yes && !confirm(&what)? {
        println!("nothing deleted");
        return Ok(ExitCode::FAILURE);
    }
    if remote {
        let mut r = Remote::open(&config)?;
        let ours = own_remote_files(home, &r)?;
        let names = r.list()?.into_iter().map(|(n, _)| n);
        for name in names.filter(|n| ours.as_ref().is_none_or(|o| o.contains(n))) {
            r.delete(&name)?;
            println!("deleted {name} on the remote");
        }
        r.close();
    }
    let mut locked = state::lock(home)?;
    for dir in [OUTBOX, SENT, REJECTED, INBOX, DOCKED] {
        remove_dir(&home.dir(dir))?;
    }
    match std::fs::remove_file(home.open_batch()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    sync_dir(&home.root)?;
    // The sequence goes on (a number is never used twice) and imported files stay
    // remembered (taking one again would only repeat what the server has).
    let kept = state::State {
        next_seq: locked.state.next_seq,
        imported: std::mem::take(&mut locked.state.imported),
        ..state::State::default()
    };
    locked.state = kept;
    locked.save()?;
    home.create()?;
    home.log(&format!("sync purge: deleted {what}"));
    println!("deleted {what}");
    Ok(ExitCode::SUCCESS)
}

/// A share's device folder is this device's alone (`None`: everything in it); in an
/// FTP folder shared by all devices only the batches this client made are its own.
fn own_remote_files(home: &Home, remote: &Remote) -> anyhow::Result<Option<BTreeSet<String>>> {
    if matches!(remote, Remote::Share(_)) {
        return Ok(None);
    }
    let mut mine = BTreeSet::new();
    for dir in [OUTBOX, SENT, REJECTED] {
        mine.extend(list_files(&home.dir(dir))?);
    }
    Ok(Some(mine))
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot delete {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn confirm(what: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("this deletes {what}; not a terminal to ask on, so pass --yes to confirm");
    }
    eprint!("This deletes {what}.\nType yes to go on: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}
