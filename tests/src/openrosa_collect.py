"""Acts as ODK Collect towards an OpenRosa server, for tests/tests/openrosa.rs.

Subcommands (each prints one JSON document on standard output):
  form DIR               write an XLSForm (wildlife.xlsx) and turn it into an XForm
                         with pyxform; prints {"xform": PATH, "form_id": ..., "version": ...}
  instance XFORM OUT     fill the XForm's primary instance the way Collect does and
                         write it to OUT; options --instance-id, --deprecated-id,
                         --set NAME=VALUE (repeatable), --no-instance-id
  head URL               HEAD URL/submission; prints the status and headers
  submit URL XML FILE..  Collect's submission sequence: as many POSTs as
                         X-OpenRosa-Accept-Content-Length asks for, each with the full
                         XML, *isIncomplete*=yes on all but the last; --cut-first sends
                         half of the first POST and drops the connection, then runs the
                         whole sequence again from the start (what Collect does after a
                         failed send); --chunked sends bodies with Transfer-Encoding:
                         chunked; --basic NAME:TOKEN for Basic auth; --accept N
                         overrides the advertised size. Prints every reply.
"""

import argparse
import base64
import http.client
import json
import os
import socket
import ssl
import sys
import urllib.parse
import uuid
import xml.etree.ElementTree as ET


def build_form(folder):
    import openpyxl
    from pyxform.xls2xform import xls2xform_convert

    wb = openpyxl.Workbook()
    survey = wb.active
    survey.title = "survey"
    rows = [
        ("type", "name", "label"),
        ("start", "start", ""),
        ("end", "end", ""),
        ("today", "today", ""),
        ("deviceid", "deviceid", ""),
        ("text", "ranger", "Ranger"),
        ("geopoint", "where", "Where are you?"),
        ("select_one species", "species", "Species"),
        ("integer", "count", "How many?"),
        ("image", "photo1", "Photo"),
        ("image", "photo2", "Second photo"),
        ("begin_group", "notes", "Notes"),
        ("text", "behaviour", "Behaviour"),
        ("end_group", "", ""),
    ]
    for r in rows:
        survey.append(r)
    choices = wb.create_sheet("choices")
    choices.append(("list_name", "name", "label"))
    for name in ("elephant", "zebra", "lion"):
        choices.append(("species", name, name.title()))
    settings = wb.create_sheet("settings")
    settings.append(("form_id", "form_title", "version"))
    settings.append(("wildlife_sighting", "Wildlife sighting", "2026120201"))
    xlsx = os.path.join(folder, "wildlife.xlsx")
    wb.save(xlsx)
    xform = os.path.join(folder, "wildlife.xml")
    xls2xform_convert(xlsform_path=xlsx, xform_path=xform, validate=False)
    root = primary_instance(xform)
    return {"xform": xform, "form_id": root.get("id"), "version": root.get("version")}


XF = "{http://www.w3.org/2002/xforms}"


def primary_instance(xform):
    doc = ET.parse(xform)
    model = doc.getroot().find(".//" + XF + "model")
    instance = model.find(XF + "instance")
    return list(instance)[0]


def local(tag):
    return tag.split("}", 1)[-1]


def fill_instance(xform, out, instance_id, deprecated_id, values):
    root = primary_instance(xform)
    # Collect writes the instance without the XForms namespace on the data elements.
    def strip(el):
        el.tag = local(el.tag) if not el.tag.startswith("{http://openrosa.org/xforms}") else el.tag
        for child in el:
            strip(child)
    strip(root)
    for el in root.iter():
        name = local(el.tag)
        if name in values:
            el.text = values[name]
    meta = None
    for el in root.iter():
        if local(el.tag) == "meta":
            meta = el
    if meta is None:
        raise SystemExit("the XForm has no meta block")
    for el in list(meta):
        if local(el.tag) == "instanceID":
            if instance_id is None:
                meta.remove(el)
            else:
                el.text = instance_id
    if deprecated_id:
        ns = meta.tag[: -len("meta")]
        dep = ET.SubElement(meta, ns + "deprecatedID")
        dep.text = deprecated_id
    ET.register_namespace("orx", "http://openrosa.org/xforms")
    ET.register_namespace("jr", "http://openrosa.org/javarosa")
    with open(out, "wb") as f:
        f.write(ET.tostring(root, encoding="utf-8", xml_declaration=True))
    return {"xml": out, "instance_id": instance_id}


class Target:
    def __init__(self, url, basic):
        u = urllib.parse.urlsplit(url)
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port
        self.path = u.path.rstrip("/") + "/submission"
        self.basic = basic

    def connection(self):
        if self.https:
            ctx = ssl._create_unverified_context()
            return http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=60)
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def headers(self):
        h = {"X-OpenRosa-Version": "1.0", "User-Agent": "org.odk.collect.android/test"}
        if self.basic:
            h["Authorization"] = "Basic " + base64.b64encode(self.basic.encode()).decode()
        return h


def head(target):
    c = target.connection()
    c.request("HEAD", target.path, headers=target.headers())
    r = c.getresponse()
    r.read()
    return {"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()}}


def multipart(xml_bytes, files, incomplete):
    boundary = "----ctdata-collect-" + uuid.uuid4().hex
    out = []

    def part(name, filename, ctype, data):
        disp = 'form-data; name="%s"' % name
        if filename:
            disp += '; filename="%s"' % filename
        out.append(("--%s\r\nContent-Disposition: %s\r\nContent-Type: %s\r\n\r\n" % (boundary, disp, ctype)).encode())
        out.append(data)
        out.append(b"\r\n")

    part("xml_submission_file", "submission.xml", "text/xml", xml_bytes)
    for path in files:
        name = os.path.basename(path)
        with open(path, "rb") as f:
            part(name, name, "image/jpeg", f.read())
    if incomplete:
        part("*isIncomplete*", None, "text/plain", b"yes")
    out.append(("--%s--\r\n" % boundary).encode())
    return b"".join(out), "multipart/form-data; boundary=" + boundary


def batches(xml_len, files, accept):
    """Collect's split: add files while the POST stays under the advertised size."""
    groups, current, size = [], [], xml_len
    for path in files:
        n = os.path.getsize(path)
        if current and size + n > accept:
            groups.append(current)
            current, size = [], xml_len
        current.append(path)
        size += n
    groups.append(current)
    return groups


def post(target, body, ctype, chunked):
    c = target.connection()
    h = target.headers()
    h["Content-Type"] = ctype
    try:
        if chunked:
            pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
            c.request("POST", target.path, body=pieces, headers=h, encode_chunked=True)
        else:
            c.request("POST", target.path, body=body, headers=h)
        r = c.getresponse()
    except (BrokenPipeError, ConnectionResetError):
        # The server answered before it had read the whole body (a 413 over a limit)
        # and closed: its answer is already here, read it as Collect would.
        if c.sock is None:
            raise
        r = http.client.HTTPResponse(c.sock, method="POST")
        r.begin()
    text = r.read().decode("utf-8", "replace")
    return {"status": r.status, "body": text, "headers": {k.lower(): v for k, v in r.getheaders()}}


def cut_post(target, body, ctype):
    """Sends the headers and half of the body, then drops the connection."""
    raw = socket.create_connection((target.host, target.port), timeout=60)
    if target.https:
        raw = ssl._create_unverified_context().wrap_socket(raw, server_hostname=target.host)
    h = target.headers()
    lines = ["POST %s HTTP/1.1" % target.path, "Host: %s:%s" % (target.host, target.port),
             "Content-Type: " + ctype, "Content-Length: %d" % len(body)]
    lines += ["%s: %s" % kv for kv in h.items()]
    raw.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    raw.sendall(body[: len(body) // 2])
    raw.close()
    return {"status": None, "cut_after": len(body) // 2}


def submit(target, xml_path, files, accept, cut_first, chunked):
    with open(xml_path, "rb") as f:
        xml_bytes = f.read()
    if accept is None:
        accept = int(head(target)["headers"].get("x-openrosa-accept-content-length", 10 << 20))
    groups = batches(len(xml_bytes), files, accept)
    replies = []
    if cut_first:
        body, ctype = multipart(xml_bytes, groups[0], len(groups) > 1)
        replies.append(cut_post(target, body, ctype))
    for i, group in enumerate(groups):
        body, ctype = multipart(xml_bytes, group, i + 1 < len(groups))
        reply = post(target, body, ctype, chunked)
        reply["files"] = [os.path.basename(p) for p in group]
        replies.append(reply)
        if reply["status"] not in (201, 202):
            break
    return {"posts": replies, "accept": accept}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("form")
    f.add_argument("dir")
    i = sub.add_parser("instance")
    i.add_argument("xform")
    i.add_argument("out")
    i.add_argument("--instance-id")
    i.add_argument("--no-instance-id", action="store_true")
    i.add_argument("--deprecated-id")
    i.add_argument("--set", action="append", default=[])
    h = sub.add_parser("head")
    h.add_argument("url")
    h.add_argument("--basic")
    s = sub.add_parser("submit")
    s.add_argument("url")
    s.add_argument("xml")
    s.add_argument("files", nargs="*")
    s.add_argument("--basic")
    s.add_argument("--accept", type=int)
    s.add_argument("--cut-first", action="store_true")
    s.add_argument("--chunked", action="store_true")
    a = p.parse_args()
    if a.cmd == "form":
        out = build_form(a.dir)
    elif a.cmd == "instance":
        values = dict(kv.split("=", 1) for kv in a.set)
        iid = None if a.no_instance_id else (a.instance_id or "uuid:" + str(uuid.uuid4()))
        out = fill_instance(a.xform, a.out, iid, a.deprecated_id, values)
    elif a.cmd == "head":
        out = head(Target(a.url, a.basic))
    else:
        out = submit(Target(a.url, a.basic), a.xml, a.files, a.accept, a.cut_first, a.chunked)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
