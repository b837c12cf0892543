//! `ctdata-server openrosa remap` (issue 14: "a mapping fixed later can be re-run"):
//! forms sent by the Python Collect driver with a configuration that maps species
//! nowhere, then `[[openrosa.forms]]` fixed and the real binary run: the export shows
//! the species under the same ids with the photos still linked, the old rows are kept
//! as versions, an edited-away submission is left alone, a damaged kept XML fails its
//! submission alone with the reason, `--dry-run` writes nothing, and a second run
//! changes nothing.

use std::path::Path;

use ctdata_tests::openrosa::{collect, have_pyxform};
use ctdata_tests::{both_backends, ServerEnv, TestDb};
use serde_json::Value;

both_backends! {
    a_fixed_mapping_is_applied_to_the_kept_submissions,
}

/// A filled instance of the pyxform-built form `xform`, saved in `dir`.
fn instance(
    dir: &Path,
    xform: &str,
    file: &str,
    id: &str,
    sets: &[&str],
    extra: &[&str],
) -> String {
    let out = dir.join(file);
    let mut args = vec![
        "instance",
        xform,
        out.to_str().unwrap(),
        "--instance-id",
        id,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(extra);
    collect(&args);
    out.to_str().unwrap().to_string()
}

fn sighting(species: &str) -> Vec<String> {
    [
        "start=2026-12-01T06:00:00.000+02:00",
        "end=2026-12-01T06:05:00.000+02:00",
        "where=-1.2921 36.8219 1650 4.5",
        &format!("species={species}"),
        "count=12",
        "behaviour=grazing",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `openrosa remap ARGS`: exit code and standard output.
fn remap(env: &ServerEnv, args: &[&str]) -> (i32, String) {
    let mut all = vec!["openrosa", "remap"];
    all.extend(args);
    let out = env.command(&all).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 2,
        "remap {args:?}: {code} {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout)
}

/// The exported sightings by species (attribute or column), with id and photos.
async fn exported(server: &ctdata_tests::Server, admin: &str) -> Vec<Value> {
    let export = server
        .api()
        .get("/api/v1/sightings?format=ndjson", admin)
        .await;
    assert_eq!(export.status, 200, "{}", export.body);
    let mut rows: Vec<Value> = export
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    rows
}

async fn a_fixed_mapping_is_applied_to_the_kept_submissions(db: TestDb) {
    if !have_pyxform() {
        return;
    }
    let env = ServerEnv::new(&db);
    let token = env.device_token("collect-07");
    let admin = env.admin_token();
    let server = env.serve().await;
    let url = format!("{}/openrosa/key/{token}", server.http_base());
    let dir = env.dir.path();
    let built = collect(&["form", dir.to_str().unwrap()]);
    let xform = built["xform"].as_str().unwrap().to_string();

    // remap-1 with a photo, remap-2, then remap-3: an edit of remap-1 that keeps the photo.
    let photo = dir.join("p1.jpg");
    std::fs::write(&photo, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4]).unwrap();
    let photo = photo.to_str().unwrap();
    let mut one = sighting("zebra");
    one.push("photo1=p1.jpg".into());
    let one: Vec<&str> = one.iter().map(String::as_str).collect();
    let first = instance(dir, &xform, "1.xml", "uuid:remap-1", &one, &[]);
    assert_eq!(
        collect(&["submit", &url, &first, photo])["posts"][0]["status"],
        201
    );
    let two = sighting("lion");
    let two: Vec<&str> = two.iter().map(String::as_str).collect();
    let second = instance(dir, &xform, "2.xml", "uuid:remap-2", &two, &[]);
    assert_eq!(
        collect(&["submit", &url, &second])["posts"][0]["status"],
        201
    );
    let mut three = sighting("elephant");
    three.push("photo1=p1.jpg".into());
    let three: Vec<&str> = three.iter().map(String::as_str).collect();
    let edit = instance(
        dir,
        &xform,
        "3.xml",
        "uuid:remap-3",
        &three,
        &["--deprecated-id", "uuid:remap-1"],
    );
    assert_eq!(collect(&["submit", &url, &edit])["posts"][0]["status"], 201);

    let before = exported(&server, &admin).await;
    assert_eq!(before.len(), 2, "{before:?}");
    for row in &before {
        assert!(row["species"].is_null(), "no species mapped yet: {row}");
    }
    let ids: Vec<&Value> = before.iter().map(|r| &r["id"]).collect();

    // The mapping is fixed: species and count come from their fields.
    std::fs::write(
        dir.join("ctdata.toml"),
        "[[openrosa.forms]]\nform_id = \"wildlife_sighting\"\nspecies = \"species\"\n\
         count = \"count\"\n",
    )
    .unwrap();
    // remap-2's kept XML is damaged on disk.
    let sha = db
        .texts("SELECT xml_sha256 FROM openrosa_submissions WHERE instance_id = 'uuid:remap-2'")
        .await[0][0]
        .clone()
        .unwrap();
    let kept = dir
        .join("attachments")
        .join(&sha[..2])
        .join(&sha[2..4])
        .join(&sha);
    let original = std::fs::read(&kept).unwrap();
    std::fs::write(&kept, b"<data id=\"wildlife_sighting\">truncated").unwrap();

    // A dry run says what would change and writes nothing.
    let (code, out) = remap(&env, &["--dry-run"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "2 submission(s) read, 1 would change; sightings: 1 would change, 0 unchanged"
        ),
        "{out}"
    );
    assert!(
        out.contains("failed    uuid:remap-2 (form wildlife_sighting): the kept XML")
            && out.contains("is damaged"),
        "{out}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sighting_versions").await, 0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM sightings WHERE species IS NOT NULL")
            .await,
        0
    );

    // The run: remap-3 gets its species; remap-2 fails alone and stays as it was; the
    // edited-away remap-1 is not brought back.
    let (code, out) = remap(&env, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("1 changed; sightings: 1 changed, 0 unchanged"),
        "{out}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 2);
    assert_eq!(db.scalar("SELECT count(*) FROM sighting_versions").await, 1);

    // The XML restored, the form named: remap-2 changes, remap-3 is as mapped.
    std::fs::write(&kept, &original).unwrap();
    let (code, out) = remap(&env, &["--form", "wildlife_sighting"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 submission(s) read, 1 changed; sightings: 1 changed, 1 unchanged, 0 added, 0 removed; 0 submission(s) failed"),
        "{out}"
    );

    let after = exported(&server, &admin).await;
    let after_ids: Vec<&Value> = after.iter().map(|r| &r["id"]).collect();
    assert_eq!(after_ids, ids, "the ids stay");
    let mut species: Vec<&str> = after
        .iter()
        .map(|r| r["species"].as_str().unwrap_or("-"))
        .collect();
    species.sort();
    assert_eq!(species, ["elephant", "lion"], "{after:?}");
    for row in &after {
        assert_eq!(row["count"], 12, "{row}");
        assert_eq!(row["device"], "collect-07", "{row}");
        assert_eq!(row["observed_at"], "2026-12-01T06:05:00+02:00", "{row}");
        let photos: Vec<&str> = row["attachments"]
            .as_array()
            .map(|a| a.iter().map(|f| f["name"].as_str().unwrap()).collect())
            .unwrap_or_default();
        let want: &[&str] = if row["species"] == "elephant" {
            &["p1.jpg"]
        } else {
            &[]
        };
        assert_eq!(photos, want, "attachments stay linked: {row}");
    }
    // History holds both old versions, without species.
    let history = db
        .texts("SELECT version, CAST(content AS TEXT) FROM sighting_versions")
        .await;
    assert_eq!(history.len(), 2, "{history:?}");
    for row in &history {
        assert_eq!(row[0].as_deref(), Some("openrosa remap"));
        let old: Value = serde_json::from_str(row[1].as_deref().unwrap()).unwrap();
        assert!(old.get("species").is_none(), "{old}");
        assert!(old["attributes"]["species"].is_string(), "{old}");
    }

    // A second run changes nothing; another form reads nothing.
    let (code, out) = remap(&env, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 submission(s) read, 0 changed; sightings: 0 changed, 2 unchanged"),
        "{out}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sighting_versions").await, 2);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 2);
    let (code, out) = remap(&env, &["--form", "other_form", "--json"]);
    assert_eq!(code, 0, "{out}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["submissions"], 0, "{json}");
}
