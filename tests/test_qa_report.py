"""Tests of the QA report package (display windows, montage, PDF, run record). Runs in a few seconds."""

from __future__ import annotations

import copy
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pypdf
import pytest
from PIL import Image

from qa_report import (
    CT_SOFT_TISSUE_WINDOW,
    NOTICE,
    RunRecordError,
    difference_window,
    display_window,
    downsample_loss_history,
    format_noise,
    format_reduction,
    make_run_record,
    montage_size,
    noise_reduction_percent,
    render_montage,
    render_report_pdf,
    save_montage,
    validate_run_record,
    write_run_record,
)
from qa_report.montage import TILE, choose_slices
from qa_report.pdf import latin1_safe
from qa_report.run_record import load_schema

SOURCE_DESCRIPTION = "CT THORAX 1.25mm B30f"
DERIVED_DESCRIPTION = "NS-N2N denoised (research use)"


def _phantom(shape: tuple[int, int, int], *, noise: float, seed: int = 0, ct: bool = True) -> np.ndarray:
    """An elliptical 'body' with two inserts, air outside, plus Gaussian noise (HU for CT)."""
    d, h, w = shape
    _, y, x = np.mgrid[0:d, 0:h, 0:w]
    r = ((y - h / 2) / (0.42 * h)) ** 2 + ((x - w / 2) / (0.42 * w)) ** 2
    vol = np.where(r < 1, 40.0, -1000.0)
    vol = np.where(r < 0.05, 300.0, vol)
    vol = vol + np.random.default_rng(seed).normal(0.0, noise, shape)
    if not ct:
        vol = np.abs(vol + 1000.0) / 4.0
    return vol.astype(np.float32)


def _record(**overrides) -> dict:
    record = make_run_record(
        software_name="nsn2n-denoise",
        software_version="0.1.0",
        created="2025-03-14T09:26:53+00:00",
        source={
            "study_instance_uid": "1.2.826.0.1.3680043.8.498.10",
            "series_instance_uid": "1.2.826.0.1.3680043.8.498.11",
            "series_description": SOURCE_DESCRIPTION,
            "modality": "CT",
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "n_instances": 40,
        },
        derived={
            "series_instance_uid": "1.2.826.0.1.3680043.8.498.12",
            "series_number": 1003,
            "series_description": DERIVED_DESCRIPTION,
            "output_folder": "/tmp/out/1.2.826.0.1.3680043.8.498.12",
        },
        volume={"shape": [40, 64, 48], "spacing_mm": [1.25, 0.7, 0.7], "slice_gap_max_mm": 1.25, "dtype": "int16"},
        device="cpu",
        parameters={"max_steps": 200, "time_budget_s": 900, "lr": 3e-4, "amp": False, "seed": 0},
        timings_s={"load": 0.5, "weight_map": 0.1, "train": 12.25, "inference": 0.75, "write": 0.4, "total": 14.0},
        training={
            "steps": 200,
            "stopped_by": "max_steps",
            "final_loss": 0.0123,
            "loss_history": downsample_loss_history([0.1 / (1 + i / 20) for i in range(200)], 50),
        },
        noise={"estimator": "MAD of Laplacian residual (Immerkaer)", "before": 25.3125, "after": 6.1234, "unit": "HU"},
        warnings=["Slice spacing irregular: largest gap 1.30 mm"],
    )
    record.update(overrides)
    return record


# --- windows -------------------------------------------------------------------------------------------


def test_ct_window_is_soft_tissue_w400_l40() -> None:
    vol = _phantom((4, 32, 32), noise=50)
    assert display_window("CT", vol) == (-160.0, 240.0)
    assert display_window("ct", vol * 10 + 500) == CT_SOFT_TISSUE_WINDOW == (-160.0, 240.0)


def test_mr_window_within_data_and_ignores_padding() -> None:
    vol = _phantom((6, 40, 40), noise=10, ct=False)
    low, high = display_window("MR", vol)
    assert float(vol.min()) <= low < high <= float(vol.max())
    assert (low, high) == pytest.approx(tuple(np.percentile(vol, [1.0, 99.5])))

    padded = vol.copy()
    padding = np.zeros(vol.shape, dtype=bool)
    padding[:, :10, :] = True  # a quarter of the voxels are padding with an extreme value
    padded[padding] = -30000.0
    low_p, high_p = display_window("MR", padded, padding)
    assert low_p > -30000.0
    assert (low_p, high_p) == pytest.approx(tuple(np.percentile(vol[~padding], [1.0, 99.5])))
    # Without the mask the padding drags the window down: the mask is what makes it ignored.
    assert display_window("MR", padded)[0] == pytest.approx(-30000.0)


def test_window_degenerate_inputs() -> None:
    const = np.full((2, 8, 8), 7.0)
    low, high = display_window("MR", const)
    assert low < 7.0 < high
    assert display_window("MR", const, np.ones(const.shape, dtype=bool)) == (0.0, 1.0)


def test_difference_window_symmetric() -> None:
    before = _phantom((4, 32, 32), noise=20, seed=1)
    after = _phantom((4, 32, 32), noise=5, seed=2)
    assert difference_window(before, after, noise_before=20.0) == (-60.0, 60.0)
    low, high = difference_window(before, after)
    assert low == -high and high > 0
    assert high == pytest.approx(np.percentile(np.abs(before.astype(float) - after), 99.0))
    assert difference_window(before, before) == (-1.0, 1.0)


# --- montage -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "modality"), [((40, 64, 48), "CT"), ((7, 300, 180), "MR")])
def test_montage_png_has_documented_size(shape: tuple[int, int, int], modality: str) -> None:
    before = _phantom(shape, noise=25, ct=modality == "CT")
    after = _phantom(shape, noise=5, seed=3, ct=modality == "CT")
    png = render_montage(before, after, modality, title=f"{modality} test")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    assert image.size == montage_size(3) == (880, 928)
    assert image.mode == "RGB"
    assert TILE == 256


def test_montage_rows_follow_slices_and_padding(tmp_path: Path) -> None:
    before = _phantom((10, 50, 70), noise=25)
    after = before * 0.5
    padding = np.zeros(before.shape, dtype=bool)
    padding[:3] = True  # first three slices entirely padding
    assert choose_slices(10) == [2, 5, 7]
    assert choose_slices(10, padding) == [5, 6, 8]
    assert choose_slices(1) == [0]

    png = save_montage(
        tmp_path / "qa" / "montage.png",
        before,
        after,
        "CT",
        padding_mask=padding,
        slices=[4, 4, 9],
        title="rows",
        noise_before=25.0,
        pixel_spacing=(0.5, 1.0),
    )
    assert (tmp_path / "qa" / "montage.png").read_bytes() == png
    assert [p.name for p in (tmp_path / "qa").iterdir()] == ["montage.png"]
    assert Image.open(io.BytesIO(png)).size == montage_size(2) == (880, 136 + 264 * 2)
    # Deterministic.
    assert png == render_montage(
        before,
        after,
        "CT",
        padding_mask=padding,
        slices=[4, 9],
        title="rows",
        noise_before=25.0,
        pixel_spacing=(0.5, 1.0),
    )
    with pytest.raises(ValueError, match="out of range"):
        render_montage(before, after, "CT", slices=[10], title="bad")
    with pytest.raises(ValueError, match="equal shape"):
        render_montage(before, after[:5], "CT", title="bad")


# --- PDF -----------------------------------------------------------------------------------------------


def _pdf_text(pdf: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


@pytest.fixture(scope="module")
def montage_png() -> bytes:
    before = _phantom((12, 64, 48), noise=25)
    return render_montage(
        before, _phantom((12, 64, 48), noise=5, seed=4), "CT", title=SOURCE_DESCRIPTION, noise_before=25.3
    )


def test_pdf_contains_key_facts(montage_png: bytes, tmp_path: Path) -> None:
    record = _record()
    validate_run_record(record)
    pdf = render_report_pdf(record, montage_png)
    assert pdf.startswith(b"%PDF-")
    (tmp_path / "report.pdf").write_bytes(pdf)
    n_pages, text = _pdf_text(pdf)
    assert 1 <= n_pages <= 2
    assert "NOT FOR DIAGNOSTIC USE" in text and NOTICE in text
    assert SOURCE_DESCRIPTION in text and DERIVED_DESCRIPTION in text
    noise = record["noise"]
    assert format_noise(noise["before"], "HU") == "25.31 HU" and "25.31 HU" in text
    assert format_noise(noise["after"], "HU") == "6.12 HU" and "6.12 HU" in text
    assert format_reduction(noise["before"], noise["after"]) == "75.8 %" and "75.8 %" in text
    assert noise["estimator"] in text
    assert "NS-N2N" in text and "U-Net" in text
    assert "40 x 64 x 48" in text and "cpu" in text
    assert "12.2 s" in text  # train timing
    assert "max_steps" in text and "time_budget_s" in text  # parameter table
    assert "Slice spacing irregular" in text
    # A4 portrait and deterministic.
    page = pypdf.PdfReader(io.BytesIO(pdf)).pages[0]
    assert (float(page.mediabox.width), float(page.mediabox.height)) == pytest.approx((595.3, 841.9), abs=1)
    assert pdf == render_report_pdf(record, montage_png)


def test_pdf_states_the_rician_correction_only_when_made(montage_png: bytes) -> None:
    mr_noise = {"estimator": "SURE", "before": 11.8, "after": 5.1, "unit": "a.u.", "rician_correction_sigma": 11.64}
    record = _record(noise=mr_noise)
    validate_run_record(record)
    _, text = _pdf_text(render_report_pdf(record, montage_png))
    assert "Rician noise floor removed (sigma 11.64 a.u.)" in text
    record = _record(noise=mr_noise | {"rician_correction_sigma": None})
    validate_run_record(record)
    assert "Rician" not in _pdf_text(render_report_pdf(record, montage_png))[1]
    with pytest.raises(RunRecordError):
        validate_run_record(_record(noise=mr_noise | {"rician_correction_sigma": -1.0}))


def test_pdf_failed_run_and_unsafe_text() -> None:
    record = _record(
        status="failed", error="CUDA out of memory \u2014 retry on cpu", derived=None, noise=None, training=None
    )
    record["source"]["series_description"] = "T2 \u2192 $\\alpha$ axial \u4e2d"
    validate_run_record(record)
    pdf = render_report_pdf(record, None)
    n_pages, text = _pdf_text(pdf)
    assert n_pages <= 2
    assert "FAILED" in text and "CUDA out of memory - retry on cpu" in text
    assert "T2 -> $\\alpha$ axial ?" in text  # transliterated, not interpreted as mathtext
    assert "NOT FOR DIAGNOSTIC USE" in text
    assert latin1_safe("a\u2013b \u00e9\u0107\u0141") == "a-b \u00e9c?"


def test_pdf_many_parameters_and_warnings_flow_onto_pages(montage_png: bytes) -> None:
    record = _record(warnings=[f"warning number {i} " + "x" * 150 for i in range(40)])
    record["parameters"] = {f"param_{i:02d}": i * 0.5 for i in range(60)}
    pdf = render_report_pdf(record, montage_png)
    n_pages, text = _pdf_text(pdf)
    assert n_pages >= 3
    assert "param_59" in text and "more (see run.json)" in text


# --- run record ----------------------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) <= set(schema["properties"])


def test_valid_record_validates() -> None:
    validate_run_record(_record())
    skipped = _record(
        status="skipped", derived=None, volume=None, noise=None, training=None, warnings=["not a CT/MR image series"]
    )
    validate_run_record(skipped)


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda r: r.pop("noise"), "noise", "required"),
        (lambda r: r["noise"].pop("estimator"), "noise.estimator", "required"),
        (lambda r: r["source"].pop("series_instance_uid"), "source.series_instance_uid", "required"),
        (lambda r: r["noise"].__setitem__("before", -1.5), "noise.before", "minimum"),
        (lambda r: r["noise"].__setitem__("after", math.nan), "noise.after", "NaN"),
        (lambda r: r["source"].__setitem__("n_instances", "40"), "source.n_instances", "integer"),
        (lambda r: r["volume"].__setitem__("shape", [40, 64]), "volume.shape", "too short"),
        (lambda r: r["timings_s"].__setitem__("train", "12 s"), "timings_s.train", "number"),
        (lambda r: r["training"].__setitem__("stopped_by", "tired"), "training.stopped_by", "tired"),
        (lambda r: r.__setitem__("status", "done"), "status", "done"),
        (lambda r: r.__setitem__("status", "failed"), "error", "status is 'failed'"),
        (lambda r: r.__setitem__("derived", None), "derived", "object"),
        (lambda r: r.__setitem__("patient_name", "DOE^JANE"), "patient_name", "unexpected"),
        (lambda r: r["parameters"].__setitem__("nested", {"a": 1}), "parameters.nested", "type"),
        (lambda r: r.__setitem__("created", "yesterday"), "created", "match"),
    ],
)
def test_invalid_record_names_the_field(mutate, field: str, reason: str) -> None:
    record = copy.deepcopy(_record())
    mutate(record)
    with pytest.raises(RunRecordError) as info:
        validate_run_record(record)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)
    assert reason in str(info.value)


def _denoise_report(steps: int):
    """A denoiser report as nsn2n builds it (typed), for a run of ``steps`` training steps."""
    from nsn2n import DenoiseConfig
    from nsn2n.intensity import IntensityNormalizer
    from nsn2n.report import (
        DenoiseReport,
        ModelProvenance,
        NoiseEstimate,
        NoiseModelStats,
        ResidualClipLimits,
        StageTimings,
        WeightMapStats,
    )
    from nsn2n.training import TrainingStats

    return DenoiseReport(
        software_version="0.1.0",
        method="NS-N2N",
        parameters=DenoiseConfig(max_steps=max(steps, 1)),
        device="cpu",
        torch_version="2",
        shape=(40, 64, 48),
        spacing_mm=(1.25, 0.7, 0.7),
        modality="CT",
        normalizer=IntensityNormalizer(-1000.0, 1000.0, -1000.0),
        weight_map=WeightMapStats(0.6, 30.0, 20.0),
        noise_model=NoiseModelStats(26.0, 0.6, "outer pairs", "HU"),
        formulation="recorrupted",
        residual_clip=ResidualClipLimits(3.0, 1.5),
        training=TrainingStats(steps, "max_steps", 12.0, 0.01, ((steps, 0.01),) if steps else (), 0),
        model=ModelProvenance(None, None) if steps else ModelProvenance("/models/nsn2n_model.pt", 0),
        timings=StageTimings(weight_map=0.25, train=12.0, inference=0.5, noise_estimate=0.1, total=12.9),
        noise=NoiseEstimate("paired-slice", 25.0, 6.0, "HU"),
        warnings=("thick slices",),
    )


def test_run_record_from_typed_pieces_matches_the_schema() -> None:
    from qa_report import DerivedSeriesInfo, RunRecord, SourceSeriesInfo, VolumeInfo

    first = {"StudyInstanceUID": "1.2.3", "SeriesDescription": "AX", "Modality": "CT", "SOPClassUID": "1.2.4"}
    source = SourceSeriesInfo.from_dataset(first, "1.2.5", 40)
    common = {"software_name": "nsn2n-denoise", "software_version": "0.1.0", "source": source}
    record = RunRecord(
        **common,
        parameters={"max_steps": 200},
        volume=VolumeInfo((40, 64, 48), (1.25, 0.7, 0.7), 1.25, "int16"),
        report=_denoise_report(200),
        derived=DerivedSeriesInfo("1.2.6", 1003, "denoised", "/out/1.2.6"),
        model_saved_to="/work/m.pt",
        load_s=0.5,
        write_s=0.25,
        warnings=("irregular spacing",),
    ).as_dict()
    validate_run_record(record)
    assert record["software"] == {"name": "nsn2n-denoise", "version": "0.1.0"}
    assert record["source"]["study_instance_uid"] == "1.2.3" and record["source"]["n_instances"] == 40
    assert record["device"] == "cpu" and record["noise"]["after"] == 6.0
    assert record["training"]["steps"] == 200 and record["training"]["loss_history"] == [[200, 0.01]]
    assert record["timings_s"] == {
        "load": 0.5,
        "weight_map": 0.25,
        "train": 12.0,
        "inference": 0.5,
        "noise_estimate": 0.1,
        "write": 0.25,
        "total": 13.6,
    }
    assert record["model"] == {"loaded_from": None, "saved_to": "/work/m.pt", "finetune_steps": 0}
    assert record["warnings"] == ["irregular spacing", "thick slices"]
    # A loaded model used without training: no training section, the model's origin is named.
    reused = RunRecord(**common, parameters={}, volume=None, report=_denoise_report(0), status="skipped", error="x")
    assert reused.as_dict()["training"] is None
    assert reused.as_dict()["model"]["loaded_from"] == "/models/nsn2n_model.pt"
    # A series never denoised: no device, no noise, only the stages that ran.
    skipped = RunRecord(**common, parameters={}, status="skipped", error="too few slices", load_s=0.1).as_dict()
    validate_run_record(skipped)
    assert skipped["device"] == "n/a" and skipped["noise"] is None and skipped["timings_s"]["total"] == 0.1


def test_write_run_record_atomic(tmp_path: Path) -> None:
    record = _record()
    record["volume"]["shape"] = tuple(np.array([40, 64, 48]))  # numpy ints in a tuple: converted
    record["noise"]["before"] = np.float32(25.3125)
    target = tmp_path / "series" / "run.json"
    assert write_run_record(target, record) == target
    assert [p.name for p in target.parent.iterdir()] == ["run.json"]
    loaded = json.loads(target.read_text(encoding="utf-8"))
    assert loaded["volume"]["shape"] == [40, 64, 48]
    assert loaded["noise"]["before"] == 25.3125
    validate_run_record(loaded)

    # An invalid record raises and leaves the previous file and no temp file behind.
    bad = _record()
    bad["noise"]["before"] = -1.0
    with pytest.raises(RunRecordError, match=r"noise\.before"):
        write_run_record(target, bad)
    assert [p.name for p in target.parent.iterdir()] == ["run.json"]
    assert json.loads(target.read_text(encoding="utf-8")) == loaded


def test_helpers() -> None:
    assert noise_reduction_percent(20.0, 5.0) == 75.0
    assert noise_reduction_percent(0.0, 5.0) is None
    assert format_noise(None) == "n/a"
    history = downsample_loss_history([(i * 10, 1.0 / (i + 1)) for i in range(1000)], max_points=100)
    assert len(history) <= 100 and history[0] == [0, 1.0] and history[-1][0] == 9990
    with pytest.raises(RunRecordError, match="not a run-record field"):
        make_run_record(software_name="x", software_version="0", source={}, device="cpu", patient_id="X")


def test_no_heavy_imports() -> None:
    code = (
        "import sys, qa_report, qa_report.montage, qa_report.pdf, qa_report.run_record, qa_report.windows\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('holoscan', 'monai', 'torch'))\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_the_method_section_follows_the_training_formulation():
    from qa_report.pdf import METHODS, method_of

    assert method_of({"parameters": {"formulation": "recorrupted"}})["name"] == METHODS["recorrupted"]["name"]
    assert method_of({"parameters": {"formulation": "paper"}})["losses"] == METHODS["paper"]["losses"]
    assert method_of({"parameters": {}})["name"] == METHODS["paper"]["name"]  # older records: the paper's
    assert method_of({"parameters": {"formulation": "paper"}, "method": {"name": "custom"}})["name"] == "custom"
