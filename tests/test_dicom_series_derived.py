"""dicom_series.derived: the denoised series and the Encapsulated PDF, checked with pydicom,
highdicom and the dicom3tools validators (dciodvfy, dcentvfy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_series import (
    IMPLEMENTATION_CLASS_UID,
    DerivedSeriesOptions,
    EncapsulatedPdfOptions,
    SourceSeries,
    build_derived_series,
    build_encapsulated_pdf,
    derived_series_number,
    load_series,
    read_dicom_folder,
    write_series_atomically,
)
from tests.dicom_factory import (
    OBLIQUE,
    add_correlated_noise,
    dicom_tools_available,
    make_ct_datasets,
    make_phantom,
    new_dciodvfy_errors,
    run_dcentvfy,
    run_dciodvfy,
    write_ct_series,
)

requires_dicom3tools = pytest.mark.skipif(
    not dicom_tools_available(), reason="dciodvfy/dcentvfy (Debian package dicom3tools) not installed"
)

SHAPE = (6, 24, 24)
OPTIONS = DerivedSeriesOptions(
    series_description="DENOISED (SSL) research use", series_number=None, software_version="0.1.0"
)
NOW = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def _source(folder: Path, **kwargs: object) -> tuple[SourceSeries, list[Path]]:
    hu = add_correlated_noise(make_phantom(SHAPE, seed=2), sigma_hu=25, seed=3)
    paths = write_ct_series(folder, hu, shuffle_names_seed=5, **kwargs)  # type: ignore[arg-type]
    return load_series(read_dicom_folder(folder)), paths


def _stored(ds: Dataset) -> np.ndarray:
    return pydicom.pixels.pixel_array(ds)


# -- identity, references, provenance ----------------------------------------------------------------


def test_identity_and_references(tmp_path: Path) -> None:
    source, _ = _source(tmp_path / "in", padding_value=-2000)
    derived = build_derived_series(source, source.volume, OPTIONS, now=NOW)
    assert len(derived) == len(source)
    source_uids = {ds.SOPInstanceUID for ds in source.datasets} | {source.series_instance_uid}

    series_uids = {ds.SeriesInstanceUID for ds in derived}
    assert len(series_uids) == 1 and not series_uids & source_uids
    sop_uids = [ds.SOPInstanceUID for ds in derived]
    assert len(set(sop_uids)) == len(derived) and not set(sop_uids) & source_uids
    assert all(len(uid) <= 64 for uid in [*sop_uids, *series_uids])

    for z, (src, ds) in enumerate(zip(source.datasets, derived, strict=True)):
        assert ds.SOPClassUID == src.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        for keyword in (
            "StudyInstanceUID",
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "FrameOfReferenceUID",
            "AcquisitionDate",
            "AcquisitionTime",
            "Manufacturer",
            "RescaleSlope",
            "RescaleIntercept",
            "RescaleType",
            "WindowCenter",
            "WindowWidth",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "SliceLocation",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
            "PhotometricInterpretation",
            "PixelPaddingValue",
        ):
            assert ds[keyword].value == src[keyword].value, keyword
        assert ds.InstanceNumber == z + 1
        assert ds.SeriesNumber == int(src.SeriesNumber) + 1000
        assert ds.SeriesDescription == OPTIONS.series_description
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SeriesDate == ds.ContentDate == ds.InstanceCreationDate == "20250304"
        assert ds.SeriesTime == ds.ContentTime == ds.InstanceCreationTime == "050607.890000"
        assert ds.DerivationDescription == OPTIONS.derivation_description
        assert ds.DerivationCodeSequence[0].CodeValue == "113087"
        (ref,) = ds.SourceImageSequence
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        (series_ref,) = ds.ReferencedSeriesSequence
        assert series_ref.SeriesInstanceUID == source.series_instance_uid
        assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        (equipment,) = ds.ContributingEquipmentSequence
        assert equipment.Manufacturer == "nsn2n-denoise" and equipment.SoftwareVersions == "0.1.0"
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert equipment.ContributionDateTime == "20250304050607.890000+0000"
        assert "SmallestImagePixelValue" not in ds and "LargestImagePixelValue" not in ds
    # the sources are untouched
    assert [ds.SeriesInstanceUID for ds in source.datasets] == [source.series_instance_uid] * len(source)
    assert all("SourceImageSequence" not in ds for ds in source.datasets)


def test_stale_and_source_only_attributes_removed(tmp_path: Path) -> None:
    icon = Dataset()
    icon.Rows = icon.Columns = 1
    extra = {
        "SmallestImagePixelValue": 0,
        "LargestImagePixelValue": 100,
        "IconImageSequence": [icon],
        "InstanceCreatorUID": "1.2.3.4",
        "WindowWidth": "0",
    }
    source = load_series(make_ct_datasets(make_phantom(SHAPE), extra=extra))
    private_creator = source.datasets[0].private_block(0x0009, "SYNTH", create=True)
    private_creator.add_new(0x01, "LO", "private value")
    with_private = build_derived_series(source, source.volume, OPTIONS)[0]
    assert with_private.get_private_item(0x0009, 0x01, "SYNTH").value == "private value"
    options = DerivedSeriesOptions("DENOISED", 77, "0.1.0", remove_private_tags=True)
    for ds in build_derived_series(source, source.volume, options):
        for keyword in (
            "SmallestImagePixelValue",
            "LargestImagePixelValue",
            "IconImageSequence",
            "InstanceCreatorUID",
            "WindowCenter",
            "WindowWidth",
        ):  # window width 0 is invalid
            assert keyword not in ds
        assert ds.SeriesNumber == 77
        assert not any(elem.tag.is_private for elem in ds)


def test_timezone_of_source_is_used(tmp_path: Path) -> None:
    source = load_series(make_ct_datasets(make_phantom(SHAPE), extra={"TimezoneOffsetFromUTC": "+0530"}))
    before = datetime.now(timezone(timedelta(hours=5, minutes=30))).replace(microsecond=0)
    ds = build_derived_series(source, source.volume, OPTIONS)[0]
    stamp = ds.ContributingEquipmentSequence[0].ContributionDateTime
    assert stamp.endswith("+0530")
    created = datetime.strptime(stamp, "%Y%m%d%H%M%S.%f%z")
    assert timedelta(0) <= created - before < timedelta(minutes=1)
    assert (ds.SeriesDate, ds.SeriesTime) == (created.strftime("%Y%m%d"), created.strftime("%H%M%S.%f"))


# -- pixels ------------------------------------------------------------------------------------------


def test_round_trip_pixels_geometry_and_padding(tmp_path: Path) -> None:
    source, in_paths = _source(tmp_path / "in", padding_value=-2000, orientation=OBLIQUE)
    denoised = source.volume - 7.4  # any change; padding pixels get garbage on purpose
    denoised[source.padding_mask] = 123.0
    derived = build_derived_series(source, denoised, OPTIONS)
    out = write_series_atomically(derived, tmp_path / "out", "denoised")
    reread = load_series(read_dicom_folder(out))
    assert np.array_equal(reread.padding_mask, source.padding_mask)
    inside = ~source.padding_mask
    assert np.array_equal(reread.volume[inside], np.rint(denoised[inside]))
    assert np.all(reread.volume[source.padding_mask] == -2000 - 1024)  # restored exactly
    assert reread.spacing == pytest.approx(source.spacing)
    assert reread.study_instance_uid == source.study_instance_uid
    for src, ds in zip(source.datasets, reread.datasets, strict=True):
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    v_in = hd.get_volume_from_series([pydicom.dcmread(p) for p in in_paths])
    v_out = hd.get_volume_from_series(reread.datasets)
    assert np.allclose(v_in.affine, v_out.affine) and v_in.spatial_shape == v_out.spatial_shape


def test_values_clipped_to_the_stored_range(tmp_path: Path) -> None:
    signed = load_series(make_ct_datasets(make_phantom(SHAPE)))
    wild = np.zeros(SHAPE, np.float32)
    wild[:, :, :8], wild[:, :, 8:16] = 1e6, -1e6
    stored = _stored(build_derived_series(signed, wild, OPTIONS)[0])
    assert stored.dtype == np.int16
    assert stored[:, :8].min() == 32767 and stored[:, 8:16].max() == -32768 and np.all(stored[:, 16:] == 1024)

    unsigned12 = load_series(make_ct_datasets(make_phantom(SHAPE), dtype="uint16", bits_stored=12))
    stored = _stored(build_derived_series(unsigned12, wild, OPTIONS)[0])
    assert stored.dtype == np.uint16
    assert stored[:, :8].min() == 4095 and stored[:, 8:16].max() == 0


def test_non_padding_pixels_never_become_padding(tmp_path: Path) -> None:
    """uint16 CT with padding 0 = -1024 HU: denoised air below -1024 HU must not turn into padding."""
    source = load_series(make_ct_datasets(make_phantom(SHAPE), dtype="uint16", padding_value=0))
    denoised = np.full(SHAPE, -1100.0, np.float32)
    derived = build_derived_series(source, denoised, OPTIONS)
    stored = np.stack([_stored(ds) for ds in derived])
    assert np.all(stored[source.padding_mask] == 0)
    assert np.all(stored[~source.padding_mask] == 1)


def test_identity_round_trip_is_lossless(tmp_path: Path) -> None:
    source = load_series(make_ct_datasets(make_phantom(SHAPE), rescale=(0.5, -1024.0), padding_value=-3000))
    derived = build_derived_series(source, source.volume, OPTIONS)
    for src, ds in zip(source.datasets, derived, strict=True):
        assert np.array_equal(_stored(ds), _stored(src))


def test_each_slice_keeps_its_own_rescale_and_geometry() -> None:
    """Rescale Slope/Intercept that differ per slice, on a tilted-gantry stack (positions shifted in-plane
    from slice to slice): each derived slice keeps its source slice's rescale and position, and its values
    are the modality values given (the identity is lossless, a shift of 10 HU is 10 HU in every slice)."""
    hu = make_phantom(SHAPE, seed=4)
    rescales = [(1.0, -1024.0), (0.5, -1024.0), (2.0, -2048.0), (1.0, -1000.0), (0.25, -512.0), (1.0, -1024.0)]
    datasets = []
    for k, rescale in enumerate(rescales):
        (ds,) = make_ct_datasets(hu[k : k + 1], rescale=rescale, slice_positions=[2.5 * k])
        datasets.append(ds)
    for k, ds in enumerate(datasets):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
        ds.FrameOfReferenceUID = datasets[0].FrameOfReferenceUID
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.9 * k, z]  # a 20 degree gantry tilt at 2.5 mm
    source = load_series(datasets)
    assert any("gantry tilt" in w for w in source.warnings)
    for shift in (0.0, 10.0):
        derived = build_derived_series(source, source.volume + shift, OPTIONS)
        for src, ds in zip(source.datasets, derived, strict=True):
            assert (ds.RescaleSlope, ds.RescaleIntercept) == (src.RescaleSlope, src.RescaleIntercept)
            assert ds.ImagePositionPatient == src.ImagePositionPatient
        written = load_series([(None, ds) for ds in derived]).volume
        step = max(slope for slope, _ in rescales)  # one stored step, in HU, at most
        assert np.max(np.abs(written - (source.volume + shift))) <= step / 2 + 1e-6


def test_bad_denoised_input_rejected(tmp_path: Path) -> None:
    source = load_series(make_ct_datasets(make_phantom(SHAPE)))
    with pytest.raises(ValueError, match="shape"):
        build_derived_series(source, source.volume[1:], OPTIONS)
    bad = source.volume.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_derived_series(source, bad, OPTIONS)


@pytest.mark.parametrize("transfer_syntax", [RLELossless, ImplicitVRLittleEndian])
def test_compressed_or_implicit_source_written_explicit_uncompressed(tmp_path: Path, transfer_syntax: str) -> None:
    source, _ = _source(tmp_path, transfer_syntax=transfer_syntax)
    for ds in build_derived_series(source, source.volume, OPTIONS):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert not ds["PixelData"].is_undefined_length
        assert "LossyImageCompression" not in ds


def test_lossy_source_marked_lossy(tmp_path: Path) -> None:
    pytest.importorskip("jpeg_ls", reason="pyjpegls encoder needed to make a JPEG-LS near-lossless source")
    hu = make_phantom(SHAPE)
    datasets = make_ct_datasets(hu)
    for ds in datasets:
        ds.compress(JPEGLSNearLossless, jls_error=2)
    source = load_series(datasets)
    ds = build_derived_series(source, source.volume, OPTIONS)[0]
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_14495_1"


# -- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"series_description": "x" * 65}, "at most 64"),
        ({"series_description": ""}, "must not be empty"),
        ({"series_description": "DENOISED – SSL"}, "ASCII"),
        ({"series_description": "A\\B"}, "backslash"),
        ({"series_number": -1}, "outside"),
        ({"software_version": "v" * 65}, "at most 64"),
        ({"derivation_description": "d" * 1025}, "at most 1024"),
        ({"uid_prefix": "1.2.x."}, "UID root"),
    ],
)
def test_options_validated(kwargs: dict[str, object], error: str) -> None:
    base: dict[str, object] = {"series_description": "DENOISED", "series_number": 5, "software_version": "1"}
    with pytest.raises(ValueError, match=error):
        DerivedSeriesOptions(**{**base, **kwargs})  # type: ignore[arg-type]


def test_uid_prefix_used() -> None:
    source = load_series(make_ct_datasets(make_phantom(SHAPE)))
    options = DerivedSeriesOptions("DENOISED", 1, "1", uid_prefix="1.2.826.0.1.3680043.10.999.")
    ds = build_derived_series(source, source.volume, options)[0]
    assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
    assert ds.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")


# -- validators --------------------------------------------------------------------------------------


@requires_dicom3tools
@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_dciodvfy_and_dcentvfy_clean(tmp_path: Path, dtype: str) -> None:
    source, _ = _source(tmp_path / "in", padding_value=-2000 if dtype == "int16" else 0, dtype=dtype)
    derived = build_derived_series(source, source.volume + 3.0, OPTIONS)
    out = write_series_atomically(derived, tmp_path / "out", "denoised")
    out_files = sorted(out.iterdir())
    assert len(out_files) == len(source)
    for z in (0, len(source) - 1):
        assert run_dciodvfy(source.paths[z]).errors == []  # the factory's input is clean ...
        assert new_dciodvfy_errors(source.paths[z], out_files[z]) == []  # ... and so is our output
    assert run_dcentvfy(out_files) == []
    # same patient/study/frame of reference as the source: consistent across both series
    assert run_dcentvfy([*source.paths, *out_files]) == []


# -- Encapsulated PDF --------------------------------------------------------------------------------

PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"  # odd length


def test_encapsulated_pdf(tmp_path: Path) -> None:
    source, _ = _source(tmp_path / "in")
    derived = build_derived_series(source, source.volume, OPTIONS)
    options = EncapsulatedPdfOptions(
        document_title="Denoising QA report",
        series_description="DENOISING QA",
        software_version="0.1.0",
        concept_name=codes.DCM.QualityControl,
    )
    pdf = build_encapsulated_pdf(source, PDF, options, derived=derived, now=NOW)
    first = source.datasets[0]
    assert pdf.SOPClassUID == EncapsulatedPDFStorage and pdf.Modality == "DOC"
    for keyword in (
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "ReferringPhysicianName",
        "SpecificCharacterSet",
    ):
        assert pdf[keyword].value == first[keyword].value, keyword
    assert pdf.SeriesInstanceUID not in (source.series_instance_uid, derived[0].SeriesInstanceUID)
    assert pdf.SeriesNumber == int(first.SeriesNumber) + 1001
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf" and pdf.BurnedInAnnotation == "NO"
    assert pdf.EncapsulatedDocumentLength == len(PDF) and pdf.EncapsulatedDocument[: len(PDF)] == PDF
    assert len(pdf.SourceInstanceSequence) == 2 * len(source)
    assert pdf.ConceptNameCodeSequence[0].CodeValue == "110002"
    assert pdf.DocumentTitle == "Denoising QA report" and pdf.Manufacturer == "nsn2n-denoise"
    out = write_series_atomically([pdf], tmp_path / "out", "report")
    (path,) = out.iterdir()
    assert pydicom.dcmread(path).EncapsulatedDocument.rstrip(b"\0") == PDF.rstrip(b"\0")
    if dicom_tools_available():
        report = run_dciodvfy(path)
        assert report.errors == [], report.errors
        assert run_dcentvfy([*source.paths, path]) == []


def test_encapsulated_pdf_rejects_non_pdf(tmp_path: Path) -> None:
    source = load_series(make_ct_datasets(make_phantom(SHAPE)))
    options = EncapsulatedPdfOptions("QA", "QA", "1")
    with pytest.raises(ValueError, match="not a PDF"):
        build_encapsulated_pdf(source, b"<html>", options)
    pdf = build_encapsulated_pdf(source, PDF, options)
    assert len(pdf.ConceptNameCodeSequence) == 0  # Type 2, empty by default


def test_series_number_rule_is_source_plus_offset_and_never_wraps(tmp_path: Path) -> None:
    source, _ = _source(tmp_path / "numbered", series_number=7)
    assert derived_series_number(source, 1000) == 1007
    assert derived_series_number(source, 1001, required=True) == 1008
    with pytest.raises(ValueError, match=r"7 \+ 2147483641 = 2147483648 is outside 0\.\.2147483647"):
        derived_series_number(source, 2**31 - 7)  # would have wrapped to 0
    unnumbered, _ = _source(tmp_path / "unnumbered", mutate=lambda _, ds: delattr(ds, "SeriesNumber"))
    assert derived_series_number(unnumbered, 1000) is None  # Type 2: left empty
    assert derived_series_number(unnumbered, 1001, required=True) == 1001  # Type 1: as if it were 0
