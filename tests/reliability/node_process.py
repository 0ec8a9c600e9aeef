"""A receiving node in a process of its own, so that its memory can be measured.

Run as ``python -m tests.reliability.node_process FOLDER [DICOM_JSON]``: it prints
``PORT <n>`` once listening and stops when its standard input closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.integration.dicom_net import receiver_settings, running_node


def main() -> None:
    folder = Path(sys.argv[1])
    dicom = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    settings = receiver_settings(folder, f"sqlite:///{folder / 'radnode.db'}",
                                 dicom=dicom, logging={"format": "json", "level": "WARNING"})
    with running_node(settings, assembly=False) as node:
        print(f"PORT {node.listener.port}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
