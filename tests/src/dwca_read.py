"""Reads a Darwin Core Archive with python-dwca-reader, an independent reader, and
prints what the tests check as one JSON object.

Usage: dwca_read.py ARCHIVE.zip [--rows]
With --rows the core rows are listed in full (short term name -> value); without,
only counts and the set of ids, for large archives.
"""

import json
import sys

from dwca.read import DwCAReader

EML = "eml://ecoinformatics.org/eml-2.1.1"


def main():
    path = sys.argv[1]
    with_rows = "--rows" in sys.argv[2:]
    with DwCAReader(path) as archive:
        core = archive.descriptor.core
        fields = sorted(core.fields, key=lambda f: f["index"] if f["index"] is not None else -1)
        out = {
            "row_type": core.type,
            "id_index": core.id_index,
            "field_terms": [f["term"] for f in fields],
            "field_indexes": [f["index"] for f in fields],
            "encoding": core.file_encoding,
        }
        rows = []
        ids = set()
        count = 0
        for row in archive:
            count += 1
            ids.add(row.id)
            if with_rows:
                rows.append({term.rsplit("/", 1)[-1]: value for term, value in row.data.items()})
        out["count"] = count
        out["unique_ids"] = len(ids)
        if with_rows:
            out["rows"] = rows
        eml = archive.metadata
        out["eml_root"] = eml.tag if eml is not None else None
        if eml is not None:
            dataset = eml.find("dataset")
            ulink = dataset.find("intellectualRights/para/ulink")
            out["eml"] = {
                "title": dataset.findtext("title"),
                "abstract": dataset.findtext("abstract/para"),
                "licence_url": ulink.get("url") if ulink is not None else None,
                "licence_title": ulink.findtext("citetitle") if ulink is not None else None,
                "creator_email": dataset.findtext("creator/electronicMailAddress"),
                "publisher": dataset.findtext("associatedParty/organizationName"),
                "contact_surname": dataset.findtext("contact/individualName/surName"),
            }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
