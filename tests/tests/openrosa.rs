//! The OpenRosa channel (issue 14) driven as ODK Collect drives it, from a Python script
//! over real HTTP: HEAD, a submission split over two POSTs with `*isIncomplete*`, a
//! connection cut mid-POST and the whole sequence retried, the XML from a real XLSForm
//! turned into an XForm by pyxform; 409, 400, an edit by deprecatedID, a revoked
//! token, an oversized attachment; and the stored photos read back by SHA-256.

use std::path::{Path, PathBuf};
use std::process::Command;

use ctdata_tests::openrosa::{collect, have_pyxform};
use ctdata_tests::{both_backends, ServerEnv, TestDb};
use serde_json::Value;
use sha2::{Digest, Sha256};

both_backends! {
    collect_sends_a_split_submission_once_through_a_cut_and_a_retry,
    edits_conflicts_and_refusals_say_what_is_wrong,
    basic_credentials_over_https_with_a_challenge,
    a_post_over_the_limit_gets_its_413,
}

/// Every entry of a zip (argv[1]) with the SHA-256 of its content, as Python's zipfile
/// reads it (testzip checks every CRC first).
const ZIP_LISTING: &str = "import hashlib, json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None
print(json.dumps({n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}))";

/// The form, built from an XLSForm by pyxform.
struct Form {
    dir: PathBuf,
    xform: String,
}

impl Form {
    fn new(dir: &Path) -> Form {
        let built = collect(&["form", dir.to_str().unwrap()]);
        assert_eq!(built["form_id"], "wildlife_sighting", "{built}");
        Form {
            dir: dir.to_path_buf(),
            xform: built["xform"].as_str().unwrap().to_string(),
        }
    }

    /// A filled instance, as Collect saves it; `extra` adds options.
    fn instance(&self, file: &str, instance_id: &str, sets: &[&str], extra: &[&str]) -> String {
        let out = self.dir.join(file);
        let mut args = vec!["instance", &self.xform, out.to_str().unwrap()];
        if !instance_id.is_empty() {
            args.extend(["--instance-id", instance_id]);
        }
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        for s in &sets {
            args.extend(["--set", s.as_str()]);
        }
        args.extend(extra);
        collect(&args);
        out.to_str().unwrap().to_string()
    }
}

/// A "photo" of `size` bytes that differs by `seed`.
fn photo(dir: &Path, name: &str, size: usize, seed: u8) -> (String, String) {
    let mut data = vec![0xFF, 0xD8, 0xFF, 0xE0];
    data.extend(
        (0..size - 4).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8),
    );
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (
        path.to_str().unwrap().to_string(),
        hex::encode(Sha256::digest(&data)),
    )
}

fn statuses(reply: &Value) -> Vec<Option<u64>> {
    reply["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_u64())
        .collect()
}

const SIGHTING: [&str; 6] = [
    "start=2026-12-01T06:00:00.000+02:00",
    "end=2026-12-01T06:05:00.000+02:00",
    "where=-1.2921 36.8219 1650 4.5",
    "species=zebra",
    "count=12",
    "behaviour=grazing",
];

async fn collect_sends_a_split_submission_once_through_a_cut_and_a_retry(db: TestDb) {
    if !have_pyxform() {
        return;
    }
    let mut env = ServerEnv::new(&db);
    // Two 300 KB photos do not fit one POST of 400 KB: Collect sends two.
    env.set("CTDATA__OPENROSA__ACCEPT_CONTENT_LENGTH", "400000");
    let token = env.device_token("collect-01");
    let admin = env.admin_token();
    let server = env.serve().await;
    let url = format!("{}/openrosa/key/{token}", server.http_base());
    let form = Form::new(env.dir.path());

    let head = collect(&["head", &url]);
    assert_eq!(head["status"], 204, "{head}");
    let h = &head["headers"];
    assert_eq!(h["x-openrosa-version"], "1.0", "{head}");
    assert_eq!(h["x-openrosa-accept-content-length"], "400000", "{head}");
    assert!(
        h["date"].as_str().is_some_and(|d| d.ends_with("GMT")),
        "{head}"
    );
    assert!(h.get("location").is_none(), "{head}");
    // GET answers the same way.
    let get = reqwest::get(format!("{url}/submission")).await.unwrap();
    assert_eq!(get.status(), 204);

    let (p1, sha1) = photo(env.dir.path(), "p1.jpg", 300_000, 1);
    let (p2, sha2) = photo(env.dir.path(), "p2.jpg", 300_000, 2);
    let mut sets = SIGHTING.to_vec();
    sets.extend(["photo1=p1.jpg", "photo2=p2.jpg"]);
    let xml = form.instance("one.xml", "uuid:0b3e1f6c-0001", &sets, &[]);

    // The first POST is cut halfway; Collect then sends the whole sequence again.
    let sent = collect(&["submit", &url, &xml, &p1, &p2, "--cut-first"]);
    assert_eq!(statuses(&sent), [None, Some(201), Some(201)], "{sent}");
    let posts = sent["posts"].as_array().unwrap();
    assert!(
        posts[1]["body"].as_str().unwrap().contains("successful"),
        "{sent}"
    );
    assert_eq!(posts[1]["files"], serde_json::json!(["p1.jpg"]));
    assert_eq!(posts[2]["files"], serde_json::json!(["p2.jpg"]));
    for p in &posts[1..] {
        assert_eq!(
            p["headers"]["content-type"], "text/xml; charset=utf-8",
            "{p}"
        );
        assert_eq!(p["headers"]["x-openrosa-version"], "1.0", "{p}");
    }
    // Collect did not hear back (say) and sends everything once more, chunked this time.
    let again = collect(&["submit", &url, &xml, &p1, &p2, "--chunked"]);
    assert_eq!(statuses(&again), [Some(201), Some(201)], "{again}");

    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM openrosa_submissions").await,
        1
    );
    // Two photos and the XML, each stored and linked once.
    assert_eq!(db.scalar("SELECT count(*) FROM attachments").await, 3);
    assert_eq!(db.scalar("SELECT count(*) FROM attachment_links").await, 3);
    let files = walk(&env.dir.path().join("attachments"));
    assert_eq!(files.len(), 3, "{files:?}");

    let api = server.api();
    let export = api.get("/api/v1/sightings?format=ndjson", &admin).await;
    assert_eq!(export.status, 200, "{}", export.body);
    let row: Value = serde_json::from_str(export.body.lines().next().unwrap()).unwrap();
    assert_eq!(row["device"], "collect-01", "{row}");
    assert_eq!(row["latitude"], -1.2921, "{row}");
    assert_eq!(row["accuracy"], 4.5, "{row}");
    assert_eq!(row["observed_at"], "2026-12-01T06:05:00+02:00", "{row}");
    let attrs = &row["attributes"];
    assert_eq!(attrs["species"], "zebra", "{row}");
    assert_eq!(attrs["notes/behaviour"], "grazing", "{row}");
    assert_eq!(attrs["openrosa"]["form_id"], "wildlife_sighting", "{row}");
    // The export links both photos (not the XML), each with its download path.
    let files = row["attachments"].as_array().expect("attachments");
    let linked: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["sha256"].as_str().unwrap()))
        .collect();
    assert_eq!(
        linked,
        [("p1.jpg", sha1.as_str()), ("p2.jpg", sha2.as_str())]
    );
    assert_eq!(files[0]["size"], 300_000);
    assert_eq!(files[0]["content_type"], "image/jpeg");
    assert_eq!(files[0]["url"], format!("/api/v1/attachments/{sha1}"));
    let geo = api.get("/api/v1/sightings?format=geojson", &admin).await;
    let geo: Value = serde_json::from_str(&geo.body).unwrap();
    assert_eq!(
        geo["features"][0]["properties"]["attachments"][1]["sha256"],
        sha2.as_str()
    );

    // export --with-attachments: a zip Python's zipfile opens, photos byte for byte.
    let zip = env.dir.path().join("with-files.zip");
    let out = env
        .command(&[
            "export",
            "--format",
            "ndjson",
            "--with-attachments",
            "--output",
        ])
        .arg(&zip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = Command::new("python3")
        .args(["-c", ZIP_LISTING])
        .arg(&zip)
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let listing: Value = serde_json::from_slice(&listing.stdout).unwrap();
    let id = row["id"].as_str().unwrap();
    assert_eq!(
        listing[format!("files/{id}/p1.jpg")],
        sha1.as_str(),
        "{listing}"
    );
    assert_eq!(
        listing[format!("files/{id}/p2.jpg")],
        sha2.as_str(),
        "{listing}"
    );
    assert_eq!(listing.as_object().unwrap().len(), 3, "{listing}");
    assert!(listing["sightings.ndjson"].is_string(), "{listing}");
    let refused = env
        .command(&["export", "--format", "ndjson", "--with-attachments"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--output"));

    // The photos come back byte for byte, and in part.
    for (sha, path) in [(&sha1, &p1), (&sha2, &p2)] {
        let reply = api
            .request(reqwest::Method::GET, &format!("/api/v1/attachments/{sha}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["content-type"], "image/jpeg");
        let body = reply.bytes().await.unwrap();
        assert_eq!(&body[..], &std::fs::read(path).unwrap()[..]);
    }
    let part = api
        .request(reqwest::Method::GET, &format!("/api/v1/attachments/{sha1}"))
        .bearer_auth(&admin)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 100-199/300000");
    assert_eq!(
        &part.bytes().await.unwrap()[..],
        &std::fs::read(&p1).unwrap()[100..200]
    );
    let beyond = api
        .request(reqwest::Method::GET, &format!("/api/v1/attachments/{sha1}"))
        .bearer_auth(&admin)
        .header("Range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    // The dashboard's batch page shows the photos as thumbnails, loaded with the
    // session cookie; the XML is listed too, but served only as a download.
    let (code, session) =
        ctdata_tests::web::sign_in(&server.http_base(), "alice", "a long enough password");
    let session = session.unwrap_or_else(|| panic!("sign-in answered {code} without a session"));
    let cookie = format!("ctdata_session={session}");
    let batch = db.scalar("SELECT id FROM batches").await;
    let page = api.page(&format!("/batches/{batch}"), &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for sha in [&sha1, &sha2] {
        let img = format!("<img class=\"thumb\" src=\"/api/v1/attachments/{sha}\"");
        assert!(page.body.contains(&img), "{}", page.body);
    }
    assert!(page.body.contains("xml_submission_file"), "{}", page.body);
    // The Sightings page shows each sighting's photos in its row (not the XML).
    let table = api.page("/sightings", &cookie).await;
    assert_eq!(table.status, 200, "{}", table.body);
    let row = table
        .body
        .split("<tr id=\"s")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_default();
    for sha in [&sha1, &sha2] {
        let img = format!("<img class=\"thumb small\" src=\"/api/v1/attachments/{sha}\"");
        assert!(row.contains(&img), "{row}");
    }
    assert!(!table.body.contains("xml_submission_file"), "{row}");
    let thumb = api
        .page(&format!("/api/v1/attachments/{sha1}"), &cookie)
        .await;
    assert_eq!(thumb.status, 200);
    assert_eq!(thumb.header("content-type"), Some("image/jpeg"));
    let xml_sha = hex::encode(Sha256::digest(std::fs::read(&xml).unwrap()));
    let raw = api
        .page(&format!("/api/v1/attachments/{xml_sha}"), &cookie)
        .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    assert_eq!(raw.header("content-disposition"), Some("attachment"));
    assert_eq!(raw.body.as_bytes(), &std::fs::read(&xml).unwrap()[..]);

    // Devices cannot read attachments; unknown ones are 404.
    assert_eq!(
        api.get(&format!("/api/v1/attachments/{sha1}"), &token)
            .await
            .status,
        401
    );
    let none = api
        .get(&format!("/api/v1/attachments/{}", "0".repeat(64)), &admin)
        .await;
    assert_eq!(none.status, 404);
    let bad = api
        .get("/api/v1/attachments/..%2F..%2Fetc%2Fpasswd", &admin)
        .await;
    assert_eq!(bad.status, 404);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn edits_conflicts_and_refusals_say_what_is_wrong(db: TestDb) {
    if !have_pyxform() {
        return;
    }
    let mut env = ServerEnv::new(&db);
    env.set("CTDATA__STORAGE__MAX_ATTACHMENT_BYTES", "1000000");
    env.set("CTDATA__OPENROSA__MAX_SUBMISSION_BYTES", "2000000");
    env.set("CTDATA__OPENROSA__MAX_ATTACHMENTS", "3");
    let token = env.device_token("collect-02");
    let admin = env.admin_token();
    let server = env.serve().await;
    let url = format!("{}/openrosa/key/{token}", server.http_base());
    let form = Form::new(env.dir.path());
    let mut seen = Vec::new();

    let (p1, sha1) = photo(env.dir.path(), "p1.jpg", 50_000, 3);
    let mut sets = SIGHTING.to_vec();
    sets.push("photo1=p1.jpg");
    let first = form.instance("first.xml", "uuid:edit-0001", &sets, &[]);
    let sent = collect(&["submit", &url, &first, &p1]);
    assert_eq!(statuses(&sent), [Some(201)], "{sent}");
    seen.extend(statuses(&sent));

    // The same instanceID with other XML: 409, and nothing changes.
    let mut changed = SIGHTING.to_vec();
    changed[3] = "species=lion";
    let other = form.instance("other.xml", "uuid:edit-0001", &changed, &[]);
    let sent = collect(&["submit", &url, &other]);
    assert_eq!(statuses(&sent), [Some(409)], "{sent}");
    let body = sent["posts"][0]["body"].as_str().unwrap();
    assert!(
        body.contains("uuid:edit-0001") && body.contains("other content"),
        "{body}"
    );
    assert!(body.contains("OpenRosaResponse"), "{body}");
    seen.extend(statuses(&sent));

    // No instanceID: 400, never an invented one.
    let anonymous = form.instance("anon.xml", "", &SIGHTING, &["--no-instance-id"]);
    let sent = collect(&["submit", &url, &anonymous]);
    assert_eq!(statuses(&sent), [Some(400)], "{sent}");
    let body = sent["posts"][0]["body"].as_str().unwrap();
    assert!(body.contains("meta/instanceID"), "{body}");
    seen.extend(statuses(&sent));

    // An edit: a new instanceID naming the first as deprecatedID, without re-sending
    // the photo. It replaces the first; the photo carries over by name.
    let mut edited = SIGHTING.to_vec();
    edited[3] = "species=elephant";
    edited.push("photo1=p1.jpg");
    let edit = form.instance(
        "edit.xml",
        "uuid:edit-0002",
        &edited,
        &["--deprecated-id", "uuid:edit-0001"],
    );
    let sent = collect(&["submit", &url, &edit]);
    assert_eq!(statuses(&sent), [Some(201)], "{sent}");
    seen.extend(statuses(&sent));
    let api = server.api();
    let export = api.get("/api/v1/sightings?format=ndjson", &admin).await;
    let rows: Vec<Value> = export
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{}", export.body);
    assert_eq!(rows[0]["attributes"]["species"], "elephant");
    assert_eq!(
        rows[0]["attributes"]["openrosa"]["instance_id"],
        "uuid:edit-0002"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM openrosa_superseded_sightings")
            .await,
        1
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM openrosa_submissions WHERE instance_id = 'uuid:edit-0001' \
             AND superseded_by = 'uuid:edit-0002'"
        )
        .await,
        1
    );
    let carried = format!(
        "SELECT count(*) FROM attachment_links l JOIN openrosa_submissions s ON s.batch = l.batch \
         WHERE s.instance_id = 'uuid:edit-0002' AND l.name = 'p1.jpg' AND l.sha256 = '{sha1}'"
    );
    assert_eq!(db.scalar(&carried).await, 1);
    // Sending the edit again is still one sighting.
    let sent = collect(&["submit", &url, &edit]);
    assert_eq!(statuses(&sent), [Some(201)], "{sent}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 1);

    // A second edit retakes the photo (same name, new content) and adds another, in
    // two POSTs: the first carries the old photo over, the retaken one in the second
    // takes its place.
    let retaken_dir = tempfile::tempdir().unwrap();
    let (p1b, sha1b) = photo(retaken_dir.path(), "p1.jpg", 50_000, 7);
    let (p2, sha2) = photo(env.dir.path(), "p2.jpg", 40_000, 8);
    let mut again = edited.clone();
    again.push("photo2=p2.jpg");
    let edit3 = form.instance(
        "edit3.xml",
        "uuid:edit-0003",
        &again,
        &["--deprecated-id", "uuid:edit-0002"],
    );
    let sent = collect(&["submit", &url, &edit3, &p2, &p1b, "--accept", "60000"]);
    assert_eq!(statuses(&sent), [Some(201), Some(201)], "{sent}");
    seen.extend(statuses(&sent));
    let linked = |name: &str| {
        format!(
            "SELECT l.sha256 FROM attachment_links l JOIN openrosa_submissions s ON s.batch = l.batch \
             WHERE s.instance_id = 'uuid:edit-0003' AND l.name = '{name}'"
        )
    };
    assert_eq!(db.texts(&linked("p1.jpg")).await, [[Some(sha1b.clone())]]);
    assert_eq!(db.texts(&linked("p2.jpg")).await, [[Some(sha2)]]);
    // The edit it replaced keeps its own photo.
    assert_eq!(db.scalar(&carried).await, 1);
    assert_ne!(sha1, sha1b);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 1);

    // Another device can neither add to this submission nor retire it by an "edit".
    let other_token = env.device_token("collect-03");
    let other_url = format!("{}/openrosa/key/{other_token}", server.http_base());
    let sent = collect(&["submit", &other_url, &edit]);
    assert_eq!(statuses(&sent), [Some(409)], "{sent}");
    assert!(
        sent["posts"][0]["body"]
            .as_str()
            .unwrap()
            .contains("another device"),
        "{sent}"
    );
    seen.extend(statuses(&sent));
    let hijack = form.instance(
        "hijack.xml",
        "uuid:hijack-0001",
        &SIGHTING,
        &["--deprecated-id", "uuid:edit-0002"],
    );
    let sent = collect(&["submit", &other_url, &hijack]);
    assert_eq!(statuses(&sent), [Some(201)], "{sent}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 2);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM openrosa_submissions WHERE superseded_by = 'uuid:hijack-0001'"
        )
        .await,
        0
    );

    // An attachment over storage.max_attachment_bytes: 413 naming the limit, nothing kept.
    let (big, _) = photo(env.dir.path(), "big.jpg", 1_500_000, 4);
    let mut sets = SIGHTING.to_vec();
    sets.push("photo1=big.jpg");
    let large = form.instance("large.xml", "uuid:large-0001", &sets, &[]);
    let sent = collect(&["submit", &url, &large, &big, "--accept", "100000000"]);
    assert_eq!(statuses(&sent), [Some(413)], "{sent}");
    let body = sent["posts"][0]["body"].as_str().unwrap();
    assert!(
        body.contains("1000000") && body.contains("big.jpg"),
        "{body}"
    );
    seen.extend(statuses(&sent));
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM openrosa_submissions WHERE instance_id = 'uuid:large-0001'"
        )
        .await,
        0
    );

    // A POST over openrosa.max_submission_bytes (each file under its own limit), and a
    // submission with more files than openrosa.max_attachments: 413 naming the setting.
    let (a, _) = photo(env.dir.path(), "a.jpg", 1_000_000, 5);
    let (b, _) = photo(env.dir.path(), "b.jpg", 1_000_000, 6);
    let two = form.instance("two.xml", "uuid:two-0001", &SIGHTING, &[]);
    let sent = collect(&["submit", &url, &two, &a, &b, "--accept", "100000000"]);
    assert_eq!(statuses(&sent), [Some(413)], "{sent}");
    let body = sent["posts"][0]["body"].as_str().unwrap();
    assert!(
        body.contains("2000000") && body.contains("openrosa.max_submission_bytes"),
        "{body}"
    );
    seen.extend(statuses(&sent));
    let small: Vec<String> = (0..4)
        .map(|i| photo(env.dir.path(), &format!("s{i}.jpg"), 1000, 10 + i as u8).0)
        .collect();
    let many = form.instance("many.xml", "uuid:many-0001", &SIGHTING, &[]);
    let mut args = vec!["submit", url.as_str(), many.as_str()];
    args.extend(small.iter().map(String::as_str));
    let sent = collect(&args);
    assert_eq!(statuses(&sent), [Some(413)], "{sent}");
    let body = sent["posts"][0]["body"].as_str().unwrap();
    assert!(body.contains("openrosa.max_attachments"), "{body}");
    seen.extend(statuses(&sent));
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM openrosa_submissions WHERE instance_id IN ('uuid:two-0001', 'uuid:many-0001')"
        )
        .await,
        0
    );

    // A wrong token is 401 with a Basic challenge; a revoked device is 403.
    let wrong = collect(&[
        "head",
        &format!("{}/openrosa/key/not-a-token", server.http_base()),
    ]);
    assert_eq!(wrong["status"], 401, "{wrong}");
    assert!(wrong["headers"]["www-authenticate"]
        .as_str()
        .unwrap()
        .starts_with("Basic"));
    let out = env
        .command(&["device", "revoke", "collect-02"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = collect(&["head", &url]);
    assert_eq!(revoked["status"], 403, "{revoked}");
    let sent = collect(&["submit", &url, &first, "--accept", "1000000"]);
    assert_eq!(statuses(&sent), [Some(403)], "{sent}");
    seen.extend(statuses(&sent));

    assert!(!seen.contains(&Some(200)), "{seen:?}");
}

async fn basic_credentials_over_https_with_a_challenge(db: TestDb) {
    if !have_pyxform() {
        return;
    }
    let mut plain = ServerEnv::new(&db);
    let token = plain.device_token("kobo-01");
    {
        let server = plain.serve().await;
        // Over plain HTTP a password is refused outright, pointing at the key URL.
        let head = collect(&[
            "head",
            &format!("{}/openrosa", server.http_base()),
            "--basic",
            &format!("kobo-01:{token}"),
        ]);
        assert_eq!(head["status"], 403, "{head}");
    }
    plain.enable_https();
    // storage.attachments_dir moves the store (here it holds just the submission XML).
    let elsewhere = plain.dir.path().join("elsewhere");
    plain.set(
        "CTDATA__STORAGE__ATTACHMENTS_DIR",
        elsewhere.to_str().unwrap(),
    );
    let server = plain.serve().await;
    let url = format!("{}/openrosa", server.http_base());
    assert!(url.starts_with("https://"));
    let challenge = collect(&["head", &url]);
    assert_eq!(challenge["status"], 401, "{challenge}");
    assert_eq!(
        challenge["headers"]["www-authenticate"],
        "Basic realm=\"CTData OpenRosa\""
    );
    let basic = format!("kobo-01:{token}");
    let head = collect(&["head", &url, "--basic", &basic]);
    assert_eq!(head["status"], 204, "{head}");
    let form = Form::new(plain.dir.path());
    let xml = form.instance("k.xml", "uuid:kobo-0001", &SIGHTING, &[]);
    let sent = collect(&["submit", &url, &xml, "--basic", &basic]);
    assert_eq!(statuses(&sent), [Some(201)], "{sent}");
    let wrong = collect(&[
        "submit",
        &url,
        &xml,
        "--basic",
        "kobo-01:wrong",
        "--accept",
        "1000",
    ]);
    assert_eq!(statuses(&wrong), [Some(401)], "{wrong}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 1);
    let kept: Vec<PathBuf> = walk(&elsewhere)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/.tmp/"))
        .collect();
    let xml_sha = hex::encode(Sha256::digest(std::fs::read(&xml).unwrap()));
    assert_eq!(
        kept,
        [elsewhere
            .join(&xml_sha[..2])
            .join(&xml_sha[2..4])
            .join(&xml_sha)]
    );
    assert!(!plain
        .dir
        .path()
        .join("attachments")
        .join(&xml_sha[..2])
        .exists());
}

/// POSTs a multipart submission of about argv[2] bytes to argv[1] with Python's
/// http.client, as a plain client does: the whole body sent (with a Content-Length, or
/// chunked when argv[3] is "chunked"), then the answer read, with no allowance for a
/// server that hangs up early. Prints {status, body} as JSON.
const PLAIN_POST: &str = r#"import http.client, json, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
size, chunked = int(sys.argv[2]), sys.argv[3] == "chunked"
b = "plainclientboundary"
xml = b'<data id="f"><meta><instanceID>uuid:over-0001</instanceID></meta></data>'
body = (("--%s\r\nContent-Disposition: form-data; name=\"xml_submission_file\"; filename=\"x.xml\"\r\n"
         "Content-Type: text/xml\r\n\r\n" % b).encode() + xml +
        ("\r\n--%s\r\nContent-Disposition: form-data; name=\"p.jpg\"; filename=\"p.jpg\"\r\n"
         "Content-Type: image/jpeg\r\n\r\n" % b).encode() + b"\xff" * size +
        ("\r\n--%s--\r\n" % b).encode())
c = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
headers = {"Content-Type": "multipart/form-data; boundary=" + b, "X-OpenRosa-Version": "1.0"}
if chunked:
    pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
    c.request("POST", url.path, body=pieces, headers=headers, encode_chunked=True)
else:
    c.request("POST", url.path, body=body, headers=headers)
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode()}))"#;

/// A client that goes on sending a body over openrosa.max_submission_bytes gets the
/// 413 and its message, whether it declared the length or sends chunks: the server reads
/// (and drops) the rest before it answers, instead of hanging up mid-upload.
async fn a_post_over_the_limit_gets_its_413(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.set("CTDATA__OPENROSA__MAX_SUBMISSION_BYTES", "2000000");
    let token = env.device_token("collect-09");
    let server = env.serve().await;
    let url = format!("{}/openrosa/key/{token}/submission", server.http_base());
    for mode in ["length", "chunked"] {
        for _ in 0..3 {
            let out = Command::new("python3")
                .args(["-c", PLAIN_POST, &url, "7500000", mode])
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "{mode}: the client did not get an answer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(reply["status"], 413, "{mode}: {reply}");
            let body = reply["body"].as_str().unwrap();
            assert!(
                body.contains("<OpenRosaResponse")
                    && body.contains("2000000")
                    && body.contains("openrosa.max_submission_bytes"),
                "{mode}: {body}"
            );
        }
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM openrosa_submissions").await,
        0
    );
}
