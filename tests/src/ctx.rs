//! Writes CyberTracker Classic `.CTX` uploads the way the device builds them, for tests.
//!
//! Written from the layout in CyberTracker's own source (repository
//! `CyberTrackerConservation/ctmobile`, folder `lib/classic`), independently of the
//! reader in `ctdata-batch`; each piece names the structure it follows:
//! - `SIGHTING_EXPORT_HEADER` (`Main/ctSighting.h`, `#pragma pack(1)`, `BOOL` is one
//!   byte) and `CctSighting::BuildExport` / `WriteDoubleAttribute` (`Main/ctSighting.cpp`);
//! - `FXVARIANT` and the `FXDATATYPE` numbering, `Type_VariantToStream`, `WriteType`
//!   (`Framework/fxTypes.h/.cpp`); `EncodeDateTime` (`Framework/fxUtils.cpp`);
//! - `WAYPOINT` (`Main/ctWaypoint.h`); `CreateCTX`, `BuildFileName`, the 16 MB
//!   `CTX_QUOTA_SIZE` split and `Info.xml` (`Main/ctSession.cpp`);
//! - `CreateCAB` (`Host/Common/Cab.cpp`): one MSZIP folder, 32 KiB blocks each deflated
//!   on its own, set id 1234, version 1.3, the archive attribute on every file.

use flate2::{Compress, Compression, FlushCompress};
use uuid::Uuid;

/// `CTX_QUOTA_SIZE`: a part stops taking sightings once its Sightings.dat is past this.
pub const QUOTA: usize = 16 * 1024 * 1024;

/// `FXDATATYPE` as the device numbers it.
pub mod dt {
    pub const NULL: u8 = 0;
    pub const BOOLEAN: u8 = 1;
    pub const INT32: u8 = 5;
    pub const DOUBLE: u8 = 6;
    pub const DATE: u8 = 7;
    pub const TIME: u8 = 8;
    pub const GUID: u8 = 11;
    pub const GRAPHIC: u8 = 15;
    pub const SOUND: u8 = 16;
    pub const TEXT_UTF8: u8 = 18;
}

/// The element GUIDs `ctSession.h` defines, as `GUID` initialisers read them.
pub mod element {
    use uuid::Uuid;
    pub const DATE: Uuid = Uuid::from_u128(0x4764f5e6_15a1_48bf_808a_f673ed7cdcda);
    pub const TIME: Uuid = Uuid::from_u128(0xeb86279a_e032_43d2_b4a8_8b8b2892b10e);
    pub const LATITUDE: Uuid = Uuid::from_u128(0xf6636a2d_2e9a_474d_a77d_2e1bae1ef857);
    pub const LONGITUDE: Uuid = Uuid::from_u128(0xd93e86a8_2629_44fe_afc4_2ec510fb1820);
    pub const ALTITUDE: Uuid = Uuid::from_u128(0x3e2df3a5_4d01_47b9_8ec6_a31083a3bc18);
    pub const ACCURACY: Uuid = Uuid::from_u128(0x4fb2c6b9_08dd_47b9_93f1_af5fa8ee63c4);
}

/// `FXGPS_QUALITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fix {
    None = 0,
    TwoD = 1,
    ThreeD = 2,
}

/// A wall-clock time as `FXDATETIME` holds it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Clock {
    /// `EncodeDateTime`: days since 1899-12-30 (day 693594 counted from 0001-01-01),
    /// the time of day as the fraction.
    pub fn encode(&self) -> f64 {
        let y = self.year;
        let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let months = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        let day_of_year: u32 = self.day + months[..(self.month - 1) as usize].iter().sum::<u32>();
        let y = self.year - 1;
        let days = y * 365 + y / 4 - y / 100 + y / 400 + day_of_year - 693_594;
        let ms = ((self.hour * 60 + self.minute) * 60 + self.second) * 1000;
        f64::from(days) + f64::from(ms) / 86_400_000.0
    }
}

/// One attribute after the fix: `ElementGuid` then an `FXVARIANT` (type byte, size).
#[derive(Debug, Clone)]
pub struct Attr {
    pub element: Uuid,
    pub kind: u8,
    pub data: Vec<u8>,
}

impl Attr {
    pub fn text(element: Uuid, s: &str) -> Attr {
        // TypeTextUtf8ToStream: strlen + 1, the NUL included.
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        Attr {
            element,
            kind: dt::TEXT_UTF8,
            data,
        }
    }
    pub fn double(element: Uuid, x: f64) -> Attr {
        Attr {
            element,
            kind: dt::DOUBLE,
            data: x.to_le_bytes().to_vec(),
        }
    }
    pub fn int32(element: Uuid, n: i32) -> Attr {
        Attr {
            element,
            kind: dt::INT32,
            data: n.to_le_bytes().to_vec(),
        }
    }
    /// A list selection: the element itself is the observation, the value is null.
    pub fn null(element: Uuid) -> Attr {
        Attr {
            element,
            kind: dt::NULL,
            data: vec![],
        }
    }
    /// A value that names another element (`dtGuid`, written Data1/2/3 little-endian).
    pub fn guid(element: Uuid, value: Uuid) -> Attr {
        Attr {
            element,
            kind: dt::GUID,
            data: guid_bytes(value).to_vec(),
        }
    }
    /// `WriteMediaAttribute`: the file's bytes inline, typed graphic or sound.
    pub fn media(element: Uuid, sound: bool, bytes: Vec<u8>) -> Attr {
        let kind = if sound { dt::SOUND } else { dt::GRAPHIC };
        Attr {
            element,
            kind,
            data: bytes,
        }
    }
    pub fn raw(element: Uuid, kind: u8, data: Vec<u8>) -> Attr {
        Attr {
            element,
            kind,
            data,
        }
    }
}

/// One sighting as `CctSighting` holds it before `BuildExport`.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub id: Uuid,
    pub at: Clock,
    pub fix: Fix,
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: f64,
    pub accuracy: f64,
    pub deleted: bool,
    pub attributes: Vec<Attr>,
}

/// One `WAYPOINT` record.
#[derive(Debug, Clone)]
pub struct Waypoint {
    pub id: Uuid,
    pub at: Clock,
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: f64,
    pub accuracy: f64,
    pub deleted: bool,
}

/// A `GUID` struct's 16 bytes in memory: `Data1` (u32), `Data2`, `Data3` (u16) little-
/// endian, then `Data4` as is.
pub fn guid_bytes(u: Uuid) -> [u8; 16] {
    let (d1, d2, d3, d4) = u.as_fields();
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&d1.to_le_bytes());
    b[4..6].copy_from_slice(&d2.to_le_bytes());
    b[6..8].copy_from_slice(&d3.to_le_bytes());
    b[8..16].copy_from_slice(d4);
    b
}

/// A multi-character constant such as `'SIGT'` as the compiler makes it, stored as the
/// little-endian `UINT` the device writes.
fn magic(s: &[u8; 4]) -> [u8; 4] {
    let v = u32::from(s[0]) << 24 | u32::from(s[1]) << 16 | u32::from(s[2]) << 8 | u32::from(s[3]);
    v.to_le_bytes()
}

fn variant(out: &mut Vec<u8>, element: Uuid, kind: u8, data: &[u8]) {
    out.extend_from_slice(&guid_bytes(element));
    out.push(kind);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// `BuildExport` for one sighting, appended to `out`.
pub fn sighting_record(out: &mut Vec<u8>, s: &Sighting, device: Uuid) {
    let encoded = s.at.encode();
    let created = encoded as u32; // (UINT)EncodeDateTime(...): whole days
    let start = out.len();
    out.extend_from_slice(&magic(b"SIGT"));
    out.extend_from_slice(&guid_bytes(s.id));
    out.extend_from_slice(&guid_bytes(device));
    out.extend_from_slice(&created.to_le_bytes()); // DateCreated
    out.extend_from_slice(&created.to_le_bytes()); // DateCurrent
    out.push(u8::from(s.deleted));
    out.push(0); // CheckedOut
    out.extend_from_slice(&0u32.to_le_bytes()); // AttributeSize, fixed below
    assert_eq!(
        out.len() - start,
        50,
        "SIGHTING_EXPORT_HEADER is 50 bytes packed"
    );
    variant(
        out,
        element::DATE,
        dt::DATE,
        &f64::from(created).to_le_bytes(),
    );
    variant(
        out,
        element::TIME,
        dt::TIME,
        &(encoded - f64::from(created)).to_le_bytes(),
    );
    if s.fix > Fix::None {
        variant(
            out,
            element::LATITUDE,
            dt::DOUBLE,
            &s.latitude.to_le_bytes(),
        );
        variant(
            out,
            element::LONGITUDE,
            dt::DOUBLE,
            &s.longitude.to_le_bytes(),
        );
        if s.fix >= Fix::ThreeD {
            variant(
                out,
                element::ALTITUDE,
                dt::DOUBLE,
                &s.altitude.to_le_bytes(),
            );
        }
        if s.accuracy > 0.0 && s.accuracy < 50.0 {
            variant(
                out,
                element::ACCURACY,
                dt::DOUBLE,
                &s.accuracy.to_le_bytes(),
            );
        }
    }
    for a in &s.attributes {
        variant(out, a.element, a.kind, &a.data);
    }
    let size = (out.len() - start - 50) as u32;
    out[start + 46..start + 50].copy_from_slice(&size.to_le_bytes());
}

/// One `WAYPOINT`, 85 bytes packed.
pub fn waypoint_record(out: &mut Vec<u8>, w: &Waypoint, device: Uuid) {
    let start = out.len();
    out.extend_from_slice(&magic(b"WAY2"));
    out.extend_from_slice(&guid_bytes(w.id));
    out.extend_from_slice(&guid_bytes(device));
    let t = w.at.encode();
    for x in [t, t, w.latitude, w.longitude, w.altitude, w.accuracy] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.push(u8::from(w.deleted));
    assert_eq!(out.len() - start, 85, "WAYPOINT is 85 bytes packed");
}

/// The Info.xml `CreateCTX` writes.
pub fn info_xml(source_database: &str, version: u32) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\"?>\r\n<Info>\r\n\t<CTXVersion>{version}</CTXVersion>\r\n\t<SourceDatabase>{}</SourceDatabase>\r\n</Info>\r\n",
        source_database.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    )
    .into_bytes()
}

/// `Elements.txt`: one `{GUID}<TAB>name` line per element.
pub fn elements_txt(elements: &[(Uuid, &str)]) -> Vec<u8> {
    elements
        .iter()
        .map(|(g, n)| format!("{{{}}}\t{n}\r\n", g.to_string().to_uppercase()))
        .collect::<String>()
        .into_bytes()
}

/// A whole upload: what `CreateCTX` gathers before `CreateCAB`.
#[derive(Debug, Clone)]
pub struct Upload {
    pub database: String,
    pub device: Uuid,
    pub elements: Vec<(Uuid, String)>,
    pub sightings: Vec<Sighting>,
    pub waypoints: Vec<Waypoint>,
    pub version: u32,
}

impl Upload {
    /// `BuildFileName` then `_<n>.CTX`: the database's file name cut to 16 characters
    /// (letters and digits, others as `_`), `_`, the upload GUID as 32 hex digits.
    pub fn file_name(&self, upload: Uuid, part: usize) -> String {
        let base: String = self
            .database
            .rsplit(['\\', '%'])
            .next()
            .unwrap_or("")
            .chars()
            .take_while(|c| *c != '.')
            .take(16)
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let id: String = guid_bytes_hex(upload);
        format!("{base}_{id}_{part}.CTX")
    }

    /// The CAB parts, split the way `CreateCTX` does at `quota` bytes of Sightings.dat.
    pub fn parts(&self, quota: usize) -> Vec<Vec<u8>> {
        let mut parts = Vec::new();
        let mut next = 0;
        let mut waypoints_done = false;
        loop {
            let mut dat = Vec::new();
            while next < self.sightings.len() && dat.len() <= quota {
                sighting_record(&mut dat, &self.sightings[next], self.device);
                next += 1;
            }
            let mut way = Vec::new();
            if !waypoints_done && next == self.sightings.len() {
                for w in &self.waypoints {
                    waypoint_record(&mut way, w, self.device);
                }
                waypoints_done = true;
            }
            let elements: Vec<(Uuid, &str)> = self
                .elements
                .iter()
                .map(|(g, n)| (*g, n.as_str()))
                .collect();
            let mut files: Vec<(&str, Vec<u8>)> = vec![
                ("Elements.txt", elements_txt(&elements)),
                ("Info.xml", info_xml(&self.database, self.version)),
            ];
            if !dat.is_empty() {
                files.push(("Sightings.dat", dat));
            }
            if !way.is_empty() {
                files.push(("Waypoints.dat", way));
            }
            parts.push(cabinet(&files));
            if next == self.sightings.len() {
                return parts;
            }
        }
    }

    pub fn single(&self) -> Vec<u8> {
        let mut parts = self.parts(QUOTA);
        assert_eq!(parts.len(), 1, "more than one part");
        parts.remove(0)
    }
}

fn guid_bytes_hex(u: Uuid) -> String {
    // AllocGuidName prints Data1..Data4 as hex digits, which is the UUID's own order.
    u.simple().to_string()
}

const BLOCK: usize = 32768;

/// The CAB checksum (`compute_checksum`): little-endian words XORed, the tail bytes
/// in the order the CAB format gives them.
fn checksum(data: &[u8], seed: u32) -> u32 {
    let mut sum = seed;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum ^= u32::from_le_bytes(w.try_into().expect("4 bytes"));
    }
    let tail = words.remainder();
    let mut t = 0u32;
    match tail.len() {
        3 => t = u32::from(tail[0]) << 16 | u32::from(tail[1]) << 8 | u32::from(tail[2]),
        2 => t = u32::from(tail[0]) << 8 | u32::from(tail[1]),
        1 => t = u32::from(tail[0]),
        _ => {}
    }
    sum ^ t
}

/// `CreateCAB`: the files, in order, as one MSZIP folder.
pub fn cabinet(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let blocks = total / BLOCK + 1;
    let names: usize = files.iter().map(|(n, _)| 16 + n.len() + 1).sum();
    let mut out = Vec::new();
    out.extend_from_slice(&magic(b"FCSM")); // 'FCSM' stored little-endian: "MSCF"
    out.extend_from_slice(&0u32.to_le_bytes()); // reserved
    out.extend_from_slice(&0u32.to_le_bytes()); // size, fixed below
    out.extend_from_slice(&0u32.to_le_bytes()); // reserved
    out.extend_from_slice(&0x2Cu32.to_le_bytes()); // first CFFILE
    out.extend_from_slice(&0u32.to_le_bytes()); // reserved
    out.extend_from_slice(&[3, 1]); // version 1.3
    out.extend_from_slice(&1u16.to_le_bytes()); // folders
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // flags
    out.extend_from_slice(&1234u16.to_le_bytes()); // set id
    out.extend_from_slice(&0u16.to_le_bytes()); // cabinet index
                                                // CFFOLDER
    out.extend_from_slice(&((0x2C + names) as u32).to_le_bytes());
    out.extend_from_slice(&(blocks as u16).to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // MSZIP
    let mut offset = 0u32;
    for (name, data) in files {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // folder index
                                                    // 2024-05-01 06:30:00 in DOS date and time
        out.extend_from_slice(&(((2024 - 1980) << 9 | 5 << 5 | 1) as u16).to_le_bytes());
        out.extend_from_slice(&((6 << 11 | 30 << 5) as u16).to_le_bytes());
        out.extend_from_slice(&0x20u16.to_le_bytes()); // archive
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        offset += data.len() as u32;
    }
    let all: Vec<u8> = files.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    for i in 0..blocks {
        let raw = &all[(i * BLOCK).min(all.len())..((i + 1) * BLOCK).min(all.len())];
        let mut packed = Vec::new();
        if !raw.is_empty() {
            packed.extend_from_slice(b"CK");
            let mut z = Compress::new(Compression::best(), false);
            packed.reserve(raw.len() + 1024);
            z.compress_vec(raw, &mut packed, FlushCompress::Finish)
                .expect("deflate");
        }
        let mut sizes = Vec::new();
        sizes.extend_from_slice(&(packed.len() as u16).to_le_bytes());
        sizes.extend_from_slice(&(raw.len() as u16).to_le_bytes());
        let sum = checksum(&sizes, checksum(&packed, 0));
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&sizes);
        out.extend_from_slice(&packed);
    }
    let size = out.len() as u32;
    out[8..12].copy_from_slice(&size.to_le_bytes());
    out
}

/// `FXSENDDATA` as the device writes it to `<name>.OUT`: magic `'FTPD'`, protocol, URL,
/// user and password in plain text (392 bytes).
pub fn out_file(url: &str, user: &str, password: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&magic(b"FTPD"));
    out.extend_from_slice(&1u32.to_le_bytes()); // FXSENDDATA_PROTOCOL_FTP
    for (s, n) in [(url, 256), (user, 64), (password, 64)] {
        let mut field = s.as_bytes().to_vec();
        field.resize(n, 0);
        out.extend_from_slice(&field);
    }
    assert_eq!(out.len(), 392);
    out
}
