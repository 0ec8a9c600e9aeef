"""Malformed datasets by C-STORE: refused with a status, never stored, the node keeps serving.

Two sources of hostile input: a deterministic generator of more than a thousand
broken instances (every kind of :class:`~tests.reliability.malformed.Defect`),
sent over a few associations, and Hypothesis mutating valid instances at the
byte level with a fixed seed. These tests are about the DICOM edge, not the
database, so they run on SQLite only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.dicom.statuses import StoreStatus
from node.runtime import NodeServices
from tests.dicom_factory import make_cxr_dataset
from tests.integration.dicom_files import part10
from tests.integration.dicom_net import receiver_settings, running_node
from tests.reliability.hostile_scu import (
    ABORTED,
    SUCCESS,
    RawStoreSender,
    assert_every_stored_instance_is_whole,
    record_figures,
    store_good_instance,
    stored_instance_uids,
    write_instances,
)
from tests.reliability.malformed import Defect, MalformedGenerator, _encode

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning"),
]

MALFORMED_COUNT = 1040
BATCHES = 4
HYPOTHESIS_EXAMPLES = 250
REFUSALS = frozenset({int(StoreStatus.CANNOT_UNDERSTAND),
                      int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)})


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeServices]:
    """A receiving node on SQLite (no model: nothing is drafted)."""
    settings = receiver_settings(tmp_path, f"sqlite:///{tmp_path / 'radnode.db'}")
    with running_node(settings) as services:
        yield services


def test_generated_malformed_datasets_are_refused(node: NodeServices, tmp_path: Path) -> None:
    """Each of 1,040 broken instances gets its defect's failure status (0xC210, or 0xA900
    for a SOP class mismatch) and is not stored; after every batch a valid instance on a
    fresh association is stored; in the end only those valid instances are kept."""
    instances = list(MalformedGenerator().generate(MALFORMED_COUNT))
    assert {i.defect for i in instances} == set(Defect)
    paths = write_instances(tmp_path / "malformed", instances)
    statuses: Counter[str] = Counter()
    per_defect: dict[str, Counter[str]] = {d.name: Counter() for d in Defect}
    unexpected: list[str] = []
    good_uids: set[str] = set()
    sender = RawStoreSender(node.listener.port)
    started = time.monotonic()
    size = -(-len(instances) // BATCHES)
    for first in range(0, len(instances), size):
        for instance, path in zip(instances[first : first + size], paths[first : first + size],
                                  strict=True):
            status = sender.send(path)
            label = "abort" if status == ABORTED else f"0x{status:04X}"
            statuses[label] += 1
            per_defect[instance.defect.name][label] += 1
            if status not in instance.expected_statuses:
                unexpected.append(f"{instance.name}: {label}")
        sender.close()
        good_uids.add(store_good_instance(node))
    elapsed = time.monotonic() - started

    assert unexpected == [], unexpected[:20]
    assert stored_instance_uids(node) == good_uids
    assert assert_every_stored_instance_is_whole(node) == BATCHES
    record_figures("malformed_datasets", {
        "instances": len(instances),
        "associations": sender.associations,
        "statuses": dict(statuses),
        "per_defect": {name: dict(counts) for name, counts in per_defect.items()},
        "stored_malformed": len(stored_instance_uids(node) - good_uids),
        "valid_after_each_batch": len(good_uids),
        "seconds": round(elapsed, 1),
    })


def _bases() -> list[tuple[str, bytes, str, str]]:
    """Valid instances to mutate: (transfer syntax, dataset bytes, SOP class, SOP instance)."""
    bases = []
    for number, (syntax, implicit) in enumerate(
        ((ExplicitVRLittleEndian, False), (ImplicitVRLittleEndian, True))
    ):
        ds = make_cxr_dataset(rows=16, cols=16, bits=8, view_code="PA", seed=number,
                              modality=("DX", "CR")[number])
        bases.append((syntax, _encode(ds, implicit=implicit), str(ds.SOPClassUID),
                      str(ds.SOPInstanceUID)))
    return bases


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(("overwrite", "insert", "delete", "truncate")),
        st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1, max_size=4,
)


def _mutate(body: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    for kind, where, payload in edits:
        at = int(where * len(body)) if body else 0
        if kind == "overwrite":
            body = body[:at] + payload + body[at + len(payload):]
        elif kind == "insert":
            body = body[:at] + payload + body[at:]
        elif kind == "delete":
            body = body[:at] + body[at + len(payload):]
        else:
            body = body[:at]
    return body


def test_mutated_instances_are_refused_or_stored_whole(node: NodeServices,
                                                       tmp_path: Path) -> None:
    """Hypothesis (fixed seed) overwrites, inserts, deletes and cuts bytes of valid
    instances: every answer is Success, 0xC210 or 0xA900 (never 0xC211, 0x0110 or an
    abort), and whatever was stored decodes whole with pixels that match its header."""
    bases = _bases()
    sender = RawStoreSender(node.listener.port, calling_ae="MUTATOR")
    outcomes: Counter[str] = Counter()
    folder = tmp_path / "mutated"
    folder.mkdir()

    @settings(max_examples=HYPOTHESIS_EXAMPLES, derandomize=True, deadline=None,
              database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(base=st.sampled_from(range(len(bases))), edits=_EDITS)
    def send_mutated(base: int, edits: list[tuple[str, float, bytes]]) -> None:
        syntax, body, sop_class, sop_instance = bases[base]
        path = folder / "mutated.dcm"
        path.write_bytes(part10(_mutate(body, edits), sop_class_uid=sop_class,
                                sop_instance_uid=sop_instance, transfer_syntax_uid=syntax))
        status = sender.send(path)
        outcomes["abort" if status == ABORTED else f"0x{status:04X}"] += 1
        assert status in REFUSALS | {SUCCESS}, f"answered 0x{status:04X}"

    send_mutated()
    sender.close()
    checked = assert_every_stored_instance_is_whole(node)
    store_good_instance(node)
    assert sum(outcomes.values()) >= HYPOTHESIS_EXAMPLES
    record_figures("mutated_datasets", {
        "examples": sum(outcomes.values()),
        "statuses": dict(outcomes),
        "associations": sender.associations,
        "stored_and_whole": checked,
    })
