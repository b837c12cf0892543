#!/usr/bin/env python3
"""Regenerates tests/fixtures/good and tests/fixtures/bad (run from anywhere).

The fixtures are committed; this script only documents how they were made and lets
them be rebuilt deterministically (seeded ids, gzip with mtime 0). It deliberately does
not use the Rust writer, so the fixtures check the reader against an independent
implementation of docs/batch-format.md.
"""

import gzip
import hashlib
import json
import random
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
GOOD, BAD = ROOT / "good", ROOT / "bad"
rng = random.Random(20240501)


def new_id():
    return str(uuid.UUID(bytes=rng.randbytes(16), version=4))


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def header(batch_id, created_at="2024-05-02T18:05:11+02:00", **extra):
    h = {"ctdata_batch": 1, "batch_id": batch_id, "device_id": "ranger-07", "created_at": created_at}
    h.update(extra)
    return h


def ndjson(head, rows, count=None, sha=None, trailer=True, mangle=lambda b: b):
    """Header line, rows, trailer with the count and sha256 of every byte before it.
    `mangle` edits the body before the trailer is computed, so only the edit is wrong."""
    body = mangle("".join(dumps(x) + "\n" for x in [head, *rows]).encode())
    if not trailer:
        return body
    digest = hashlib.sha256(body).hexdigest() if sha is None else sha
    t = {"ctdata_trailer": 1, "count": len(rows) if count is None else count, "sha256": digest}
    return body + (dumps(t) + "\n").encode()


def sighting(when, lat, lon, species, observer, count=None, with_id=True, **extra):
    s = {"id": new_id()} if with_id else {}
    s.update({"observed_at": when, "latitude": lat, "longitude": lon})
    s.update({"accuracy": 5.0, "observer": observer, "species": species})
    if count is not None:
        s["count"] = count
    s.update(extra)
    return s


KRUGER = [
    ("2024-05-01T06:32:10+02:00", -24.99312, 31.59012, "Loxodonta africana", "T. Mokoena", 7,
     {"attributes": {"behaviour": "feeding", "herd": "breeding"}}),
    ("2024-05-01T07:05:44+02:00", -24.98120, 31.60355, "Panthera leo", "T. Mokoena", 3,
     {"attributes": {"behaviour": "resting"}, "sex_ratio": "1M:2F"}),
    ("2024-05-01T08:17:02+02:00", -25.01004, 31.62781, "Syncerus caffer", "L. Nkosi", 42, {}),
    ("2024-05-01T09:40:29+02:00", -24.96655, 31.57120, "Giraffa camelopardalis", "L. Nkosi", 2,
     {"altitude": 312.0, "attachments": [{"name": "IMG_0412.jpg", "media_type": "image/jpeg",
                                         "size": 482113, "sha256": "9f2c" * 16}]}),
    ("2024-05-01T10:02:55+02:00", -24.97790, 31.58002, "Ceratotherium simum", "T. Mokoena", 1,
     {"attributes": {"behaviour": "walking", "horn": "dehorned"}}),
]

ETOSHA = [
    ("2024-06-11T05:58:00Z", -18.86204, 16.33421, "Loxodonta africana", "J. Shikongo", 12,
     {"attributes": {"behaviour": "drinking", "waterhole": "Okaukuejo"}}),
    ("2024-06-11T06:20:13Z", -18.85617, 16.34102, "Diceros bicornis", "J. Shikongo", 1, {}),
    ("2024-06-11T06:48:37Z", -18.90233, 16.29968, "Equus quagga", "A. Haufiku", 30,
     {"attributes": {"behaviour": "grazing"}}),
    ("2024-06-11T07:12:09Z", -18.88012, 16.31570, "Acinonyx jubatus", "A. Haufiku", 2,
     {"attributes": {"behaviour": "hunting"}}),
]


def rows(table, with_id=True):
    out = []
    for when, lat, lon, sp, obs, n, extra in table:
        out.append(sighting(when, lat, lon, sp, obs, n, with_id=with_id, **extra))
    return out


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


def good():
    doc = header(new_id(), count=len(KRUGER))
    doc["sightings"] = rows(KRUGER)
    write(GOOD / "json-basic.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    write(GOOD / "ndjson-basic.ndjson", ndjson(header(new_id()), rows(KRUGER[:4])))
    write(GOOD / "ndjson-basic.ndjson.gz",
          gz(ndjson(header(new_id(), "2024-06-11T09:00:00Z"), rows(ETOSHA))))

    # Header keys after the array: key order must not matter.
    noid = {"sightings": rows(ETOSHA, with_id=False)}
    noid.update(header(new_id(), "2024-06-11T09:30:00+02:00", count=len(ETOSHA)))
    write(GOOD / "json-no-ids.json", json.dumps(noid, indent=1, ensure_ascii=False) + "\n")

    write(GOOD / "csv-basic.csv", "\n".join([
        "id,observed_at,latitude,longitude,altitude,accuracy,observer,species,count,behaviour,notes",
        f"{new_id()},2024-05-03T06:10:00+02:00,-24.41650,31.88210,285,4.5,M. Baloyi,Loxodonta africana,5,feeding,",
        f"{new_id()},2024-05-03T06:55:30+02:00,-24.40021,31.90114,,,M. Baloyi,Hippopotamus amphibius,9,resting,\"in the river, near the weir\"",
        f",2024-05-03T07:20:00+02:00,-24.38877,31.91502,,10,M. Baloyi,Crocodylus niloticus,,basking,no id: derived from content",
        f"{new_id()},2024-05-03T08:05:12+02:00,-24.37250,31.92040,290,3,\"Baloyi, M.\",Aepyceros melampus,60,,",
    ]) + "\n")

    write(GOOD / "csv-darwin-core.csv", "\ufeff" + "\r\n".join([
        "occurrenceID,eventDate,decimalLatitude,decimalLongitude,coordinateUncertaintyInMeters,recordedBy,scientificName,individualCount,BasisOfRecord",
        f"{new_id()},2024-05-04T16:45:00+02:00,-25.11502,31.91877,15,S. Dlamini,Crocuta crocuta,4,HumanObservation",
        f"{new_id()},2024-05-04T17:02:19+02:00,-25.12030,31.92645,8,S. Dlamini,Panthera pardus,1,HumanObservation",
        f"{new_id()},2024-05-04T17:40:51+02:00,-25.13388,31.93320,,S. Dlamini,Lycaon pictus,11,MachineObservation",
    ]) + "\r\n")

    feats = []
    for i, (when, lat, lon, sp, obs, n, extra) in enumerate(ETOSHA[:3]):
        coords = [lon, lat, 1085.0] if i == 0 else [lon, lat]
        props = {"eventDate": when.replace("Z", "+00:00"), "scientificName": sp, "recordedBy": obs,
                 "individualCount": n, "coordinateUncertaintyInMeters": 12}
        props.update(extra.get("attributes", {}))
        feat = {"type": "Feature", "geometry": {"type": "Point", "coordinates": coords}, "properties": props}
        if i == 1:
            props["id"] = new_id()
        elif i == 0:
            feat["id"] = new_id()
        else:
            feat["id"] = 17  # QGIS-style numeric id: kept as attribute feature_id
        feats.append(feat)
    write(GOOD / "geojson-basic.geojson",
          json.dumps({"type": "FeatureCollection", "features": feats}, indent=2) + "\n")


def bad_cases():
    """(name, bytes, expected substring of the rejection's Display text)"""
    k = rows(KRUGER[:3])
    h = header(new_id())
    jdoc = lambda count, ss, **kw: json.dumps({**header(new_id(), count=count, **kw), "sightings": ss}, indent=2)
    row = lambda **kw: dumps({**k[0], "id": new_id(), **kw})
    valid_csv_head = "id,observed_at,latitude,longitude,altitude,accuracy,observer,species,count"
    csv_row = "{},2024-05-03T06:10:00+02:00,-24.41650,31.88210,285,4.5,M. Baloyi,Loxodonta africana,5"
    csv = lambda *lines: "\n".join([valid_csv_head, *lines]) + "\n"
    mutate = lambda **kw: [{**k[0], **kw}, *k[1:]]
    nd = lambda ss, mangle=lambda b: b: ndjson(header(new_id()), ss, mangle=mangle)

    full = jdoc(3, k)
    dup = [k[0], {**k[1], "id": k[0]["id"]}]
    plain = ndjson(header(new_id()), rows(KRUGER[:3]))
    return [
        ("truncated-json.json", full[: len(full) * 2 // 3], "JSON document ends early"),
        ("json-count-mismatch.json", jdoc(3, k[:2]), "batch declares count 3 but contains 2 sightings"),
        ("ndjson-no-trailer.ndjson", ndjson(h, k, trailer=False), "NDJSON batch has no trailer line: the file is truncated"),
        ("ndjson-trailer-count.ndjson", ndjson(header(new_id()), k, count=4), "NDJSON trailer declares 4 rows but the file has 3"),
        ("ndjson-trailer-sha256.ndjson", ndjson(header(new_id()), k, sha="0" * 64), "trailer sha256 " + "0" * 64 + " does not match"),
        ("ndjson-missing-batch-id.ndjson", ndjson({"ctdata_batch": 1, "device_id": "ranger-07", "created_at": "2024-05-02T18:05:11+02:00"}, k),
         "line 1, field batch_id: batch_id is required"),
        ("bad-batch-id.ndjson", ndjson(header("batch-42"), k), 'line 1, field batch_id, value "batch-42": batch_id must be a UUID'),
        ("version-2.ndjson", ndjson({**header(new_id()), "ctdata_batch": 2}, k), "unsupported batch format version 2; this server reads version 1"),
        ("bad-device-id.json", json.dumps({**header(new_id(), count=1), "device_id": "../ranger 07", "sightings": k[:1]}),
         'field device_id, value "../ranger 07": device_id must be'),
        ("csv-cut-mid-row.csv", csv(csv_row.format(new_id()), csv_row.format(new_id()), csv_row.format(new_id())[:60]),
         "line 4: row has 2 fields but the header has 9"),
        ("csv-missing-latitude.csv", "id,observed_at,longitude,species\n" + f"{new_id()},2024-05-03T06:10:00+02:00,31.8,Panthera leo\n",
         "field latitude: column latitude is required; accepted names: latitude or decimalLatitude"),
        ("latitude-91.ndjson", nd([k[0], {**k[1], "latitude": 91}, k[2]]), 'line 3, field latitude, value "91": latitude must be a number from -90 to 90'),
        ("longitude-minus-181.csv", csv(csv_row.format(new_id()), csv_row.format(new_id()).replace("31.88210", "-181")),
         'line 3, field longitude, value "-181": longitude must be a number from -180 to 180'),
        ("latitude-nan.csv", csv(csv_row.format(new_id()).replace("-24.41650", "NaN")), 'line 2, field latitude, value "NaN": latitude must be a number'),
        ("latitude-not-number.json", jdoc(3, [k[0], {**k[1], "latitude": "north"}, k[2]]),
         'sightings[1].latitude, field latitude, value "north": latitude must be a number from -90 to 90'),
        ("time-no-offset.ndjson", nd(mutate(observed_at="2024-05-01T06:30:00")), 'line 2, field observed_at, value "2024-05-01T06:30:00": observed_at has no UTC offset'),
        ("time-garbage.csv", csv(csv_row.format(new_id()).replace("2024-05-03T06:10:00+02:00", "yesterday morning")),
         'line 2, field observed_at, value "yesterday morning": observed_at must be an RFC 3339 timestamp'),
        ("negative-count.ndjson", nd(mutate(count=-2)), 'line 2, field count, value "-2": count must be a whole number of 0 or more'),
        ("fractional-count.csv", csv(csv_row.format(new_id())[:-1] + "2.5"), 'line 2, field count, value "2.5": count must be a whole number'),
        ("negative-accuracy.json", jdoc(3, mutate(accuracy=-5)), 'sightings[0].accuracy, field accuracy, value "-5": accuracy must be a number of 0 or more'),
        ("non-utf8.csv", csv(csv_row.format(new_id())).encode() + (csv_row.format(new_id()).replace("M. Baloyi", "J. Ngubane").encode().replace(b"Ngubane", b"Ng\xfcbane") + b"\n"),
         "line 3, field observer: not valid UTF-8 text"),
        ("non-utf8.ndjson", nd(k, lambda b: b.replace(b"Mokoena", b"Mok\xf6ena", 1)), "line 2: line is not valid UTF-8 text"),
        ("empty.csv", b"", "file is empty"),
        ("whitespace-only.ndjson", " \n\n\t  \r\n   \n", "file is empty: it contains only blank space"),
        ("binary-png.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256)), "not a CTData batch: binary data"),
        ("gzip-garbage.ndjson.gz", b"\x1f\x8b" + b"this was never gzip data, just junk after the magic bytes\n" * 3, "gzip data is corrupt"),
        ("gzip-truncated.ndjson.gz", gz(plain)[: len(gz(plain)) // 2], "gzip data is truncated"),
        ("geojson-linestring.geojson", geojson_bad("linestring"), 'features[1].geometry.type, field geometry, value "LineString": geometry must be a Point'),
        ("geojson-out-of-range.geojson", geojson_bad("range"), 'features[0].geometry.coordinates[1], field latitude, value "95.2": latitude must be a number from -90 to 90'),
        ("json-array.json", json.dumps(k, indent=2), "not a CTData batch: the file is a JSON array"),
        ("bad-sighting-id.ndjson", nd(mutate(id="ELE-0001")), 'line 2, field id, value "ELE-0001": id must be a UUID'),
        ("dup-ids.ndjson", nd(dup), "duplicate"),
        ("gzip-bomb.ndjson.gz", gz(ndjson(header(new_id()), [], trailer=False) + b"\n" * (5 << 20)), "allowed ratio of 100:1"),
        ("json-not-a-batch.json", json.dumps({"hello": "world", "items": [1, 2]}), "not a CTData batch: a JSON object without"),
        ("csv-empty-required-cell.csv", csv(csv_row.format(new_id()).replace("-24.41650", "")), "line 2, field latitude: latitude is required"),
        ("ndjson-after-trailer.ndjson", nd(k) + (row() + "\n").encode(), "NDJSON batch has content after its trailer line"),
        ("json-trailing-garbage.json", jdoc(1, k[:1]) + "\n{}\n", "JSON syntax error: trailing characters"),
        ("ndjson-bad-json-line.ndjson", nd(k, lambda b: b.replace(b'"species"', b'"species', 1)), "line 2: line is not valid JSON"),
        ("created-at-no-offset.json", jdoc(1, k[:1], created_at="2024-05-02 18:05:11"),
         'field created_at, value "2024-05-02 18:05:11": created_at has no UTC offset'),
        # Valid to a lax reader, refused by PostgreSQL: must be refused for every backend.
        ("nul-in-species.ndjson", nd(mutate(species="Lox\u0000odonta")), "line 2, field species"),
        ("nul-in-attribute.json", jdoc(1, [{**k[0], "note": "a\u0000b"}]), "sightings[0].note, field note: attribute contains a NUL"),
        ("year-zero.ndjson", nd(mutate(observed_at="0000-01-01T00:00:00Z")), "observed_at must be between the years 1 and 9999"),
        # In range as written, year 10000 once converted to UTC, which is what is stored.
        ("year-10000-in-utc.ndjson", nd(mutate(observed_at="9999-12-31T23:59:59-23:59")),
         "observed_at must be between the years 1 and 9999 in UTC; 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC"),
    ]


def geojson_bad(which):
    f = lambda lon, lat, gtype="Point": {
        "type": "Feature",
        "geometry": {"type": gtype, "coordinates": [lon, lat] if gtype == "Point" else [[lon, lat], [lon + 0.01, lat + 0.01]]},
        "properties": {"observed_at": "2024-06-11T06:20:13Z", "species": "Diceros bicornis"},
    }
    feats = [f(16.34, -18.85), f(16.30, -18.90, "LineString")] if which == "linestring" else [f(16.34, 95.2), f(16.30, -18.90)]
    return json.dumps({"type": "FeatureCollection", "features": feats}, indent=2)


def bad():
    for i, (name, data, expect) in enumerate(bad_cases(), start=1):
        stem = f"{i:02}-{name}"
        write(BAD / stem, data)
        base = stem[: stem.index(".")]
        write(BAD / f"{base}.expect", expect + "\n")


def good_with_bom():
    """NDJSON as a Windows tool may write it: a byte order mark, CRLF line ends, and a
    trailer sha256 that covers the BOM too. Own ids, so the other fixtures stay as they are."""
    global rng
    saved, rng = rng, random.Random(20261122)
    body = ndjson(header(new_id()), rows(KRUGER[1:4]), mangle=lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n"))
    rng = saved
    write(GOOD / "ndjson-bom-crlf.ndjson", body)


if __name__ == "__main__":
    good()
    bad()
    good_with_bom()
