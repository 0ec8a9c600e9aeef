"""Ingest benchmark: the node against DCMTK storescp and Orthanc, same sender, same data.

Run on its own::

    .venv/bin/python bench/ingest.py            # full sizes, three interleaved repetitions
    .venv/bin/python bench/ingest.py --quick    # smaller counts, one repetition (smoke test)
    .venv/bin/python bench/ingest.py --json out.json

Every receiver is started fresh for each scenario and repetition, in its own
temporary folder and on a free loopback port, and the repetitions are
interleaved (storescp, node-sqlite, node-pg, orthanc, storescp, ...). The clock
is the wall time of the sender (DCMTK ``storescu``): the node and Orthanc answer
Success only once the instance is fsynced and indexed, whereas
``storescp +B`` writes the bytes without any fsync, so it is an upper bound
rather than a like-for-like peer.

After each run the receiver's stored count is checked against what was sent
(files for storescp, ``/statistics`` for Orthanc, the ``instances`` table for
the node); a mismatch is reported and makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_receivers import (  # noqa: E402
    MIB,
    PDU_BYTES,
    SENDER_AE,
    MinimalScpReceiver,
    NodeReceiver,
    OrthancReceiver,
    Receiver,
    StoreScpReceiver,
    dd_fsync_seconds,
    serve_minimal_scp,
    wait_until_quiet,
    warm_page_cache,
)

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
#: Receivers each node run is compared with, within the same repetition.
REFERENCES = ("storescp", "orthanc", "pynetdicom-fsync", "dd-fsync", "node-sqlite-baseline")
REFERENCE_TITLES = {
    "storescp": "node ÷ storescp",
    "dd-fsync": "node ÷ dd fsync floor",
    "orthanc": "node ÷ Orthanc",
    "pynetdicom-fsync": "node ÷ pynetdicom-fsync",
    "node-sqlite-baseline": "node ÷ baseline",
}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSet:
    """A folder of Part 10 files to send."""

    name: str
    files: tuple[Path, ...]
    total_bytes: int


def _dx_dataset(
    rows: int,
    columns: int,
    bits_stored: int,
    pixels: np.ndarray,
    study_uid: str,
    series_uid: str,
    instance_number: int,
    view: str,
    patient_index: int,
) -> Dataset:
    """Build one DX For Presentation chest image with a realistic header."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    meta.ImplementationVersionName = "RADNODE_BENCH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240501"
    ds.SeriesDate = "20240501"
    ds.ContentDate = "20240501"
    ds.StudyTime = "101500"
    ds.ContentTime = "101512"
    ds.AccessionNumber = f"ACC{patient_index:07d}"
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Bench Imaging"
    ds.InstitutionName = "Bench Hospital"
    ds.ReferringPhysicianName = "Referrer^Alex"
    ds.StudyDescription = "XR CHEST PA AND LATERAL"
    ds.SeriesDescription = f"CHEST {view}"
    ds.PatientName = f"Bench^Patient{patient_index:04d}"
    ds.PatientID = f"PID{patient_index:07d}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F" if patient_index % 2 else "M"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(patient_index)
    ds.SeriesNumber = instance_number
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["A", "F"] if view == "PA" else ["P", "F"]
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.ImagerPixelSpacing = [0.139, 0.139]
    ds.PixelSpacing = [0.139, 0.139]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2 ** (bits_stored - 1)
    ds.WindowWidth = 2**bits_stored
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = pixels.tobytes()
    return ds


def generate_images(
    folder: Path, name: str, count: int, rows: int, columns: int, *, seed: int
) -> DataSet:
    """Write ``count`` DX images (two per study: PA and lateral) into ``folder``.

    Parameters
    ----------
    folder
        Created if missing.
    name
        Label of the data set.
    count
        Number of instances.
    rows, columns
        Image size.
    seed
        Seed of the pixel generator (the content is noise: what matters is
        the number of bytes, not how well they compress).

    Returns
    -------
    DataSet
        The files written, in sending order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bits_stored = 12 if rows * columns > 64 * 64 else 14
    base = rng.integers(0, 2**bits_stored, size=(rows, columns), dtype=np.uint16)
    files: list[Path] = []
    study_uid = series_uid = ""
    for index in range(count):
        if index % 2 == 0:
            study_uid = generate_uid()
        series_uid = generate_uid()
        view = "PA" if index % 2 == 0 else "LL"
        # Cheap per-image variation so no two pixel payloads are identical.
        shift = int(rng.integers(1, rows * columns))
        pixels = np.roll(base, shift) ^ np.uint16(index & (2**bits_stored - 1))
        ds = _dx_dataset(
            rows,
            columns,
            bits_stored,
            pixels,
            study_uid,
            series_uid,
            index % 2 + 1,
            view,
            index // 2,
        )
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    total = sum(p.stat().st_size for p in files)
    return DataSet(name, tuple(files), total)


def storescu(port: int, called_ae: str, files: Sequence[Path]) -> None:
    """Send ``files`` over one association; raise if anything was not stored.

    Raises
    ------
    RuntimeError
        When storescu reports a failure.
    """
    result = subprocess.run(
        [
            "storescu",
            "-aet",
            SENDER_AE,
            "-aec",
            called_ae,
            "-pdu",
            str(PDU_BYTES),
            "--max-send-pdu",
            str(PDU_BYTES),
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0 or "E: " in output:
        raise RuntimeError(f"storescu failed ({result.returncode}): {output[-800:]}")


def chunks(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split ``files`` into ``parts`` contiguous, nearly equal lists."""
    size, extra = divmod(len(files), parts)
    out: list[list[Path]] = []
    start = 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        out.append(list(files[start:end]))
        start = end
    return out


def send_one_association(receiver: Receiver, data: DataSet) -> None:
    """All files over a single association."""
    storescu(receiver.port, receiver.ae_title, data.files)


def send_association_per_file(receiver: Receiver, data: DataSet) -> None:
    """One storescu invocation (one association) per file, one after another."""
    for path in data.files:
        storescu(receiver.port, receiver.ae_title, [path])


def concurrent(senders: int, per_file: bool) -> Callable[[Receiver, DataSet], None]:
    """Return a sender that splits the data between ``senders`` concurrent senders."""

    def send(receiver: Receiver, data: DataSet) -> None:
        def one_sender(files: list[Path]) -> None:
            if per_file:
                for path in files:
                    storescu(receiver.port, receiver.ae_title, [path])
            else:
                storescu(receiver.port, receiver.ae_title, files)

        with ThreadPoolExecutor(max_workers=senders) as pool:
            for future in [pool.submit(one_sender, part) for part in chunks(data.files, senders)]:
                future.result()

    return send


@dataclass(frozen=True)
class Scenario:
    """What is sent and how."""

    key: str
    title: str
    data: str
    send: Callable[[Receiver, DataSet], None]


# --------------------------------------------------------------------------- running


@dataclass
class RunResult:
    """One receiver, one scenario, one repetition."""

    scenario: str
    receiver: str
    repetition: int
    seconds: float
    instances: int
    total_bytes: int
    stored: int
    verified: bool
    error: str | None = None
    background_cpu: float = 0.0
    """Fraction of the CPUs busy just before the run (other work on the machine)."""
    peak_memory_mib: float = 0.0
    """The receiver's memory high-water mark during the run (all its processes), MiB."""
    start_memory_mib: float = 0.0
    """The receiver's resident memory when the clock started (all its processes), MiB."""
    load_average: float = 0.0
    """The 1-minute load average when the clock started (``uptime``)."""

    @property
    def mib_per_s(self) -> float:
        return self.total_bytes / MIB / self.seconds if self.seconds else 0.0


@dataclass
class Summary:
    """Medians of one scenario for one receiver, and its ratios."""

    scenario: str
    receiver: str
    median_seconds: float
    mib_per_s: float
    instances_per_s: float
    ratios: dict[str, float] = field(default_factory=dict)


def run_once(
    scenario: Scenario,
    receiver: Receiver,
    data: DataSet,
    repetition: int,
    root: Path,
    quiet: tuple[float, float],
) -> RunResult:
    """Start a fresh receiver, time the sender, verify, stop, clean up.

    Parameters
    ----------
    quiet
        CPU-busy threshold and longest wait before the clock starts.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"{receiver.name}-", dir=root))
    # Flush what the previous receiver left dirty (storescp never fsyncs) so it
    # does not slow down the fsyncs of the next one.
    os.sync()
    error: str | None = None
    seconds = 0.0
    stored = -1
    background = 0.0
    peak = start_memory = load = 0.0
    try:
        receiver.start(folder)
        background = wait_until_quiet(*quiet)
        start_memory = receiver.start_memory_mib()
        load = os.getloadavg()[0]
        started = time.perf_counter()
        try:
            scenario.send(receiver, data)
        except RuntimeError as exc:
            error = str(exc)
        seconds = time.perf_counter() - started
        stored = receiver.stored_count()
        peak = receiver.peak_memory_mib()
    except Exception as exc:  # report and carry on with the next run
        error = f"{type(exc).__name__}: {exc}"
    finally:
        receiver.stop()
        shutil.rmtree(folder, ignore_errors=True)
    count = len(data.files)
    verified = error is None and stored == count
    if error is None and stored != count:
        error = f"stored {stored} of {count} instances"
    return RunResult(
        scenario.key,
        receiver.name,
        repetition,
        seconds,
        count,
        data.total_bytes,
        stored,
        verified,
        error,
        background,
        peak,
        start_memory,
        load,
    )


def run_dd_floor(scenario: Scenario, data: DataSet, repetition: int, root: Path) -> RunResult:
    """Time ``dd … conv=fsync`` writing as many bytes as the scenario sends."""
    os.sync()
    load = os.getloadavg()[0]
    seconds = dd_fsync_seconds(root, data.total_bytes)
    count = len(data.files)
    return RunResult(scenario.key, "dd-fsync", repetition, seconds, count, data.total_bytes,
                     count, True, load_average=load)


def summarize(results: list[RunResult], scenario: str) -> list[Summary]:
    """Medians per receiver, and per-repetition throughput ratios of each node run."""
    rows = [r for r in results if r.scenario == scenario and r.verified]
    by_receiver: dict[str, list[RunResult]] = {}
    for r in rows:
        by_receiver.setdefault(r.receiver, []).append(r)
    summaries: list[Summary] = []
    for name, runs in by_receiver.items():
        seconds = statistics.median(r.seconds for r in runs)
        total = runs[0].total_bytes
        summary = Summary(
            scenario, name, seconds, total / MIB / seconds, runs[0].instances / seconds
        )
        if name.startswith("node"):
            for reference in REFERENCES:
                if reference == name:
                    continue
                per_rep = []
                for run in runs:
                    peer = by_receiver.get(reference, [])
                    same = [p for p in peer if p.repetition == run.repetition]
                    if same:
                        # Throughput ratio: > 1 means the node is faster.
                        per_rep.append(same[0].seconds / run.seconds)
                if per_rep:
                    summary.ratios[reference] = statistics.median(per_rep)
        summaries.append(summary)
    return summaries


def markdown(scenarios: Sequence[Scenario], results: list[RunResult]) -> str:
    """Render the summary as markdown tables (one per scenario)."""
    present = {r.receiver for r in results}
    references = [ref for ref in REFERENCES if ref in present]
    lines: list[str] = []
    for scenario in scenarios:
        lines.append(f"#### {scenario.title}")
        lines.append("")
        header = ("| receiver | median s | MiB/s | instances/s | memory MiB, start → peak "
                  "| load (1 min) | runs (s) |")
        header += "".join(f" {REFERENCE_TITLES[ref]} |" for ref in references)
        lines.append(header)
        lines.append("|---|---:|---:|---:|---:|---|---|" + "---:|" * len(references))
        for summary in summarize(results, scenario.key):
            mine = [r for r in results
                    if r.scenario == scenario.key and r.receiver == summary.receiver
                    and r.verified]
            runs = [f"{r.seconds:.2f}" for r in mine]
            memory = (
                f"{statistics.median(r.start_memory_mib for r in mine):.0f} → "
                f"{statistics.median(r.peak_memory_mib for r in mine):.0f}"
                if any(r.peak_memory_mib for r in mine) else ""
            )
            loads = [r.load_average for r in mine]
            load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else ""
            cells = [
                f"{summary.ratios[ref]:.2f}×" if ref in summary.ratios else "" for ref in references
            ]
            lines.append(
                f"| {summary.receiver} | {summary.median_seconds:.2f} | {summary.mib_per_s:.1f} "
                f"| {summary.instances_per_s:.1f} | {memory} | {load} | {', '.join(runs)} |"
                + "".join(f" {cell} |" for cell in cells)
            )
        failed = [r for r in results if r.scenario == scenario.key and not r.verified]
        for r in failed:
            lines.append(f"\nFAILED {r.receiver} rep {r.repetition}: {r.error}")
        lines.append("")
    lines.append(
        "Ratios are throughput ratios (the reference's seconds ÷ the node's seconds) taken "
        "within the same repetition, median over repetitions: above 1 means the node is faster."
    )
    return "\n".join(lines)


def machine_facts() -> dict[str, str]:
    """CPU model, core count, memory and the date, for the report."""
    facts = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cores": str(os.cpu_count()),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                facts["cpu"] = line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory_gib"] = f"{int(line.split()[1]) / 2**20:.1f}"
    return facts


@contextlib.contextmanager
def work_folder(explicit: Path | None, keep: bool) -> Iterator[Path]:
    """A scratch folder, removed afterwards unless kept or given."""
    if explicit is not None:
        explicit.mkdir(parents=True, exist_ok=True)
        yield explicit
        return
    path = Path(tempfile.mkdtemp(prefix="radnode-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def build_receivers(names: Sequence[str], baseline: Path | None) -> list[Receiver]:
    """Instantiate the receivers named on the command line, in interleaving order.

    With ``baseline``, a ``node-sqlite-baseline`` receiver (the node imported
    from that folder) follows ``node-sqlite``.
    """
    factories: dict[str, Callable[[], Receiver]] = {
        "storescp": StoreScpReceiver,
        "node-sqlite": lambda: NodeReceiver("sqlite"),
        "node-pg": lambda: NodeReceiver("postgres"),
        # Two listener processes sharing the DICOM port ([dicom] listener_processes).
        "node-sqlite-2p": lambda: NodeReceiver(
            "sqlite", label="-2p", extra_env={"RADNODE_DICOM__LISTENER_PROCESSES": "2"}),
        "node-pg-2p": lambda: NodeReceiver(
            "postgres", label="-2p", extra_env={"RADNODE_DICOM__LISTENER_PROCESSES": "2"}),
        "orthanc": OrthancReceiver,
        "pynetdicom-fsync": MinimalScpReceiver,
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise SystemExit(f"unknown receivers {unknown}; choose from {sorted(factories)}")
    receivers: list[Receiver] = []
    for name in names:
        receivers.append(factories[name]())
        if name == "node-sqlite" and baseline is not None:
            receivers.append(NodeReceiver("sqlite", source=baseline, label="-baseline"))
    return receivers


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--json", type=Path, help="also write every run and the summary here")
    parser.add_argument("--repetitions", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument(
        "--receivers",
        default="storescp,node-sqlite,node-sqlite-2p,node-pg,node-pg-2p,orthanc,pynetdicom-fsync",
        help="comma-separated, in interleaving order",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run node-sqlite imported from this source folder (A/B of two versions)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.5,
        help="wait before each timed run until the CPUs are less busy than this fraction",
    )
    parser.add_argument(
        "--quiet-timeout", type=float, default=5.0, help="longest such wait, in seconds"
    )
    parser.add_argument("--large-count", type=int,
                        help="large images (default 40, quick 8)")
    parser.add_argument("--small-count", type=int,
                        help="small instances (default 200, quick 40)")
    parser.add_argument(
        "--node-broker",
        default="redis://127.0.0.1:6379/15",
        help="[broker] url for the node (no embedded drafting worker, so no model is "
        "loaded at start); '' for the embedded queue",
    )
    parser.add_argument("--no-dd", action="store_true",
                        help="skip the dd conv=fsync floor of the large scenarios")
    parser.add_argument(
        "--dcmtk-nagle",
        action="store_true",
        help="leave DCMTK's default (Nagle on) instead of setting TCP_NODELAY=1",
    )
    parser.add_argument("--minimal-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--scenarios",
        default="large-1assoc,small-per-assoc,large-4x,small-4x",
        help="comma-separated scenario keys",
    )
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the data, run every scenario against every receiver, print the tables."""
    args = parse_args(argv)
    # Stopping the benchmark (SIGTERM) unwinds like Ctrl-C, so that the running
    # receiver is stopped and its PostgreSQL schema dropped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.minimal_scp:
        serve_minimal_scp(int(args.minimal_scp[0]), Path(args.minimal_scp[1]))
        return 0
    # Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1 is set, which
    # adds two delayed-ACK stalls (about 40 ms each) to every association. Turn it
    # off for every DCMTK process here: the sender, storescp and Orthanc alike.
    if args.dcmtk_nagle:
        os.environ.pop("TCP_NODELAY", None)
    else:
        os.environ.setdefault("TCP_NODELAY", "1")
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            print(f"{tool} (DCMTK) is required", file=sys.stderr)
            return 2
    repetitions = args.repetitions or (1 if args.quick else 3)
    large_count = args.large_count or (8 if args.quick else 40)
    small_count = args.small_count or (40 if args.quick else 200)
    NodeReceiver.broker_url = args.node_broker
    receivers = build_receivers(
        [n.strip() for n in args.receivers.split(",") if n.strip()], args.baseline_src
    )
    quiet = (args.quiet_threshold, args.quiet_timeout)

    all_scenarios = [
        Scenario(
            "large-1assoc",
            f"{large_count} large DX images, one association",
            "large",
            send_one_association,
        ),
        Scenario(
            "small-per-assoc",
            f"{small_count} small instances, one association each",
            "small",
            send_association_per_file,
        ),
        Scenario(
            "large-4x",
            f"4 concurrent senders × {large_count // 4} large images (one association each)",
            "large",
            concurrent(4, per_file=False),
        ),
        Scenario(
            "small-4x",
            f"4 concurrent senders × {small_count // 4} small instances "
            "(one association per instance)",
            "small",
            concurrent(4, per_file=True),
        ),
    ]
    wanted = {k.strip() for k in args.scenarios.split(",") if k.strip()}
    scenarios = [s for s in all_scenarios if s.key in wanted]

    facts = machine_facts()
    print(f"machine: {facts}", flush=True)
    with work_folder(args.work_dir, args.keep) as root:
        print(
            f"generating {large_count} × 2500×2048 and {small_count} × 64×64 DX images "
            f"in {root} ...",
            flush=True,
        )
        started = time.perf_counter()
        datasets = {
            "large": generate_images(root / "large", "large", large_count, 2500, 2048, seed=1),
            "small": generate_images(root / "small", "small", small_count, 64, 64, seed=2),
        }
        for data in datasets.values():
            warm_page_cache(data.files)
            print(
                f"  {data.name}: {len(data.files)} files, {data.total_bytes / MIB:.1f} MiB",
                flush=True,
            )
        print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)

        runs_root = root / "runs"
        runs_root.mkdir(exist_ok=True)
        results: list[RunResult] = []
        total_runs = len(scenarios) * repetitions * len(receivers)
        done = 0
        clock = time.perf_counter()
        for scenario in scenarios:
            data = datasets[scenario.data]
            for repetition in range(1, repetitions + 1):
                if scenario.data == "large" and not args.no_dd:
                    floor = run_dd_floor(scenario, data, repetition, runs_root)
                    results.append(floor)
                    print(f"[{scenario.key} rep {repetition}/{repetitions}] dd-fsync    "
                          f"{floor.seconds:7.2f} s {floor.mib_per_s:8.1f} MiB/s  "
                          f"(load {floor.load_average:.1f})", flush=True)
                for receiver in receivers:
                    result = run_once(scenario, receiver, data, repetition, runs_root, quiet)
                    results.append(result)
                    done += 1
                    elapsed = time.perf_counter() - clock
                    remaining = elapsed / done * (total_runs - done)
                    status = (
                        f"verified {result.stored}/{result.instances}"
                        if result.verified
                        else f"FAILED: {result.error}"
                    )
                    print(
                        f"[{done}/{total_runs}, {elapsed / 60:.1f} min, about "
                        f"{remaining / 60:.0f} min left] "
                        f"[{scenario.key} rep {repetition}/{repetitions}] {receiver.name:<11} "
                        f"{result.seconds:7.2f} s {result.mib_per_s:8.1f} MiB/s  {status}"
                        f"  memory {result.start_memory_mib:4.0f}→{result.peak_memory_mib:4.0f} MiB"
                        f"  (CPU busy before: {result.background_cpu:.0%}, "
                        f"load {result.load_average:.1f})",
                        flush=True,
                    )

    table = markdown(scenarios, results)
    print()
    print(table)
    if args.json:
        payload = {
            "machine": facts,
            "repetitions": repetitions,
            "pdu_bytes": PDU_BYTES,
            "tcp_nodelay": os.environ.get("TCP_NODELAY", ""),
            "large_count": large_count,
            "small_count": small_count,
            "node_broker": args.node_broker,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "runs": [asdict(r) | {"mib_per_s": r.mib_per_s} for r in results],
            "summary": [asdict(s) for sc in scenarios for s in summarize(results, sc.key)],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    return 0 if all(r.verified for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
