"""Checks a Darwin Core Archive with dwcahandler (the Atlas of Living Australia's
archive library), a second reader independent of python-dwca-reader, and prints what
the tests compare as one JSON object.

Usage: dwca_validate.py ARCHIVE.zip
It validates the core as dwcahandler does before it publishes or merges an archive
(unique occurrenceID keys, columns it recognises, none twice) and reports the core's
row type, its row count and its columns.
"""

import json
import logging
import sys

from dwcahandler import Dwca, MetaElementTypes


def main():
    # dwcahandler logs its findings; keep standard output for the JSON.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    archive = Dwca(dwca_file_loc=sys.argv[1])
    archive.extract_dwca()
    valid = archive.validate_content(
        content_to_validate={MetaElementTypes.OCCURRENCE: ["occurrenceID"]}
    )
    core = archive.core_content
    json.dump(
        {
            "valid": bool(valid),
            "row_type": str(core.meta_info.type.name),
            "rows": len(core.df_content),
            "columns": [str(c) for c in core.df_content.columns],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
