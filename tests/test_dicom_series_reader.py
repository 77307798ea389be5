"""dicom_series.reader: sorting, geometry, pixel decoding and every validation error."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    EnhancedCTImageStorage,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    RLELossless,
    generate_uid,
)

from dicom_series import DicomReadError, SeriesError, SourceSeries, group_series, load_series, read_dicom_folder
from tests.dicom_factory import (
    OBLIQUE,
    PATIENT,
    SAGITTAL,
    circular_fov_padding,
    make_ct_datasets,
    make_image_datasets,
    make_phantom,
    write_ct_series,
    write_datasets,
)

SHAPE = (5, 16, 16)


def _hu(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return make_phantom(shape, seed=3)


def _load(folder: Path) -> SourceSeries:
    return load_series(read_dicom_folder(folder))


def _series_error(folder: Path, match: str) -> SeriesError:
    with pytest.raises(SeriesError, match=match) as info:
        _load(folder)
    message = str(info.value)
    assert "\n" not in message
    for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert PATIENT[key] not in message  # never a patient identifier in a message
    return info.value


# -- sorting and geometry ----------------------------------------------------------------------------


def test_sorted_by_position_not_by_file_name_or_instance_number(tmp_path: Path) -> None:
    hu = _hu()
    paths = write_ct_series(
        tmp_path,
        hu,
        shuffle_names_seed=7,
        mutate=lambda k, ds: setattr(ds, "InstanceNumber", 100 - 7 * k),  # reversed instance numbers
    )
    assert sorted(paths) != paths  # name order differs from spatial order
    series = _load(tmp_path)
    assert np.array_equal(series.volume, np.rint(hu).astype(np.float32))
    assert np.all(np.diff(series.slice_positions) > 0)
    assert [p.name for p in series.paths] == [p.name for p in paths]
    assert series.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert series.slice_gaps == pytest.approx([2.5] * 4)
    assert series.modality == "CT"
    assert series.warnings == []
    assert series.volume.dtype == np.float32 and series.padding_mask.dtype == bool
    assert not series.padding_mask.any()


def test_spacing_comes_from_positions_never_slice_thickness(tmp_path: Path) -> None:
    write_ct_series(tmp_path, _hu(), spacing=(3.0, 0.5, 0.8), extra={"SliceThickness": "5.0"})
    assert _load(tmp_path).spacing == pytest.approx((3.0, 0.5, 0.8))


@pytest.mark.parametrize("orientation", [OBLIQUE, SAGITTAL], ids=["oblique", "sagittal"])
def test_oblique_and_non_axial_orientation(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    hu = _hu()
    write_ct_series(tmp_path, hu, orientation=orientation, shuffle_names_seed=1, image_type=("ORIGINAL", "PRIMARY"))
    series = _load(tmp_path)
    normal = np.cross(orientation[:3], orientation[3:])
    assert series.normal == pytest.approx(normal)
    assert series.spacing[0] == pytest.approx(2.5)
    assert np.array_equal(series.volume, np.rint(hu))


def test_bare_datasets_accepted_and_not_modified(tmp_path: Path) -> None:
    datasets = make_ct_datasets(_hu())
    for ds in datasets:
        del ds.file_meta  # in-memory datasets: native little-endian pixel data assumed
    before = [ds.SOPInstanceUID for ds in datasets]
    series = load_series(list(reversed(datasets)))
    assert [ds.SOPInstanceUID for ds in series.datasets] == before
    assert series.paths == [None] * len(datasets)


def test_small_non_uniformity_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Returned, not logged (the application logs it once, naming the series); the gap is named by the
    slices' places and files, not by signed positions along the normal."""
    write_ct_series(tmp_path, _hu(), slice_positions=[0, 2.5, 5.1, 7.5, 10.0])
    with caplog.at_level(logging.WARNING):
        series = _load(tmp_path)
    assert series.spacing[0] == pytest.approx(2.5)
    assert series.warnings == [
        "slightly non-uniform slice spacing: gaps from 2.400 to 2.600 mm (median 2.500 mm); the gap farthest "
        "from the median, 2.600 mm, is between slices 2 and 3 of 5 (CT0001.dcm and CT0002.dcm)"
    ]
    assert "non-uniform" not in caplog.text


def test_sheared_stack_is_a_warning(tmp_path: Path) -> None:
    def shear(k: int, ds: Dataset) -> None:  # gantry tilt: x drifts 1 mm per slice
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + k, *ds.ImagePositionPatient[1:]]

    write_ct_series(tmp_path, _hu(), mutate=shear)
    series = _load(tmp_path)
    assert any("gantry tilt" in w for w in series.warnings)


def test_hu_volume_uses_rescale_slope_and_intercept(tmp_path: Path) -> None:
    hu = _hu()
    write_ct_series(tmp_path, hu, rescale=(2.0, -1000.0), dtype="uint16", bits_stored=12)
    series = _load(tmp_path)
    expected = np.clip(np.rint((hu + 1000.0) / 2.0), 0, 4095) * 2.0 - 1000.0
    assert np.array_equal(series.volume, expected.astype(np.float32))


def test_compressed_and_implicit_vr_input(tmp_path: Path) -> None:
    hu = _hu()
    write_ct_series(tmp_path / "rle", hu, transfer_syntax=RLELossless)
    write_ct_series(tmp_path / "implicit", hu, transfer_syntax=ImplicitVRLittleEndian, padding_value=-2000)
    assert np.array_equal(_load(tmp_path / "rle").volume, np.rint(hu))
    implicit = _load(tmp_path / "implicit")
    assert implicit.padding_mask.any()  # ambiguous US/SS Pixel Padding Value resolved


# -- padding -----------------------------------------------------------------------------------------


def test_padding_mask_single_value(tmp_path: Path) -> None:
    write_ct_series(tmp_path, _hu(), padding_value=-2000)
    series = _load(tmp_path)
    expected = np.broadcast_to(circular_fov_padding(SHAPE), SHAPE)
    assert np.array_equal(series.padding_mask, expected)
    assert all(np.all(v == -2000) for v in series.padding_stored_values)
    assert np.all(series.volume[series.padding_mask] == -3024.0)


def test_padding_mask_range(tmp_path: Path) -> None:
    """C.7.5.1.1.2: every stored value between Pixel Padding Value and Range Limit is padding."""
    stored = np.full(SHAPE, 1100, dtype=np.int16)
    stored[:, :4, :] = -2000
    stored[:, 4:6, :] = -1500
    stored[:, 6, :] = -1499  # just outside the range
    write_datasets(make_image_datasets(stored, padding_value=-1500, padding_range_limit=-2000), tmp_path)
    series = _load(tmp_path)
    assert series.padding_mask[:, :6, :].all() and not series.padding_mask[:, 6:, :].any()
    assert sorted(set(np.concatenate(series.padding_stored_values).tolist())) == [-2000, -1500]


# -- validation errors -------------------------------------------------------------------------------


def test_fewer_slices_than_asked_for(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "two", _hu((2, 16, 16)))
    with pytest.raises(SeriesError, match=r"only 2 slice\(s\); at least 3 are needed"):
        load_series(read_dicom_folder(tmp_path / "two"), min_slices=3)
    assert len(load_series(read_dicom_folder(tmp_path / "two"))) == 2  # two positions give a spacing
    write_ct_series(tmp_path / "one", _hu((1, 16, 16)))
    _series_error(tmp_path / "one", r"only 1 slice\(s\); at least 2")


@pytest.mark.parametrize(
    ("keyword", "label"),
    [
        ("ImagePositionPatient", "Image Position"),
        ("ImageOrientationPatient", "Image Orientation"),
        ("PixelSpacing", "Pixel Spacing"),
    ],
)
def test_missing_geometry_names_the_file(tmp_path: Path, keyword: str, label: str) -> None:
    def drop(k: int, ds: Dataset) -> None:
        if k == 2:
            delattr(ds, keyword)

    paths = write_ct_series(tmp_path, _hu(), mutate=drop)
    err = _series_error(tmp_path, f"missing or malformed {label}")
    assert err.filename == paths[2].name
    assert str(err).startswith(f"Series {err.series_uid}: {paths[2].name}: ")


def test_inconsistent_orientation(tmp_path: Path) -> None:
    def tilt(k: int, ds: Dataset) -> None:
        if k == 3:
            ds.ImageOrientationPatient = list(OBLIQUE)

    write_ct_series(tmp_path, _hu(), mutate=tilt)
    _series_error(tmp_path, "inconsistent Image Orientation")


def test_mixed_rows_columns(tmp_path: Path) -> None:
    def shrink(k: int, ds: Dataset) -> None:
        if k == 1:
            ds.Rows = 8
            ds.PixelData = ds.PixelData[: 8 * 16 * 2]

    write_ct_series(tmp_path, _hu(), mutate=shrink)
    _series_error(tmp_path, "mixed image sizes: 8x16 vs 16x16")


def test_duplicate_positions(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, _hu(), slice_positions=[0, 2.5, 2.5, 5.0, 7.5])
    err = _series_error(tmp_path, "duplicate slice position 2.500 mm")
    assert paths[1].name in str(err) and paths[2].name in str(err)


def test_missing_slice(tmp_path: Path) -> None:
    write_ct_series(tmp_path, _hu(), slice_positions=[0, 2.5, 5.0, 10.0, 12.5])
    _series_error(tmp_path, r"missing slice\(s\) between positions 5.000 mm and 10.000 mm")


def test_overlapping_irregular_slice(tmp_path: Path) -> None:
    write_ct_series(tmp_path, _hu(), slice_positions=[0, 2.5, 5.0, 5.5, 7.5])
    _series_error(tmp_path, "irregular slice positions")


@pytest.mark.parametrize(
    "mutation",
    [
        {"NumberOfFrames": 2},
        {"SOPClassUID": EnhancedCTImageStorage},
    ],
    ids=["number-of-frames", "enhanced-sop-class"],
)
def test_enhanced_multiframe_rejected(tmp_path: Path, mutation: dict[str, object]) -> None:
    write_ct_series(tmp_path, _hu(), extra=mutation)
    _series_error(tmp_path, "enhanced multi-frame .* is not supported; export the series as single-frame")


def test_rgb_rejected(tmp_path: Path) -> None:
    def rgb(k: int, ds: Dataset) -> None:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0

    write_ct_series(tmp_path, _hu(), mutate=rgb)
    _series_error(tmp_path, "colour images are not supported")


def test_float_pixel_data_rejected(tmp_path: Path) -> None:
    def to_float(k: int, ds: Dataset) -> None:
        del ds.PixelData
        ds.FloatPixelData = np.zeros((16, 16), "<f4").tobytes()
        ds.BitsAllocated = 32

    datasets = make_ct_datasets(_hu(), mutate=to_float)
    with pytest.raises(SeriesError, match="float pixel data"):
        load_series(datasets)


def test_non_linear_modality_lut_rejected(tmp_path: Path) -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "HU"
    lut.LUTData = list(range(4096))
    datasets = make_ct_datasets(_hu(), extra={"ModalityLUTSequence": [lut]})
    with pytest.raises(SeriesError, match="Modality LUT Sequence"):
        load_series(datasets)


def test_truncated_pixel_data_names_the_file(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, _hu())
    raw = paths[3].read_bytes()
    paths[3].write_bytes(raw[:-100])
    err = _series_error(tmp_path, "pixel data cannot be decoded .*less than expected")
    assert err.filename == paths[3].name


def test_truncated_compressed_file_has_no_pixel_data(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, _hu(), transfer_syntax=RLELossless)
    paths[0].write_bytes(paths[0].read_bytes()[:-20])
    with pytest.warns(UserWarning):  # pydicom: end of file reached before the sequence delimiter
        items = read_dicom_folder(tmp_path)
    assert len(items) == SHAPE[0]  # the truncated file is kept (header only), not silently dropped
    with pytest.raises(SeriesError, match=f"{paths[0].name}: no Pixel Data .*truncated"):
        load_series(items)


def test_instances_of_several_series_rejected(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "a", _hu())
    write_ct_series(tmp_path / "b", _hu())
    with pytest.raises(SeriesError, match="belong to 2 different series"):
        _load(tmp_path)


# -- folder reading and grouping ---------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_read_folder_skips_non_dicom_and_dicomdir_and_never_writes(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "nested" / "deeper", _hu())
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "nested" / "x.dcm.json").write_text("{}")
    dicomdir = Dataset()
    dicomdir.FileSetID = "SYNTH"
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    dicomdir.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    no_uid = make_ct_datasets(_hu((1, 16, 16)))[0]
    write_datasets([no_uid], tmp_path / "other", filename_pattern="nouid.dcm")
    ds = pydicom.dcmread(tmp_path / "other" / "nouid.dcm")
    del ds.SOPInstanceUID
    ds.save_as(tmp_path / "other" / "nouid.dcm")
    os.chmod(tmp_path, 0o555)  # as a non-root user, any write attempt would fail
    try:
        before = _snapshot(tmp_path)
        items = read_dicom_folder(tmp_path)
        load_series(items)
        assert _snapshot(tmp_path) == before
    finally:
        os.chmod(tmp_path, 0o755)
    assert len(items) == SHAPE[0]
    assert all(p.parent.name == "deeper" for p, _ in items)


def test_read_folder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError):
        read_dicom_folder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        read_dicom_folder(tmp_path / "file")

    paths = write_ct_series(tmp_path / "in", _hu())
    real_dcmread = pydicom.dcmread

    def broken(path: Path, **kwargs: object) -> Dataset:
        if Path(path).name == paths[1].name:
            raise OSError("simulated corrupt header")
        return real_dcmread(path, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", broken)
    with pytest.raises(DicomReadError, match=f"{paths[1].name}.*simulated corrupt header"):
        read_dicom_folder(tmp_path / "in")
    assert len(read_dicom_folder(tmp_path / "in", skip_unreadable=True)) == SHAPE[0] - 1


def test_group_series_by_study_and_series(tmp_path: Path) -> None:
    study = str(generate_uid())
    write_ct_series(tmp_path / "s1", _hu(), study_uid=study)
    write_ct_series(tmp_path / "s2", _hu((4, 16, 16)), study_uid=study)
    write_ct_series(tmp_path / "s3", _hu((3, 16, 16)))
    groups = group_series(read_dicom_folder(tmp_path))
    assert sorted(len(v) for v in groups.values()) == [3, 4, 5]
    assert sum(1 for study_uid, _ in groups if study_uid == study) == 2
    for (_, series_uid), items in groups.items():
        assert load_series(items).series_instance_uid == series_uid
