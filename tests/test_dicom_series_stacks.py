"""dicom_series.stacks: series with several images per position become one 3-D stack per echo, b-value,
phase or orientation, or stay whole with a message that names the attributes (no files, milliseconds)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_series import SeriesError, Stack, load_series, split_stacks
from tests.dicom_factory import AXIAL, SAGITTAL, make_mr_datasets, make_phantom, oblique_orientation

MIN = 3
STUDY, FRAME_OF_REFERENCE = str(generate_uid()), str(generate_uid())


def _stack(
    values: dict[str, object] | None = None,
    *,
    slices: int = 5,
    orientation: tuple[float, ...] = AXIAL,
    series_uid: str,
    mutate: Callable[[int, Dataset], None] | None = None,
    seed: int = 0,
) -> list[Dataset]:
    """``slices`` MR images of one series at positions 0, 5, 10... mm with the attributes ``values``."""
    volume = 100.0 + 50.0 * make_phantom((slices, 16, 16), seed=seed) / 1000.0
    return make_mr_datasets(
        volume,
        orientation=orientation,
        study_uid=STUDY,
        series_uid=series_uid,
        frame_of_reference_uid=FRAME_OF_REFERENCE,
        extra=dict(values or {}),
        mutate=mutate,
    )


def _items(*stacks: list[Dataset]) -> list[tuple[None, Dataset]]:
    """The images of all ``stacks`` interleaved, as a scanner's instance order may be."""
    return [(None, ds) for group in zip(*stacks, strict=True) for ds in group]


@pytest.fixture
def uid() -> str:
    return str(generate_uid())


def _labels(stacks: list[Stack]) -> list[str]:
    return [stack.label for stack in stacks]


@pytest.mark.parametrize(
    ("keyword", "values", "labels"),
    [
        ("EchoNumbers", (1, 2), ["echo 1", "echo 2"]),
        ("EchoTime", ("30", "15.0"), ["TE 15 ms", "TE 30 ms"]),
        ("DiffusionBValue", (1000.0, 0.0), ["b=0", "b=1000"]),
        ("TemporalPositionIdentifier", (2, 1), ["phase 1", "phase 2"]),
        ("TriggerTime", ("400", "0"), ["trigger 0 ms", "trigger 400 ms"]),
    ],
)
def test_one_stack_per_value(uid: str, keyword: str, values: tuple[object, object], labels: list[str]) -> None:
    items = _items(*(_stack({keyword: v}, series_uid=uid, seed=k) for k, v in enumerate(values)))
    stacks = split_stacks(items, min_slices=MIN)
    assert _labels(stacks) == labels, "ordered by value"
    for stack in stacks:
        assert len(stack.items) == 5 and stack.values[0][0] == keyword
        assert load_series(stack.items, min_slices=MIN).shape == (5, 16, 16)
    assert sum(len(stack.items) for stack in stacks) == len(items)


def test_echo_numbers_win_over_echo_time_and_the_key_is_a_folder_name(uid: str) -> None:
    items = _items(
        _stack({"EchoNumbers": 1, "EchoTime": "4.5"}, series_uid=uid),
        _stack({"EchoNumbers": 2, "EchoTime": "9.00"}, series_uid=uid),
    )
    stacks = split_stacks(items, min_slices=MIN)
    assert [(s.values, s.key) for s in stacks] == [
        ((("EchoNumbers", "1"),), "echo-1"),
        ((("EchoNumbers", "2"),), "echo-2"),
    ]


def test_a_per_image_trigger_time_is_passed_over_for_the_phase(uid: str) -> None:
    """Gated series: Trigger Time differs on every image; the phase number makes the stacks."""

    def trigger(phase: int) -> Callable[[int, Dataset], None]:
        def set_trigger(k: int, ds: Dataset) -> None:
            ds.TriggerTime = str(100 * phase + 7 * k)

        return set_trigger

    items = _items(*(_stack({"TemporalPositionIdentifier": p}, series_uid=uid, mutate=trigger(p)) for p in (1, 2, 3)))
    assert _labels(split_stacks(items, min_slices=MIN)) == ["phase 1", "phase 2", "phase 3"]


def test_two_varying_attributes_together(uid: str) -> None:
    """Two echoes at two phases: neither alone gives one image per position; both together do."""
    items = _items(
        *(_stack({"EchoNumbers": e, "TemporalPositionIdentifier": p}, series_uid=uid) for e in (1, 2) for p in (1, 2))
    )
    assert _labels(split_stacks(items, min_slices=MIN)) == [
        "echo 1, phase 1",
        "echo 1, phase 2",
        "echo 2, phase 1",
        "echo 2, phase 2",
    ]


def test_stacks_of_different_orientation(uid: str) -> None:
    items = [(None, ds) for ds in _stack(series_uid=uid) + _stack(series_uid=uid, orientation=SAGITTAL)]
    stacks = split_stacks(items, min_slices=MIN)
    assert _labels(stacks) == ["axial", "sagittal"]
    assert [s.key for s in stacks] == ["axial", "sagittal"]
    assert stacks[1].values == (("ImageOrientationPatient", "sagittal"),)
    for stack in stacks:
        assert load_series(stack.items, min_slices=MIN).shape == (5, 16, 16)


def test_orientation_then_echo(uid: str) -> None:
    items = _items(_stack({"EchoNumbers": 1}, series_uid=uid), _stack({"EchoNumbers": 2}, series_uid=uid))
    items += _items(
        _stack({"EchoNumbers": 1}, series_uid=uid, orientation=SAGITTAL),
        _stack({"EchoNumbers": 2}, series_uid=uid, orientation=SAGITTAL),
    )
    assert _labels(split_stacks(items, min_slices=MIN)) == [
        "axial, echo 1",
        "axial, echo 2",
        "sagittal, echo 1",
        "sagittal, echo 2",
    ]


def test_one_stray_image_of_another_orientation_is_not_a_stack(uid: str) -> None:
    items = [(None, ds) for ds in _stack(series_uid=uid) + _stack(series_uid=uid, orientation=SAGITTAL, slices=1)]
    assert split_stacks(items, min_slices=MIN) == [Stack(items)]
    with pytest.raises(SeriesError, match=r"inconsistent Image Orientation \(Patient\)"):
        load_series(items, min_slices=MIN)


def test_orientations_that_wobble_are_not_stacks(uid: str) -> None:
    """Two orientations 0.5 degrees apart (beyond the reader's tolerance): one series with inconsistent
    orientation, reported as such, not two stacks of alternate slices."""
    tilted = oblique_orientation(0.5)

    def wobble(k: int, ds: Dataset) -> None:
        if k % 2:
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in tilted]

    items = [(None, ds) for ds in _stack(series_uid=uid, slices=8, mutate=wobble)]
    assert split_stacks(items, min_slices=MIN) == [Stack(items)]
    with pytest.raises(SeriesError, match="inconsistent Image Orientation"):
        load_series(items, min_slices=MIN)


def test_a_series_without_duplicates_is_one_stack_even_when_an_attribute_varies(uid: str) -> None:
    items = [(None, ds) for ds in _stack(series_uid=uid, mutate=lambda k, ds: setattr(ds, "EchoTime", str(10 + k)))]
    (stack,) = split_stacks(items, min_slices=MIN)
    assert stack.values == () and stack.label == "" and stack.key == ""


def test_no_attribute_tells_the_images_apart(uid: str) -> None:
    items = _items(_stack(series_uid=uid), _stack(series_uid=uid, seed=1))
    assert len(split_stacks(items, min_slices=MIN)) == 1
    with pytest.raises(SeriesError, match=r"duplicate slice position 0\.000 mm") as info:
        load_series(items, min_slices=MIN)
    assert "no attribute tells them apart (EchoNumbers, EchoTime, DiffusionBValue" in str(info.value)


def test_diffusion_directions_at_one_b_value_are_not_split_and_the_message_names_the_attribute(uid: str) -> None:
    """b=0 once per position, b=1000 in three directions: a split by b-value leaves three images at each
    position of the b=1000 stack, so the series is skipped; the message says why."""
    items = _items(
        _stack({"DiffusionBValue": 0.0}, series_uid=uid),
        *(_stack({"DiffusionBValue": 1000.0}, series_uid=uid, seed=k) for k in range(3)),
    )
    assert len(split_stacks(items, min_slices=MIN)) == 1
    with pytest.raises(SeriesError) as info:
        load_series(items, min_slices=MIN)
    assert "DiffusionBValue (2 values) does not split the series into 3-D stacks" in str(info.value)


def test_stacks_with_too_few_images_are_not_a_split(uid: str) -> None:
    items = _items(
        _stack({"EchoNumbers": 1}, series_uid=uid, slices=2), _stack({"EchoNumbers": 2}, series_uid=uid, slices=2)
    )
    assert len(split_stacks(items, min_slices=MIN)) == 1


def test_loading_a_series_that_holds_stacks_names_them(uid: str) -> None:
    items = _items(_stack({"EchoNumbers": 1}, series_uid=uid), _stack({"EchoNumbers": 2}, series_uid=uid))
    with pytest.raises(SeriesError, match=r"the series holds 2 stacks \(echo 1, echo 2\)"):
        load_series(items, min_slices=MIN)


def test_malformed_geometry_leaves_the_series_whole(uid: str) -> None:
    items = _items(_stack({"EchoNumbers": 1}, series_uid=uid), _stack({"EchoNumbers": 2}, series_uid=uid))
    del items[3][1].ImagePositionPatient
    assert split_stacks(items, min_slices=MIN) == [Stack(items)]
    assert np.all([ds is items[i][1] for i, (_, ds) in enumerate(split_stacks(items, min_slices=MIN)[0].items)])
