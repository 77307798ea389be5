"""Entry point: ``python app -i DICOM_DIR -o OUT_DIR [-w WORKDIR] [-m MODEL_DIR] [-l LEVEL]``.

Also what the MAP runs (``python3 /opt/holoscan/app``, paths from ``HOLOSCAN_*`` variables). Exit codes:
see ``operators/exit_status.py`` and README "Exit codes".
"""

from __future__ import annotations

import sys
from pathlib import Path

# The sibling packages (nsn2n, dicom_series, qa_report, operators, app) live next to this folder in a
# checkout and inside it in the MAP (/opt/holoscan/app): make both layouts importable.
_here = Path(__file__).resolve().parent
for _root in (_here.parent, _here):
    if (_root / "nsn2n").is_dir() and str(_root) not in sys.path:
        sys.path.insert(0, str(_root))

from app.main import cli  # noqa: E402

if __name__ == "__main__":
    cli()
