"""Synthetic demo model: phantoms, report templates, tokenizer, training pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.unit.inference.synth_support import DEMO_BUNDLE, tiny_synth_bundle
from workers.inference.bundle import load_bundle, verify_bundle
from workers.inference.manifest import BundleManifest, sha256_file
from workers.inference.synth.data import aux_target_vector, stored_to_display
from workers.inference.synth.phantom import (
    CARDIOMEGALY_CTR,
    Consolidation,
    Effusion,
    PhantomLabels,
    Pneumothorax,
    random_phantom,
    render_phantom,
    sample_labels,
)
from workers.inference.synth.reports import read_findings, write_report
from workers.inference.synth.tokenizer import BOS, EOS, PAD, UNK, build_tokenizer, save_tokenizer
from workers.inference.synth.train import (
    REDUCED_CONFIG,
    SYNTH_NOTICE,
    TRAINING_RECORD,
    synthesize_demo_bundle,
)

NORMAL = PhantomLabels(ctr=0.42)


# ------------------------------------------------------------------------------------------
# Phantoms
# ------------------------------------------------------------------------------------------


def test_phantom_is_deterministic() -> None:
    a = render_phantom(NORMAL, size=128, seed=7)
    b = render_phantom(NORMAL, size=128, seed=7)
    c = render_phantom(NORMAL, size=128, seed=8)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert not np.array_equal(a.pixels, c.pixels)
    assert a.pixels.dtype == np.uint16 and int(a.pixels.max()) <= 4095
    assert random_phantom(3, size=96).labels == random_phantom(3, size=96).labels


def test_sample_labels_is_deterministic_and_varied() -> None:
    first = [sample_labels(np.random.default_rng(5)) for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(0)
    many = [sample_labels(rng) for _ in range(400)]
    assert 0.1 < np.mean([m.is_normal for m in many]) < 0.5
    assert 0.1 < np.mean([m.cardiomegaly for m in many]) < 0.5
    assert any(m.pneumothorax for m in many) and any(m.effusion for m in many)


def test_cardiothoracic_ratio_is_measurable() -> None:
    small = render_phantom(PhantomLabels(ctr=0.42), size=256, seed=1)
    large = render_phantom(PhantomLabels(ctr=0.64), size=256, seed=1)
    assert small.measured_ctr == pytest.approx(0.42, abs=0.03)
    assert large.measured_ctr == pytest.approx(0.64, abs=0.03)
    assert large.labels.cardiomegaly and not small.labels.cardiomegaly
    assert small.labels.ctr < CARDIOMEGALY_CTR < large.labels.ctr
    # The heart's bright silhouette is wider at heart level in the picture itself.
    row = int(0.64 * 256)

    def bright_run(pixels: np.ndarray) -> int:
        line = pixels[row] > 0.62 * 4095
        return int(line.sum())

    assert bright_run(large.pixels) > bright_run(small.pixels) + 20


def _region_mean(pixels: np.ndarray, rows: slice, cols: slice) -> float:
    return float(pixels[rows, cols].astype(np.float64).mean())


def test_effusion_fills_the_costophrenic_angle_on_its_side() -> None:
    size = 256
    base = render_phantom(NORMAL, size=size, seed=2).pixels
    right = render_phantom(
        PhantomLabels(ctr=0.42, effusion=Effusion("right", "large")), size=size, seed=2
    ).pixels
    # Patient's right is the image's left; the effusion brightens the left lower zone only.
    lower_left = (
        slice(int(0.6 * size), int(0.75 * size)),
        slice(int(0.2 * size), int(0.35 * size)),
    )
    lower_right = (
        slice(int(0.6 * size), int(0.75 * size)),
        slice(int(0.65 * size), int(0.8 * size)),
    )
    assert _region_mean(right, *lower_left) > _region_mean(base, *lower_left) + 300
    assert abs(_region_mean(right, *lower_right) - _region_mean(base, *lower_right)) < 50


def test_pneumothorax_darkens_the_lateral_rim() -> None:
    size = 256
    base = render_phantom(NORMAL, size=size, seed=4).pixels
    left = render_phantom(
        PhantomLabels(ctr=0.42, pneumothorax=Pneumothorax("left", "large")), size=size, seed=4
    ).pixels
    rim = (slice(int(0.3 * size), int(0.55 * size)), slice(int(0.78 * size), int(0.82 * size)))
    assert _region_mean(left, *rim) < _region_mean(base, *rim) - 100


def test_devices_and_consolidation_change_pixels() -> None:
    base = render_phantom(NORMAL, size=128, seed=9).pixels
    with_devices = render_phantom(
        PhantomLabels(ctr=0.42, devices=("ett", "pacemaker"), ett_cm_above_carina=4),
        size=128,
        seed=9,
    ).pixels
    consolidated = render_phantom(
        PhantomLabels(ctr=0.42, consolidation=Consolidation("left", "upper")), size=128, seed=9
    ).pixels
    assert int(with_devices.max()) > 3900 and (with_devices != base).sum() > 100
    assert consolidated.astype(np.int64).sum() > base.astype(np.int64).sum()


def test_display_rendering_and_aux_targets() -> None:
    phantom = render_phantom(
        PhantomLabels(ctr=0.6, effusion=Effusion("bilateral", "small")), size=96, seed=0
    )
    for mode in ("percentile", "full"):
        display = stored_to_display(phantom.pixels, phantom.bits, mode)
        assert display.dtype == np.uint8 and display.shape == (96, 96)
    targets = aux_target_vector(phantom.labels)
    assert targets.sum() == 3  # cardiomegaly + effusion right + effusion left


# ------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------


def test_normal_report_wording() -> None:
    report = write_report(NORMAL, 0)
    assert report.text.startswith("FINDINGS: ") and " IMPRESSION: " in report.text
    assert "pneumothorax" in report.findings.lower()
    assert report.impression in (
        "No acute cardiopulmonary process.",
        "No acute cardiopulmonary abnormality.",
    )


def test_report_phrasing_varies_with_the_seed() -> None:
    labels = PhantomLabels(ctr=0.62, effusion=Effusion("right", "small"))
    texts = {write_report(labels, seed).findings for seed in range(20)}
    assert len(texts) > 2
    assert any("Small right pleural effusion." in t for t in texts)
    assert all("heart is normal" not in t.lower() for t in texts)


def test_report_keywords_read_back_the_labels() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        labels = sample_labels(rng)
        found = read_findings(write_report(labels, rng).text)
        assert found.cardiomegaly == labels.cardiomegaly
        assert found.effusion == (labels.effusion.side if labels.effusion else None)
        assert found.pneumothorax == (labels.pneumothorax.side if labels.pneumothorax else None)
        assert found.consolidation == (labels.consolidation.side if labels.consolidation else None)
        assert found.edema == labels.edema
        assert found.atelectasis == labels.atelectasis
        assert found.devices == frozenset(labels.devices)


# ------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = np.random.default_rng(0)
    return [write_report(sample_labels(rng), rng).text for _ in range(300)]


def test_tokenizer_round_trip_and_special_ids(corpus: list[str], tmp_path: Path) -> None:
    tokenizer = build_tokenizer(corpus)
    assert [tokenizer.token_to_id(t) for t in (UNK, BOS, EOS)] == [0, 1, 2]
    for text in corpus[:50]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
        assert len(ids) <= len(text.split()) * 2
    from transformers import AutoTokenizer

    save_tokenizer(tokenizer, tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert (loaded.bos_token, loaded.eos_token, loaded.unk_token, loaded.pad_token) == (
        BOS,
        EOS,
        UNK,
        PAD,
    )
    text = "Größere Ergüsse beidseits\n(→ 5 cm)"
    with_bos = loaded(text)["input_ids"]
    without = loaded(text, add_special_tokens=False)["input_ids"]
    assert with_bos[0] == loaded.bos_token_id and with_bos[1:] == without
    assert loaded.unk_token_id not in without  # byte fallback covers every character
    assert loaded.decode(with_bos, skip_special_tokens=True) == text


# ------------------------------------------------------------------------------------------
# Training pipeline (reduced configuration; the full model is built by the setup)
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reduced_training_writes_a_working_bundle() -> None:
    path = tiny_synth_bundle()
    manifest = BundleManifest.load(path)
    assert manifest.architecture == "radnode-synth" and manifest.synthetic
    assert manifest.licence == SYNTH_NOTICE and manifest.intended_use == SYNTH_NOTICE
    assert manifest.generation.greedy and manifest.output_sections == "findings_impression"
    assert manifest.prompt.style == "radnode_plain"
    assert verify_bundle(path).ok
    record = json.loads((path / "llm" / TRAINING_RECORD).read_text())
    assert record["parameters"]["total"] > 0 and record["seed"] == 0
    for backend in ("onnx", "torch"):
        bundle = load_bundle(path, encoder_backend=backend)  # type: ignore[arg-type]
        pixels = np.zeros((1, 3, manifest.preprocess.size, manifest.preprocess.size), np.float32)
        embeds = bundle.encode(pixels)
        assert embeds.shape == (1, manifest.num_image_tokens, manifest.projector.out_dim)
        result = bundle.generate(embeds[0], indication="Cough.", max_new_tokens=12)
        assert isinstance(result.text, str) and 0 < result.new_tokens <= 12


@pytest.mark.slow
def test_training_is_deterministic(tmp_path: Path) -> None:
    steps: list[tuple[int, int, float]] = []
    again = synthesize_demo_bundle(
        tmp_path / "again", seed=0, config=REDUCED_CONFIG, progress=lambda *a: steps.append(a)
    )
    first = tiny_synth_bundle()
    for name in ("encoder.safetensors", "llm/model.safetensors", "llm/tokenizer.json"):
        assert sha256_file(first / name) == sha256_file(again / name), name
    assert BundleManifest.load(first).device_uid == BundleManifest.load(again).device_uid
    total = steps[-1][1]
    assert [s[0] for s in steps] == list(range(1, total + 1))
    assert all(np.isfinite(s[2]) for s in steps)


@pytest.mark.usefixtures("demo_bundle_built")
def test_demo_bundle_follows_the_image() -> None:
    from workers.inference.synth.evaluate import evaluate_bundle

    report = evaluate_bundle(load_bundle(DEMO_BUNDLE), studies=40, seed=950_000)
    summary = report.to_dict()
    assert summary["per_finding"]["cardiomegaly"]["agreement"] >= 0.85
    assert summary["per_finding"]["effusion"]["agreement"] >= 0.8
    assert summary["macro_agreement"] >= 0.85
