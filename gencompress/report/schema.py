"""Write the JSON Schema of report.json next to this module: ``python -m gencompress.report.schema``."""

import json
from pathlib import Path

from gencompress.results import json_schema

PATH = Path(__file__).with_name("schema.json")

if __name__ == "__main__":
    PATH.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"written: {PATH}")
