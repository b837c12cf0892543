//! CTX uploads: the reader against CTX files built the way the device builds them
//! (`ctdata_tests::ctx`): field by field, the fix variants, media, element references,
//! deleted sightings, the 16 MB split, and refusals that name the record.

use std::ops::ControlFlow;
use std::path::Path;

use ctdata_batch::{Format, Limits, RejectKind, Sighting};
use ctdata_tests::ctx::{self, Attr, Clock, Fix, Upload, Waypoint};
use serde_json::{json, Value};
use uuid::Uuid;

const SPECIES: Uuid = Uuid::from_u128(0x11111111_2222_4333_8444_555555555555);
const ELEPHANT: Uuid = Uuid::from_u128(0x22222222_3333_4444_8555_666666666666);
const COUNT: Uuid = Uuid::from_u128(0x33333333_4444_4555_8666_777777777777);
const NOTES: Uuid = Uuid::from_u128(0x44444444_5555_4666_8777_888888888888);
const PHOTO: Uuid = Uuid::from_u128(0x82d16c8e_776e_4e8b_a459_6ebf62e50076);
const BEHAVIOUR: Uuid = Uuid::from_u128(0x55555555_6666_4777_8888_999999999999);
const FEEDING: Uuid = Uuid::from_u128(0x66666666_7777_4888_8999_aaaaaaaaaaaa);
const OBSERVER: Uuid = Uuid::from_u128(0x77777777_8888_4999_8aaa_bbbbbbbbbbbb);
const DEVICE: Uuid = Uuid::from_u128(0x0d6a9b12_3c4e_4f50_8a61_7b2c9d0e1f23);

fn clock(hour: u32, minute: u32, second: u32) -> Clock {
    Clock {
        year: 2024,
        month: 5,
        day: 1,
        hour,
        minute,
        second,
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x6f1c2a44_0b7e_4c5d_9a31_000000000000 + n)
}

/// JPEG start, then bytes that differ per photo.
pub fn photo(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0xff, 0xd8, 0xff, 0xe0];
    let mut x = u32::from(seed) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

fn elements() -> Vec<(Uuid, String)> {
    [
        (SPECIES, "Species"),
        (ELEPHANT, "Loxodonta africana"),
        (COUNT, "Count"),
        (NOTES, "Notes"),
        (PHOTO, "Photo"),
        (BEHAVIOUR, "Behaviour"),
        (FEEDING, "Feeding"),
        (OBSERVER, "Observer"),
    ]
    .into_iter()
    .map(|(g, n)| (g, n.to_string()))
    .collect()
}

/// Four sightings (3D fix with accuracy, 2D fix without, a deleted one, one with a
/// photo and an element reference) and two waypoints (one deleted).
pub fn upload() -> Upload {
    let base = |n: u128, at: Clock, fix: Fix, accuracy: f64| ctx::Sighting {
        id: id(n),
        at,
        fix,
        latitude: -24.99312,
        longitude: 31.59012,
        altitude: 312.5,
        accuracy,
        deleted: false,
        attributes: vec![],
    };
    let mut s1 = base(1, clock(6, 32, 10), Fix::ThreeD, 4.0);
    s1.attributes = vec![
        Attr::guid(SPECIES, ELEPHANT),
        Attr::int32(COUNT, 7),
        Attr::text(OBSERVER, "T. Mokoena"),
        Attr::null(FEEDING),
    ];
    let mut s2 = base(2, clock(7, 5, 44), Fix::TwoD, 0.0);
    s2.latitude = -24.9812;
    s2.longitude = 31.60355;
    s2.attributes = vec![Attr::text(NOTES, "tracks only, ü")];
    let mut s3 = base(3, clock(7, 30, 0), Fix::ThreeD, 75.0);
    s3.deleted = true;
    s3.attributes = vec![Attr::text(NOTES, "entered by mistake")];
    let mut s4 = base(4, clock(8, 0, 1), Fix::ThreeD, 12.5);
    s4.attributes = vec![
        Attr::guid(BEHAVIOUR, FEEDING),
        Attr::media(PHOTO, false, photo(70_000, 4)),
        Attr::double(COUNT, 2.0),
    ];
    let way = |n: u128, deleted: bool| Waypoint {
        id: id(100 + n),
        at: clock(6, 0, n as u32),
        latitude: -24.99,
        longitude: 31.59,
        altitude: 300.0,
        accuracy: 5.0,
        deleted,
    };
    Upload {
        database: "C:\\Data\\Kruger Rangers 2024.mdb".into(),
        device: DEVICE,
        elements: elements(),
        sightings: vec![s1, s2, s3, s4],
        waypoints: vec![way(1, false), way(2, true)],
        version: 3295,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn read_all(path: &Path) -> Result<(ctdata_batch::Scan, Vec<Sighting>), ctdata_batch::Rejection> {
    let limits = Limits::default();
    let scan = ctdata_batch::scan(path, &limits)?;
    let mut rows = Vec::new();
    ctdata_batch::read(path, &scan, &limits, |s| {
        rows.push(s);
        ControlFlow::Continue(())
    })?;
    Ok((scan, rows))
}

#[test]
fn writer_follows_the_packed_structures() {
    // SIGHTING_EXPORT_HEADER: 'SIGT' little-endian, GUID Data1..3 little-endian, whole
    // days, BOOL flags of one byte, the attribute size.
    let mut out = Vec::new();
    let s = &upload().sightings[0];
    ctx::sighting_record(&mut out, s, DEVICE);
    assert_eq!(&out[0..4], b"TGIS");
    assert_eq!(&out[4..8], &[0x44, 0x2a, 0x1c, 0x6f]); // Data1 0x6f1c2a44 little-endian
    assert_eq!(&out[4 + 6..4 + 8], &[0x5d, 0x4c]); // Data3 0x4c5d little-endian
    assert_eq!(&out[4 + 8..4 + 10], &[0x9a, 0x31]); // Data4 as is
    assert_eq!(u32::from_le_bytes(out[36..40].try_into().unwrap()), 45413); // 2024-05-01
    assert_eq!(out[40..44], out[36..40]);
    assert_eq!((out[44], out[45]), (0, 0));
    let size = u32::from_le_bytes(out[46..50].try_into().unwrap()) as usize;
    assert_eq!(size, out.len() - 50);
    // First attribute: the date element, dtDate (7), 8 bytes, the day as a double.
    assert_eq!(&out[50..54], &[0xe6, 0xf5, 0x64, 0x47]);
    assert_eq!(out[66], 7);
    assert_eq!(u32::from_le_bytes(out[67..71].try_into().unwrap()), 8);
    assert_eq!(f64::from_le_bytes(out[71..79].try_into().unwrap()), 45413.0);
    // Then dtTime (8): the fraction of the day, 06:32:10.
    assert_eq!(out[79 + 16], 8);
    let t = f64::from_le_bytes(out[79 + 21..79 + 29].try_into().unwrap());
    assert!((t * 86400.0 - (6.0 * 3600.0 + 32.0 * 60.0 + 10.0)).abs() < 1e-3);
    // The cabinet: "MSCF", its own size, version 1.3, set id 1234, MSZIP.
    let cab = upload().single();
    assert_eq!(&cab[0..4], b"MSCF");
    assert_eq!(
        u32::from_le_bytes(cab[8..12].try_into().unwrap()) as usize,
        cab.len()
    );
    assert_eq!((cab[24], cab[25]), (3, 1));
    assert_eq!(u16::from_le_bytes(cab[32..34].try_into().unwrap()), 1234);
    assert_eq!(u16::from_le_bytes(cab[42..44].try_into().unwrap()), 1);
    assert_eq!(
        upload().file_name(DEVICE, 0),
        "Kruger_Rangers_2_0d6a9b123c4e4f508a617b2c9d0e1f23_0.CTX"
    );
}

#[test]
fn a_sighting_without_a_fix_is_counted_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = upload();
    let mut unplaced = up.sightings[1].clone();
    unplaced.id = id(9);
    unplaced.fix = Fix::None;
    up.sightings.push(unplaced);
    let path = write(dir.path(), "Kruger_0.CTX", &up.single());
    let (scan, rows) = read_all(&path).expect("a CTX with an unplaced sighting");
    assert_eq!(scan.declared_count, Some(3));
    assert_eq!((scan.deleted, scan.no_position), (1, 1));
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.id != id(9)));
}

#[test]
fn reads_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "Kruger_0.CTX", &upload().single());
    let (scan, rows) = read_all(&path).expect("a valid CTX");
    assert_eq!(scan.format, Format::Ctx);
    assert_eq!(scan.declared_count, Some(3));
    assert_eq!((scan.deleted, scan.waypoints), (1, 1));
    assert_eq!(rows.len(), 3, "the deleted sighting is not read");
    let s1 = &rows[0];
    assert_eq!(s1.id, id(1));
    assert_eq!(s1.observed_at.to_rfc3339(), "2024-05-01T06:32:10+00:00");
    assert_eq!((s1.latitude, s1.longitude), (-24.99312, 31.59012));
    assert_eq!((s1.altitude, s1.accuracy), (Some(312.5), Some(4.0)));
    assert_eq!(s1.count, Some(7));
    assert_eq!(s1.observer.as_deref(), Some("T. Mokoena"));
    assert_eq!(
        s1.species.as_deref(),
        Some("Loxodonta africana"),
        "element reference resolved"
    );
    assert_eq!(s1.attributes["Feeding"], Value::Null, "a selected element");
    assert_eq!(s1.attributes["deviceId"], json!(DEVICE.to_string()));
    assert_eq!(
        s1.attributes["dbName"],
        json!("C:\\Data\\Kruger Rangers 2024.mdb")
    );
    let s2 = &rows[1];
    assert_eq!(s2.observed_at.to_rfc3339(), "2024-05-01T07:05:44+00:00");
    assert_eq!(
        (s2.altitude, s2.accuracy),
        (None, None),
        "2D fix, no accuracy"
    );
    assert_eq!(s2.attributes["Notes"], json!("tracks only, ü"));
    let s4 = &rows[2];
    assert_eq!(s4.id, id(4));
    assert_eq!(s4.accuracy, Some(12.5));
    assert_eq!(s4.count, Some(2));
    assert_eq!(s4.attributes["Behaviour"], json!("Feeding"));
    let bytes = photo(70_000, 4);
    let sha = {
        use sha2_shim::digest;
        digest(&bytes)
    };
    let name = format!("{}-0", id(4));
    assert_eq!(s4.attributes["Photo"], json!(name));
    assert_eq!(
        s4.attributes["attachments"],
        json!([{"kind": "graphic", "media_type": "image/jpeg", "size": 70_000,
                "sha256": sha, "element": "Photo", "name": name}])
    );
}

/// sha256 via the system's sha256sum: an independent hash of the media bytes.
mod sha2_shim {
    pub fn digest(bytes: &[u8]) -> String {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sha256sum");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }
}

#[test]
fn times_are_read_at_the_configured_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "k_0.CTX", &upload().single());
    let limits = Limits {
        ctx_utc_offset_minutes: 120,
        ..Limits::default()
    };
    let scan = ctdata_batch::scan(&path, &limits).unwrap();
    let mut first = None;
    ctdata_batch::read(&path, &scan, &limits, |s| {
        first.get_or_insert(s.observed_at.to_rfc3339());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(first.as_deref(), Some("2024-05-01T06:32:10+02:00"));
}

#[test]
fn split_at_sixteen_megabytes_reads_each_sighting_once() {
    let mut up = upload();
    up.sightings.truncate(1);
    for n in 0..4u8 {
        let mut s = up.sightings[0].clone();
        s.id = id(10 + u128::from(n));
        s.attributes = vec![Attr::media(PHOTO, false, photo(6 << 20, n + 1))];
        up.sightings.push(s);
    }
    let parts = up.parts(ctx::QUOTA);
    assert_eq!(
        parts.len(),
        2,
        "four 6 MB photos after one small sighting: two parts"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let path = write(dir.path(), &up.file_name(DEVICE, i), part);
        let (scan, rows) = read_all(&path).expect("a valid part");
        assert_eq!(scan.declared_count, Some(rows.len() as u64));
        ids.extend(rows.iter().map(|r| r.id));
    }
    let mut want: Vec<Uuid> = up.sightings.iter().map(|s| s.id).collect();
    want.sort();
    ids.sort();
    assert_eq!(ids, want, "every sighting in exactly one part");
}

fn refused(bytes: &[u8]) -> ctdata_batch::Rejection {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.CTX", bytes);
    read_all(&path).expect_err("refused")
}

fn member_cab(sightings: Vec<u8>, version: u32) -> Vec<u8> {
    ctx::cabinet(&[
        ("Info.xml", ctx::info_xml("x", version)),
        ("Sightings.dat", sightings),
    ])
}

#[test]
fn refusals_name_the_record() {
    let mut dat = Vec::new();
    for s in &upload().sightings {
        ctx::sighting_record(&mut dat, s, DEVICE);
    }
    let first_len = {
        let mut one = Vec::new();
        ctx::sighting_record(&mut one, &upload().sightings[0], DEVICE);
        one.len()
    };
    // Record 1 declares more attribute bytes than Sightings.dat holds.
    let mut overrun = dat.clone();
    overrun[first_len + 46..first_len + 50].copy_from_slice(&u32::MAX.to_le_bytes());
    let r = refused(&member_cab(overrun, 3295));
    assert_eq!(r.kind, RejectKind::Syntax);
    assert!(
        r.summary.contains("Sightings.dat[1]") && r.summary.contains("overruns"),
        "{r}"
    );
    // Record 1 with a broken magic.
    let mut magic = dat.clone();
    magic[first_len] = b'X';
    let r = refused(&member_cab(magic, 3295));
    assert!(
        r.summary.contains("record 1") && r.summary.contains("SIGT"),
        "{r}"
    );
    // An unknown data type in record 0.
    let mut up = upload();
    up.sightings[0]
        .attributes
        .push(Attr::raw(NOTES, 42, vec![1, 2]));
    let mut bad = Vec::new();
    ctx::sighting_record(&mut bad, &up.sightings[0], DEVICE);
    let r = refused(&member_cab(bad, 3295));
    assert!(
        r.summary.contains("Sightings.dat[0]") && r.summary.contains("unknown data type 42"),
        "{r}"
    );
    // A record of a hundred thousand tiny attributes: refused before it fills memory.
    let mut up = upload();
    up.sightings[0].attributes = (1..100_000u128)
        .map(|i| {
            Attr::null(Uuid::from_u128(
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
            ))
        })
        .collect();
    let mut many = Vec::new();
    ctx::sighting_record(&mut many, &up.sightings[0], DEVICE);
    let r = refused(&member_cab(many, 3295));
    assert_eq!(r.kind, RejectKind::TooLarge, "{r}");
    assert!(r.summary.contains("Sightings.dat[0]"), "{r}");
    // The last record cut short.
    let r = refused(&member_cab(dat[..dat.len() - 3].to_vec(), 3295));
    assert!(r.summary.contains("Sightings.dat[3]"), "{r}");
    // Unknown CTXVersion.
    let r = refused(&member_cab(dat.clone(), 4000));
    assert_eq!(r.kind, RejectKind::Header);
    assert!(r.summary.contains("unknown CTXVersion 4000"), "{r}");
    // No Sightings.dat (and no Waypoints.dat).
    let r = refused(&ctx::cabinet(&[("Info.xml", ctx::info_xml("x", 3295))]));
    assert!(r.summary.contains("no Sightings.dat"), "{r}");
    // A damaged archive: a data block's bytes changed (its checksum no longer fits).
    let mut cab = upload().single();
    let n = cab.len();
    cab[n - 10] ^= 0xff;
    let r = refused(&cab);
    assert_eq!(r.kind, RejectKind::Compression, "{r}");
    assert!(r.summary.contains("damaged CTX"), "{r}");
    // Cut short in transfer.
    let cab = upload().single();
    let r = refused(&cab[..cab.len() / 2]);
    assert_eq!(r.kind, RejectKind::Truncated, "{r}");
    // A latitude out of range is a row problem naming the record.
    let mut up = upload();
    up.sightings[1].latitude = 95.0;
    let r = refused(&up.single());
    assert_eq!(r.kind, RejectKind::InvalidRows);
    assert!(
        r.problems[0].to_string().contains("Sightings.dat[1]"),
        "{r}"
    );
}

#[test]
fn waypoints_only_upload_has_no_sightings() {
    let mut up = upload();
    up.sightings.clear();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "w.CTX", &up.single());
    let (scan, rows) = read_all(&path).expect("valid");
    assert_eq!((rows.len(), scan.waypoints), (0, 1));
}

#[test]
fn waypoints_become_track_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "w.CTX", &upload().single());
    let limits = Limits::default();
    let scan = ctdata_batch::scan(&path, &limits).unwrap();
    let extras = ctdata_batch::tracks::extras(&path, &scan, &limits).unwrap();
    assert!(extras.patrol_events.is_empty());
    let track: Vec<_> = extras
        .track
        .iter()
        .map(|p| {
            (
                p.time.to_rfc3339(),
                p.latitude,
                p.longitude,
                p.altitude,
                p.accuracy,
            )
        })
        .collect();
    assert_eq!(
        track,
        vec![(
            "2024-05-01T06:00:01+00:00".to_string(),
            -24.99,
            31.59,
            Some(300.0),
            Some(5.0)
        )],
        "the deleted waypoint is left out"
    );
    // The device's clock offset applies to waypoints as to sightings.
    let east = Limits {
        ctx_utc_offset_minutes: 120,
        ..Limits::default()
    };
    let extras = ctdata_batch::tracks::extras(&path, &scan, &east).unwrap();
    assert_eq!(
        extras.track[0].time.to_rfc3339(),
        "2024-05-01T06:00:01+02:00"
    );
    // No Waypoints.dat: no track points.
    let mut up = upload();
    up.waypoints.clear();
    let path = write(dir.path(), "s.CTX", &up.single());
    let scan = ctdata_batch::scan(&path, &limits).unwrap();
    let extras = ctdata_batch::tracks::extras(&path, &scan, &limits).unwrap();
    assert!(extras.is_empty());
}

#[test]
fn a_bad_waypoint_refuses_the_file_by_index_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |up: &Upload| {
        let path = write(dir.path(), "bad.CTX", &up.single());
        ctdata_batch::scan(&path, &Limits::default()).expect_err("refused")
    };
    let mut up = upload();
    up.waypoints[0].latitude = 91.5;
    let r = refused(&up);
    assert_eq!(r.kind, RejectKind::InvalidRows, "{r}");
    assert!(
        r.to_string().contains("Waypoints.dat[0].latitude") && r.to_string().contains("91.5"),
        "{r}"
    );
    let mut up = upload();
    up.waypoints[0].longitude = f64::NAN;
    let r = refused(&up);
    assert!(r.to_string().contains("Waypoints.dat[0].longitude"), "{r}");
    // A deleted waypoint is not checked: it is stored nowhere.
    let mut up = upload();
    up.waypoints[1].latitude = 500.0;
    let path = write(dir.path(), "ok.CTX", &up.single());
    assert!(ctdata_batch::scan(&path, &Limits::default()).is_ok());
}

// ---- Through the server, every channel ---------------------------------------------

use std::time::Duration;

use ctdata_tests::ftp::{curl, ftp_url, wait_for_batches};
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};

const NAME: &str = "ct-classic-02";
const PASSWORD: &str = "s3cret-Pa55word";
const URL: &str = "ftp://ranger.example.org/CTData";
const USER: &str = "kruger-upload";

/// Every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// No `.OUT` file and no file holding the password anywhere in the drop directory.
fn no_credentials_kept(drop_dir: &Path) {
    for f in files_below(drop_dir) {
        let name = f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_ascii_lowercase();
        assert!(!name.ends_with(".out"), "kept: {}", f.display());
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password is kept in {}",
            f.display()
        );
    }
}

async fn sightings(base: &str, admin: &str) -> Vec<Value> {
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {admin}"),
        &format!("{base}/api/v1/sightings?format=ndjson"),
    ]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The tracks export as CSV.
fn track_csv(base: &str, admin: &str) -> String {
    let out = curl(&[
        "-sf",
        "-H",
        &format!("Authorization: Bearer {admin}"),
        &format!("{base}/api/v1/tracks?format=csv"),
    ]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

async fn ctx_channels(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    // The devices' clocks run at UTC+02:00.
    env.set("CTDATA__INGEST__CTX_UTC_OFFSET_MINUTES", "120");
    let token = env.device_token(NAME);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let port = server.ftp_port();
    let up = upload();
    let out = ctx::out_file(URL, USER, PASSWORD);

    // FTP, as the device uploads: straight to the final name in CTData/, the .OUT beside
    // it. Split small so the upload comes in several parts.
    let parts = up.parts(200);
    assert!(parts.len() >= 2, "{} parts", parts.len());
    let upload_id = Uuid::from_u128(0xabcdef);
    for (i, part) in parts.iter().enumerate() {
        let name = up.file_name(upload_id, i);
        let local = env.dir.path().join(&name);
        std::fs::write(&local, part).unwrap();
        let url = ftp_url(port, NAME, &token, &format!("/CTData/{name}"));
        let r = curl(&["--ftp-create-dirs", "-T", local.to_str().unwrap(), &url]);
        assert!(r.status.success(), "{r:?}");
        let out_name = name.replace(".CTX", ".OUT");
        let local_out = env.dir.path().join(&out_name);
        std::fs::write(&local_out, &out).unwrap();
        let url = ftp_url(port, NAME, &token, &format!("/CTData/{out_name}"));
        let r = curl(&["-T", local_out.to_str().unwrap(), &url]);
        assert!(r.status.success(), "{r:?}");
    }
    // An .OUT written to a temporary name and renamed into place goes the same way.
    let late = env.dir.path().join("late.OUT.part");
    std::fs::write(&late, &out).unwrap();
    let url = ftp_url(port, NAME, &token, "/CTData/late.OUT.part");
    let r = curl(&[
        "-T",
        late.to_str().unwrap(),
        "-Q",
        "-RNFR late.OUT.part",
        "-Q",
        "-RNTO late.OUT",
        &url,
    ]);
    assert!(r.status.success(), "{r:?}");
    let batches = wait_for_batches(&db, parts.len()).await;
    assert!(
        batches.iter().all(|(d, c, _)| d == NAME && c == "ftp"),
        "{batches:?}"
    );
    let stored = sightings(&base, &admin).await;
    let mut ids: Vec<String> = stored
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want: Vec<String> = [1, 2, 4].iter().map(|n| id(*n).to_string()).collect();
    want.sort();
    assert_eq!(ids, want, "each sighting once, the deleted one not at all");
    let s1 = stored
        .iter()
        .find(|s| s["id"] == json!(id(1).to_string()))
        .unwrap();
    assert_eq!(
        (
            &s1["species"],
            &s1["count"],
            &s1["device"],
            &s1["observed_at"]
        ),
        (
            &json!("Loxodonta africana"),
            &json!(7),
            &json!(NAME),
            &json!("2024-05-01T06:32:10+02:00")
        )
    );
    assert_eq!(s1["attributes"]["deviceId"], json!(DEVICE.to_string()));
    // The waypoint that is not deleted is the device's track point, at the device's
    // offset (06:00:01 at UTC+02:00).
    let one_point = "device,time,latitude,longitude,altitude,accuracy\n\
                     ct-classic-02,2024-05-01T04:00:01Z,-24.99,31.59,300,5\n";
    assert_eq!(track_csv(&base, &admin), one_point);
    // The photo inside record 4 is in the attachment store, linked to its sighting.
    let photo4 = photo(70_000, 4);
    linked_photo(&base, &admin, &env, id(4), &photo4).await;

    // HTTP POST of the whole upload as one file: a new batch, every sighting a duplicate.
    let whole = env.dir.path().join("whole.CTX");
    std::fs::write(&whole, up.single()).unwrap();
    let post = |path: &Path, ctype: &str| {
        let r = curl(&[
            "-u",
            &format!("{NAME}:{token}"),
            "-H",
            &format!("Content-Type: {ctype}"),
            "--data-binary",
            &format!("@{}", path.display()),
            "-w",
            "\n%{http_code}",
            &format!("{base}/api/v1/batches"),
        ]);
        let text = String::from_utf8(r.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse::<u16>().unwrap(),
            serde_json::from_str::<Value>(body).unwrap_or(Value::Null),
        )
    };
    let (code, receipt) = post(&whole, "application/vnd.cybertracker.ctx");
    assert_eq!(code, 201, "{receipt}");
    assert_eq!(
        (
            &receipt["format"],
            &receipt["sightings"],
            &receipt["inserted"],
            &receipt["duplicates"]
        ),
        (&json!("ctx"), &json!(3), &json!(0), &json!(3)),
        "{receipt}"
    );
    assert_eq!(
        (&receipt["track_points"], &receipt["not_stored"]),
        (&json!(1), &json!({"deleted": 1})),
        "{receipt}"
    );
    assert_eq!(
        track_csv(&base, &admin),
        one_point,
        "a waypoint sent again adds no track point"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM tracks").await, 1);
    let (code, again) = post(&whole, "application/octet-stream");
    assert_eq!(
        (code, &again["status"]),
        (200, &json!("duplicate")),
        "{again}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM tracks").await, 1);
    // Neither the new batch of stored sightings nor the resend linked the photo again.
    let links = "SELECT count(*) FROM attachment_links";
    assert_eq!(db.scalar(links).await, 1);
    linked_photo(&base, &admin, &env, id(4), &photo4).await;
    // An .OUT body over HTTP: refused, deleted, nothing of it kept.
    let out_path = env.dir.path().join("x.OUT");
    std::fs::write(&out_path, &out).unwrap();
    let (code, refused) = post(&out_path, "application/octet-stream");
    assert_eq!(code, 415, "{refused}");

    // The share: an .OUT dropped with a bad CTX; the .OUT goes, the CTX is refused by
    // its record index.
    let dev = env.drop_dir().join(NAME);
    std::fs::create_dir_all(&dev).unwrap();
    let mut bad = upload();
    for (n, s) in bad.sightings.iter_mut().enumerate() {
        s.id = id(300 + n as u128); // new ids: had any been stored, the count would show it
    }
    bad.sightings[1]
        .attributes
        .push(Attr::raw(NOTES, 99, vec![0; 3]));
    std::fs::write(dev.join("bad_0.OUT"), &out).unwrap();
    std::fs::write(dev.join("bad_0.CTX"), bad.single()).unwrap();
    let reasons = eventually("the bad CTX refused", Duration::from_secs(60), || async {
        let r = ctdata_tests::rejected_reasons(&env.drop_dir());
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        reasons.iter().any(
            |(_, why)| why.contains("Sightings.dat[1]") && why.contains("unknown data type 99")
        ),
        "{reasons:?}"
    );
    eventually(
        "the shared .OUT deleted",
        Duration::from_secs(60),
        || async { (!dev.join("bad_0.OUT").exists()).then_some(()) },
    )
    .await;

    // The command line, in place.
    let mut more = upload();
    more.sightings = vec![up.sightings[0].clone()];
    more.sightings[0].id = id(50);
    let cli_file = env.dir.path().join("cli_0.CTX");
    std::fs::write(&cli_file, more.single()).unwrap();
    let r = env
        .command(&["ingest", "--json", &cli_file.display().to_string()])
        .output()
        .unwrap();
    let line: Value =
        serde_json::from_slice(r.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(
        (&line["status"], &line["inserted"]),
        (&json!("ingested"), &json!(1)),
        "{line}"
    );

    assert_eq!(sightings(&base, &admin).await.len(), 4);
    // The command line names no device: the file is the default device's, and so is its
    // waypoint.
    assert_eq!(
        track_csv(&base, &admin),
        format!("{one_point}unassigned,2024-05-01T04:00:01Z,-24.99,31.59,300,5\n")
    );

    // The share: a CTX with a 200 kB photo, then the same file again under another name.
    let mut shared = upload();
    shared.sightings = vec![up.sightings[3].clone()];
    shared.sightings[0].id = id(60);
    let big = photo(200_000, 9);
    shared.sightings[0].attributes = vec![Attr::media(PHOTO, false, big.clone())];
    for (n, want) in [(0, "ingested"), (1, "duplicate")] {
        let file = format!("share_{n}.CTX");
        let staged = env.dir.path().join(&file);
        std::fs::write(&staged, shared.single()).unwrap();
        std::fs::rename(&staged, dev.join(&file)).unwrap();
        let at = env
            .drop_dir()
            .join("receipts")
            .join(NAME)
            .join(format!("{file}.receipt.json"));
        let receipt: Value = eventually("the share receipt", Duration::from_secs(60), || async {
            serde_json::from_str(&std::fs::read_to_string(&at).ok()?).ok()
        })
        .await;
        assert_eq!(receipt["status"], json!(want), "{receipt}");
        linked_photo(&base, &admin, &env, id(60), &big).await;
        assert_eq!(db.scalar(links).await, 2);
    }

    assert_eq!(sightings(&base, &admin).await.len(), 5);
    no_credentials_kept(&env.drop_dir());
    let log = server.log_text();
    assert!(log.contains(".OUT"), "the deletion is logged");
    assert!(log.contains("late.OUT"), "the renamed .OUT too: {log}");
    for secret in [PASSWORD, USER, "ranger.example.org"] {
        assert!(!log.contains(secret), "the log shows {secret}");
    }
}

both_backends!(ctx_channels);

/// `[formats.cybertracker]` applies to CTX sightings as to CyberTracker uploads: the
/// mapped elements (by name or by GUID when Elements.txt does not name them) fill the
/// fields the device left empty, and one that does not fit stays an attribute.
async fn ctx_element_mapping(db: TestDb) {
    const ANIMAL: Uuid = Uuid::from_u128(0x88888888_9999_4aaa_8bbb_cccccccccccc);
    const HERD: Uuid = Uuid::from_u128(0x99999999_aaaa_4bbb_8ccc_dddddddddddd);
    const RANGER: Uuid = Uuid::from_u128(0xaaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee);
    let env = ServerEnv::new(&db);
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        format!(
            "[formats.cybertracker]\nspecies = [\"animal\"]\n\
             count = [\"Herd estimate\", \"{{{}}}\"]\nobserver = [\"Ranger on duty\"]\n",
            HERD.to_string().to_uppercase()
        ),
    )
    .unwrap();
    let token = env.device_token(NAME);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();

    let mut up = upload();
    up.elements = vec![
        (ANIMAL, "Animal".into()),
        (ELEPHANT, "Loxodonta africana".into()),
        (RANGER, "Ranger on duty".into()),
        (NOTES, "Herd estimate".into()),
    ];
    up.waypoints.clear();
    let mut s = up.sightings[0].clone();
    // HERD is not in Elements.txt: its attribute is named by its GUID.
    s.attributes = vec![
        Attr::guid(ANIMAL, ELEPHANT),
        Attr::text(NOTES, "a dozen"),
        Attr::double(HERD, 12.0),
        Attr::text(RANGER, "T. Mokoena"),
    ];
    let mut named = up.sightings[1].clone();
    // A field the device filled itself stays: the element named Count wins.
    named.attributes = vec![Attr::int32(COUNT, 3), Attr::double(HERD, 12.0)];
    up.elements.push((COUNT, "Count".into()));
    up.sightings = vec![s, named];
    let receipt = post_upload(&env, &base, &token, "mapped_0.CTX", &up);
    assert_eq!(
        (&receipt["status"], &receipt["inserted"]),
        (&json!("ingested"), &json!(2)),
        "{receipt}"
    );
    assert_eq!(receipt["track_points"], json!(0), "{receipt}");
    assert!(receipt.get("not_stored").is_none(), "{receipt}");
    let stored = sightings(&base, &admin).await;
    let find = |n: u128| {
        let s = stored
            .iter()
            .find(|s| s["id"] == json!(id(n).to_string()))
            .unwrap();
        let mut a = s["attributes"].clone();
        let a = a.as_object_mut().unwrap();
        for k in ["deviceId", "dbName"] {
            a.remove(k);
        }
        (
            s["species"].clone(),
            s["count"].clone(),
            s["observer"].clone(),
            Value::Object(a.clone()),
        )
    };
    assert_eq!(
        find(1),
        (
            json!("Loxodonta africana"),
            json!(12),
            json!("T. Mokoena"),
            json!({"Herd estimate": "a dozen"})
        ),
        "mapped by name and by GUID; a text count stays an attribute"
    );
    assert_eq!(
        find(2),
        (
            Value::Null,
            json!(3),
            Value::Null,
            json!({ (HERD.to_string()): 12 })
        ),
        "the device's own count is kept"
    );
    assert_eq!(
        track_csv(&base, &admin),
        "device,time,latitude,longitude,altitude,accuracy\n"
    );

    // A sighting saved without a GPS fix has no latitude and longitude: it is counted
    // in the receipt and left in the archived original; the others in the CTX are
    // stored (refusing the whole file would refuse it again at every resend).
    let mut unplaced = up.sightings[0].clone();
    unplaced.id = id(50);
    unplaced.fix = Fix::None;
    let mut placed = up.sightings[1].clone();
    placed.id = id(51);
    up.sightings = vec![unplaced, placed];
    let receipt = post_upload(&env, &base, &token, "nofix_0.CTX", &up);
    assert_eq!(
        (
            &receipt["status"],
            &receipt["sightings"],
            &receipt["inserted"]
        ),
        (&json!("ingested"), &json!(1), &json!(1)),
        "{receipt}"
    );
    assert_eq!(
        receipt["not_stored"],
        json!({"deleted": 0, "no_position": 1}),
        "{receipt}"
    );
    let stored = sightings(&base, &admin).await;
    let ids: Vec<&Value> = stored.iter().map(|s| &s["id"]).collect();
    assert!(ids.contains(&&json!(id(51).to_string())), "{ids:?}");
    assert!(!ids.contains(&&json!(id(50).to_string())), "{ids:?}");
    assert!(
        server.log_text().contains("saved without a GPS fix"),
        "the server's log says why a record was not stored"
    );
}

both_backends!(ctx_element_mapping);

/// POSTs `up` as one CTX file named `name` (HTTP Basic as NAME); the receipt.
fn post_upload(env: &ServerEnv, base: &str, token: &str, name: &str, up: &Upload) -> Value {
    let file = env.dir.path().join(name);
    std::fs::write(&file, up.single()).unwrap();
    let r = curl(&[
        "-u",
        &format!("{NAME}:{token}"),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{base}/api/v1/batches"),
    ]);
    serde_json::from_slice(&r.stdout).unwrap()
}

/// Sighting `id` lists exactly one file in the export, `bytes`, which the attachment
/// store gives back byte for byte.
async fn linked_photo(base: &str, admin: &str, env: &ServerEnv, id: Uuid, bytes: &[u8]) {
    let sha = sha2_shim::digest(bytes);
    let all = sightings(base, admin).await;
    let s = all
        .iter()
        .find(|s| s["id"] == json!(id.to_string()))
        .unwrap();
    let name = format!("{id}-0");
    assert_eq!(
        s["attachments"],
        json!([{"name": name, "sha256": sha, "size": bytes.len(),
                "content_type": "image/jpeg", "url": format!("/api/v1/attachments/{sha}")}]),
        "{s}"
    );
    assert_eq!(s["attributes"]["attachments"][0]["sha256"], json!(sha));
    let out = env.dir.path().join(format!("{sha}.fetched"));
    let got = curl(&[
        "-H",
        &format!("Authorization: Bearer {admin}"),
        "-o",
        &out.display().to_string(),
        "-w",
        "%{http_code}",
        &format!("{base}/api/v1/attachments/{sha}"),
    ]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "200");
    assert!(std::fs::read(&out).unwrap() == bytes, "{sha} differs");
}

/// Download from a remote FTP site (vsftpd) and from a share folder, each holding a
/// device's CTX with its .OUT beside it: the CTX is stored, the .OUT never fetched.
async fn ctx_download(db: TestDb) {
    let Some(ftp) = ctdata_tests::vsftpd::Vsftpd::start() else {
        return;
    };
    let env = ServerEnv::new(&db);
    let up = upload();
    let name = up.file_name(Uuid::from_u128(7), 0);
    let out_name = name.replace(".CTX", ".OUT");
    let out = ctx::out_file(URL, USER, PASSWORD);
    ftp.put(&format!("{NAME}/{name}"), &up.single());
    ftp.put(&format!("{NAME}/{out_name}"), &out);
    let share = tempfile::tempdir().unwrap();
    let folder = share.path().join("CTData");
    std::fs::create_dir_all(folder.join(NAME)).unwrap();
    let mut other = upload();
    for (n, s) in other.sightings.iter_mut().enumerate() {
        s.id = id(200 + n as u128);
    }
    std::fs::write(folder.join(NAME).join("share_0.CTX"), other.single()).unwrap();
    std::fs::write(folder.join(NAME).join("share_0.OUT"), &out).unwrap();
    let pass = env.dir.path().join("site.pass");
    std::fs::write(&pass, format!("{}\n", ftp.password)).unwrap();
    let config = format!(
        "[[sources]]\nname = \"site\"\nurl = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\n\
         after_download = \"keep\"\ntimeout_secs = 20\n\
         [[sources]]\nname = \"share\"\nurl = \"{}\"\nafter_download = \"keep\"\n",
        ftp.url("CTData"),
        ftp.user,
        pass.display(),
        folder.display()
    );
    std::fs::write(env.dir.path().join("ctdata.toml"), config).unwrap();
    let run = env.command(&["download", "--json"]).output().unwrap();
    let log = String::from_utf8_lossy(&run.stderr).to_string();
    let report: Value = serde_json::from_slice(&run.stdout).unwrap_or(Value::Null);
    assert!(run.status.success(), "{report:#} {log}");
    for s in report["sources"].as_array().unwrap() {
        assert_eq!((&s["found"], &s["ingested"]), (&json!(1), &json!(1)), "{s}");
    }
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 6);
    // Each download's photo is linked to its own sighting; the same bytes are one file.
    let links = "SELECT count(*) FROM attachment_links WHERE sighting_id IN ('{}', '{}')";
    let links = links
        .replacen("{}", &id(4).to_string(), 1)
        .replacen("{}", &id(203).to_string(), 1);
    assert_eq!(db.scalar(&links).await, 2);
    assert_eq!(db.scalar("SELECT count(*) FROM attachments").await, 1);
    // The default store: `attachments/` beside the drop directory, at ab/cd/<sha256>.
    let sha = sha2_shim::digest(&photo(70_000, 4));
    let file = env.drop_dir().parent().unwrap().join("attachments");
    let file = file.join(&sha[..2]).join(&sha[2..4]).join(&sha);
    assert_eq!(std::fs::read(&file).unwrap(), photo(70_000, 4));
    no_credentials_kept(&env.drop_dir());
    for secret in [PASSWORD, USER] {
        assert!(!log.contains(secret), "the log shows {secret}");
    }
}

both_backends!(ctx_download);

/// `CreateCAB` counts `size / 32768 + 1` blocks, so content of exactly 32 KiB·k ends with
/// an empty block: still a readable CTX.
#[test]
fn content_of_whole_blocks_ends_with_an_empty_block() {
    let up = upload();
    let mut dat = Vec::new();
    for s in &up.sightings {
        ctx::sighting_record(&mut dat, s, DEVICE);
    }
    let info = ctx::info_xml("x", 3295);
    let used = dat.len() + info.len();
    let mut elements = ctx::elements_txt(&[(COUNT, "Count")]);
    let target = (used + elements.len()).div_ceil(32768) * 32768;
    elements.resize(target - used, b'\n');
    let total = used + elements.len();
    assert_eq!(total % 32768, 0, "{total}");
    let cab = ctx::cabinet(&[
        ("Elements.txt", elements),
        ("Info.xml", info),
        ("Sightings.dat", dat),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (scan, rows) = read_all(&write(dir.path(), "whole.CTX", &cab)).expect("readable");
    assert_eq!((rows.len(), scan.deleted), (3, 1));
    assert_eq!(rows[0].count, Some(7));
}
