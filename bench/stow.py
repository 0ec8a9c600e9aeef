"""STOW-RS against C-STORE: the same node, the same instances, one after the other.

Run on its own::

    .venv/bin/python bench/stow.py                 # 3 interleaved repetitions
    .venv/bin/python bench/stow.py --quick         # fewer, smaller instances; one repetition
    .venv/bin/python bench/stow.py --json out.json

For each repetition a fresh ``radnode serve`` (SQLite, its own folder, free ports; the
quiet period is an hour so that nothing is drafted meanwhile) receives the same instances
by each sender in turn, each into a node of its own:

* ``c-store``: DCMTK ``storescu``, one association;
* ``stow-1``: ``dicomweb-client``, one STOW-RS request per instance;
* ``stow-10``: ``dicomweb-client``, ten instances per request;
* ``raw-10``: httpx posting the files' bytes, ten per request (the sender does no DICOM
  work: this is closest to the node's own cost).

The clock is the sender's wall time until its last answer; both paths answer only once
each instance is fsynced and indexed. The stored count is checked after each run. The
figure that matters is the ratio of each STOW-RS run to the C-STORE run of the same
repetition (the machine's load cancels out as far as it can).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ingest import storescu  # noqa: E402
from ingest_receivers import free_port, stop_process, wait_for_echo  # noqa: E402

from tests.dicom_factory import make_cxr_dataset  # noqa: E402

UPLOADER = "bench-import"
#: The demo bundle (``make demo-model``): the node needs one to start; nothing is drafted.
BUNDLE = Path(__file__).resolve().parent.parent / "var" / "models" / "demo"


def make_instances(folder: Path, count: int, side: int) -> list[Path]:
    """``count`` 16-bit radiographs of ``side`` x ``side`` pixels in one study."""
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    paths = []
    for number in range(1, count + 1):
        image = rng.integers(0, 4096, size=(side, side), dtype=np.uint16)
        ds = make_cxr_dataset(study_uid=study, series_uid=series, instance_number=number,
                              rows=side, cols=side, image=image)
        path = folder / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class Node:
    """``radnode serve`` with its web app, and an uploader's token."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.dicom_port, self.web_port = free_port(), free_port()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RADNODE_")},
                    "RADNODE_DICOM__PORT": str(self.dicom_port),
                    "RADNODE_DICOM__BIND_ADDRESS": "127.0.0.1",
                    "RADNODE_WEB__PORT": str(self.web_port),
                    "RADNODE_WEB__SECRET_KEY_FILE": str(folder / "web.key"),
                    "RADNODE_DATABASE__URL": f"sqlite:///{folder / 'radnode.db'}",
                    "RADNODE_STORAGE__ROOT": str(folder / "storage"),
                    "RADNODE_STORAGE__MIN_FREE_MB": "1",
                    "RADNODE_ASSEMBLY__QUIET_SECONDS": "3600",
                    "RADNODE_ASSEMBLY__EARLY_STABLE_SINGLE_IMAGE": "false",
                    "RADNODE_MODEL__BUNDLE": str(BUNDLE),
                    "RADNODE_LOGGING__LEVEL": "WARNING"}
        cli = [sys.executable, "-m", "node.cli.main"]
        subprocess.run([*cli, "user", "add", UPLOADER, "--role", "uploader", "--name",
                        "Bench^Import", "--password-stdin"], env=self.env, cwd=folder,
                       input=b"a long bench passphrase\n", check=True, capture_output=True)
        self.token = subprocess.run(
            [*cli, "token", "issue", "--user", UPLOADER, "--expires", "1d"], env=self.env,
            cwd=folder, check=True, capture_output=True).stdout.decode().strip()
        log = (folder / "radnode.log").open("wb")
        self.process = subprocess.Popen([*cli, "serve"], env=self.env, cwd=folder,
                                        stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_echo(self.dicom_port, "RADNODE", self.process)
        except RuntimeError:
            print((folder / "radnode.log").read_text()[-2000:], file=sys.stderr)
            raise

    def stored(self) -> int:
        import sqlite3

        with sqlite3.connect(self.folder / "radnode.db") as conn:
            return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])

    def stop(self) -> None:
        stop_process(self.process)


def send_stow(node: Node, files: Sequence[Path], batch: int) -> None:
    from dicomweb_client import DICOMwebClient
    from pydicom import dcmread

    client = DICOMwebClient(f"http://127.0.0.1:{node.web_port}/dicomweb",
                            headers={"Authorization": f"Bearer {node.token}"})
    for start in range(0, len(files), batch):
        answer = client.store_instances([dcmread(p) for p in files[start:start + batch]])
        if "FailedSOPSequence" in answer:
            raise RuntimeError("STOW-RS refused instances")


def send_raw(node: Node, files: Sequence[Path], batch: int) -> None:
    """STOW-RS with httpx and the files' bytes as they are (no pydicom in the sender)."""
    import httpx

    boundary = "radnode-bench"
    with httpx.Client(timeout=600, headers={
            "Authorization": f"Bearer {node.token}",
            "Content-Type": f'multipart/related; type="application/dicom"; '
                            f"boundary={boundary}"}) as client:
        for start in range(0, len(files), batch):
            body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
                            .encode() + p.read_bytes() + b"\r\n"
                            for p in files[start:start + batch])
            body += f"--{boundary}--\r\n".encode()
            answer = client.post(f"http://127.0.0.1:{node.web_port}/dicomweb/studies",
                                 content=body)
            if answer.status_code != 200:
                raise RuntimeError(f"STOW-RS answered {answer.status_code}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    count = args.count or (20 if args.quick else 100)
    side = 256 if args.quick else 1024
    repetitions = 1 if args.quick else 3
    senders: dict[str, Callable[[Node, Sequence[Path]], None]] = {
        "c-store": lambda node, files: storescu(node.dicom_port, "RADNODE", files),
        "stow-1": lambda node, files: send_stow(node, files, 1),
        "stow-10": lambda node, files: send_stow(node, files, 10),
        "raw-10": lambda node, files: send_raw(node, files, 10),
    }
    results: dict[str, list[float]] = {name: [] for name in senders}
    with tempfile.TemporaryDirectory(prefix="radnode-stow-bench-") as tmp:
        (Path(tmp) / "data").mkdir()
        files = make_instances(Path(tmp) / "data", count, side)
        for repetition in range(repetitions):
            for name, send in senders.items():
                node = Node(Path(tmp) / f"{name}-{repetition}")
                try:
                    for path in files:  # warm the page cache for every sender alike
                        path.read_bytes()
                    started = time.perf_counter()
                    send(node, files)
                    elapsed = time.perf_counter() - started
                    if node.stored() != count:
                        raise RuntimeError(f"{name}: {node.stored()} of {count} stored")
                finally:
                    node.stop()
                results[name].append(elapsed)
                print(f"{name:8} rep {repetition + 1}: {count / elapsed:7.1f} instances/s",
                      flush=True)
    summary = {
        name: {"seconds": times, "instances_per_second": count / statistics.median(times),
               "ratio_to_c_store": statistics.median(
                   [t / c for t, c in zip(times, results["c-store"], strict=True)])}
        for name, times in results.items()}
    report = {"command": " ".join(["bench/stow.py", *(argv or sys.argv[1:])]),
              "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPUs", "instances": count,
              "pixels": f"{side}x{side} 16-bit", "results": summary}
    for name, values in summary.items():
        print(f"{name:8} median {values['instances_per_second']:7.1f} instances/s, "
              f"time x{values['ratio_to_c_store']:.2f} of C-STORE")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
