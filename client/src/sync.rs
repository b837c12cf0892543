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
use crate::{state, ClashArgs};

/// The local side of a comparison: pending batches and fetched files.
const LOCAL: [&str; 2] = [OUTBOX, INBOX];

pub fn compare(home: &Home) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    let mut remote = Remote::open(&config)?;
    let there: BTreeMap<String, u64> = remote.list()?.into_iter().collect();
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
    for (name, (dir, _)) in both {
        let verdict = remote.compare(name, there[name], &home.dir(dir).join(name))?;
        println!("  {dir}/{name}  {verdict}");
    }
    remote.close();
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

/// Copies files to the remote (a temporary name, then renamed); a batch from outbox/
/// then goes to sent/, any other file stays unless `move_files`, and even then a file
/// outside the data folder is never deleted.
pub fn push(
    home: &Home,
    files: &[String],
    move_files: bool,
    clash: ClashArgs,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    let mut remote = Remote::open(&config)?;
    let mut there: BTreeSet<String> = remote.list()?.into_iter().map(|(n, _)| n).collect();
    let root = home.root.canonicalize()?;
    let mut failed = 0;
    for file in files {
        let done = local_file(home, file).and_then(|path| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Some(target) = free_name(&name, "on the remote", clash, |n| there.contains(n))?
            else {
                return Ok(format!("skipped {name}: kept as it is on both sides"));
            };
            remote.put(&path, &target)?;
            there.insert(target.clone());
            let mut locked = state::lock(home)?;
            locked.state.pushed.insert(target.clone());
            locked.save()?;
            drop(locked);
            let inside = path.canonicalize()?.starts_with(&root);
            let here = if path.parent() == Some(home.dir(OUTBOX).as_path()) {
                move_into(&path, &home.dir(SENT))?;
                "the batch moved to sent/".to_string()
            } else if move_files && inside {
                std::fs::remove_file(&path)?;
                "removed here".to_string()
            } else if move_files {
                format!(
                    "{} kept: it is outside the data folder, and push never deletes there",
                    path.display()
                )
            } else {
                "the local copy is kept".to_string()
            };
            home.log(&format!(
                "push: {name} to {} as {target}; {here}",
                config.upload.url
            ));
            Ok(if target == name {
                format!("pushed {name}; {here}")
            } else {
                format!("pushed {name} as {target}; {here}")
            })
        });
        match done {
            Ok(line) => println!("{line}"),
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
pub fn fetch(home: &Home, files: &[String], clash: ClashArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    let mut remote = Remote::open(&config)?;
    let there: BTreeMap<String, u64> = remote.list()?.into_iter().collect();
    let inbox = home.dir(INBOX);
    let mut failed = 0;
    for name in files {
        let done = match there.get(name) {
            None => Err(anyhow::anyhow!("{name} is not on the remote")),
            Some(&size) => free_name(base_name(name), "in inbox/", clash, |n| {
                inbox.join(n).exists()
            })
            .and_then(|target| {
                let Some(target) = target else {
                    return Ok(format!("skipped {name}: kept as it is on both sides"));
                };
                let got = remote.get(name, &inbox, &target)?;
                if got != size {
                    std::fs::remove_file(inbox.join(&target))?;
                    bail!("{name}: received {got} of {size} bytes; the remote copy is kept");
                }
                remote.delete(name)?;
                home.log(&format!("fetch: {name} moved into inbox/ as {target}"));
                Ok(format!(
                    "fetched {name} into {}",
                    inbox.join(&target).display()
                ))
            }),
        };
        match done {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failed += 1;
                eprintln!("not fetched: {e:#}");
            }
        }
    }
    remote.close();
    Ok(exit(failed))
}

/// `reference/keyset.xml` → `keyset.xml`: fetched files land in inbox/ itself.
fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The name to write `name` under where `taken` names exist: the same name when it is
/// free or --overwrite, a free `NAME-2.ext` with --keep-both, else the answer to a
/// question on a terminal (None: skip); without a terminal, a refusal.
fn free_name(
    name: &str,
    place: &str,
    clash: ClashArgs,
    taken: impl Fn(&str) -> bool,
) -> anyhow::Result<Option<String>> {
    if !taken(name) || clash.overwrite {
        return Ok(Some(name.to_string()));
    }
    let keep_both = || {
        let (stem, ext) = match name.find('.') {
            Some(i) if i > 0 => name.split_at(i),
            _ => (name, ""),
        };
        (2..)
            .map(|n| format!("{stem}-{n}{ext}"))
            .find(|n| !taken(n))
            .expect("a free name")
    };
    if clash.keep_both {
        return Ok(Some(keep_both()));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "{name} already exists {place}: not overwritten. Pass --overwrite to replace \
             it, or --keep-both to keep both (the new copy under another name)"
        );
    }
    eprint!("{name} already exists {place}: [o]verwrite, [k]eep both, or [s]kip? ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(match line.trim().to_lowercase().chars().next() {
        Some('o') => Some(name.to_string()),
        Some('k') => Some(keep_both()),
        _ => None,
    })
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
            "all local sync data in {} and the files this client put at {} that the server has not taken yet",
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
        let ours = own_remote_files(home)?;
        let names = r.list()?.into_iter().map(|(n, _)| n);
        for name in names.filter(|n| ours.contains(n)) {
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
    let pushed = if remote {
        Default::default()
    } else {
        std::mem::take(&mut locked.state.pushed)
    };
    let kept = state::State {
        next_seq: locked.state.next_seq,
        imported: std::mem::take(&mut locked.state.imported),
        pushed,
        ..state::State::default()
    };
    locked.state = kept;
    locked.save()?;
    home.create()?;
    home.log(&format!("sync purge: deleted {what}"));
    println!("deleted {what}");
    Ok(ExitCode::SUCCESS)
}

/// The files this client put on the remote, by its own record: the batches it still
/// holds (outbox/, sent/, rejected/) and the names it pushed. Anything else in the
/// folder (another device's or a person's files, reference files) is not its to delete.
fn own_remote_files(home: &Home) -> anyhow::Result<BTreeSet<String>> {
    let mut mine = state::read(home)?.pushed;
    for dir in [OUTBOX, SENT, REJECTED] {
        for name in list_files(&home.dir(dir))? {
            // A batch goes over FTP as NAME or gzipped as NAME.gz, through NAME(.gz).part
            // (kept after a cut, for the next send to resume).
            for suffix in ["", ".part", ".gz", ".gz.part"] {
                mine.insert(format!("{name}{suffix}"));
            }
        }
    }
    Ok(mine)
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
