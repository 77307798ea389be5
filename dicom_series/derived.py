"""Build the DICOM objects that carry a denoised series back to the archive.

:func:`build_derived_series` produces one instance per source slice: same SOP class, same patient and
study, same per-slice geometry and pixel format, new series and instance identity, and the references
and provenance a derived image must carry (PS3.3 C.7.6.1 General Image Module, C.12.4 General
Reference Module, C.12.2 Common Instance Reference Module, C.12.1 SOP Common Module).

:func:`build_encapsulated_pdf` wraps a PDF report as an Encapsulated PDF instance (PS3.3 A.45.1) in a
new series of the same study.

Both share the helpers below, so that each fact (which attributes identify the patient and study,
how UIDs and timestamps are made, how this software describes itself) lives in one place.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    generate_uid,
)

from dicom_series.reader import SourceSeries, padding_bounds, rescale_parameters, stored_dtype, stored_value_range

__all__ = [
    "DEFAULT_SERIES_NUMBER_OFFSET",
    "IMPLEMENTATION_CLASS_UID",
    "SOFTWARE_NAME",
    "DerivedSeriesOptions",
    "EncapsulatedPdfOptions",
    "build_derived_series",
    "build_encapsulated_pdf",
    "check_series_description",
    "derived_series_number",
]

#: Implementation Class UID (0002,0012) of this writer (PS3.7 D.3.3.2). A UUID-derived ``2.25`` UID
#: (PS3.5 B.2), fixed so that every file we write names the same implementation.
IMPLEMENTATION_CLASS_UID = UID("2.25.170181854264613745082906077097506737111")
#: This software's name, as Manufacturer and Model Name of the equipment that made an instance, and in
#: the run record.
SOFTWARE_NAME = "nsn2n-denoise"

DEFAULT_DERIVATION_DESCRIPTION = (
    "Denoised by nsn2n-denoise (self-supervised neighbouring-slice Noise2Noise). "
    "Research use only; not for diagnostic use."
)

#: Attributes copied unchanged into new (non-image) instances: Patient (C.7.1.1), Clinical Trial
#: Subject (C.7.1.3), General Study (C.7.2.1), Patient Study (C.7.2.2), Clinical Trial Study (C.7.2.3)
#: modules, plus Specific Character Set and Timezone Offset From UTC (SOP Common, C.12.1), which
#: decide how the copied values are read. Derived images deep-copy the whole source instance instead,
#: so they carry these (and everything else) by construction.
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    # Patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar",
    "PatientAlternativeCalendar",
    "PatientSex",
    "ReferencedPatientPhotoSequence",
    "QualityControlSubject",
    "ReferencedPatientSequence",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "StrainDescription",
    "StrainNomenclature",
    "StrainCodeSequence",
    "StrainAdditionalInformation",
    "StrainStockSequence",
    "GeneticModificationsSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # General Study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "RequestingServiceCodeSequence",
    "ReferencedStudySequence",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientBodyMassIndex",
    "MeasuredAPDimension",
    "MeasuredLateralDimension",
    "PatientSizeCodeSequence",
    "MedicalAlerts",
    "Allergies",
    "SmokingStatus",
    "PregnancyStatus",
    "LastMenstrualDate",
    "PatientState",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "ServiceEpisodeID",
    "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence",
    "PatientSexNeutered",
    "Occupation",
    "AdditionalPatientHistory",
    # Clinical Trial Study
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    "ConsentForClinicalTrialUseSequence",
)

#: Removed from every derived instance:
#: - Smallest/Largest Image Pixel Value (0028,0106/0107) and the series/plane variants: stale after
#:   the pixels change (C.7.6.3);
#: - Icon Image Sequence (0088,0200): a thumbnail of the *source* pixels (C.7.6.1);
#: - Instance Creator UID, Storage Media File-Set ID/UID, digital signatures (C.12.1): they describe
#:   the source instance, its creator and its media, not the new one;
#: - encapsulation leftovers (Extended Offset Table) and Data Set Trailing Padding; the command group
#:   and query/retrieve attributes some archives leave in stored files (not allowed in PS3.10 files).
_DROP_FROM_DERIVED: tuple[int, ...] = (
    0x00280106,  # SmallestImagePixelValue
    0x00280107,  # LargestImagePixelValue
    0x00280108,  # SmallestPixelValueInSeries
    0x00280109,  # LargestPixelValueInSeries
    0x00280110,  # SmallestImagePixelValueInPlane (retired)
    0x00280111,  # LargestImagePixelValueInPlane (retired)
    0x00880200,  # IconImageSequence
    0x00080014,  # InstanceCreatorUID
    0x00880130,  # StorageMediaFileSetID
    0x00880140,  # StorageMediaFileSetUID
    0x00080052,  # QueryRetrieveLevel
    0x00080054,  # RetrieveAETitle
    0x00080056,  # InstanceAvailability
    0x4FFE0001,  # MACParametersSequence
    0xFFFAFFFA,  # DigitalSignaturesSequence
    0x7FE00001,  # ExtendedOffsetTable
    0x7FE00002,  # ExtendedOffsetTableLengths
    0x7FE00008,  # FloatPixelData
    0x7FE00009,  # DoubleFloatPixelData
    0x7FE00010,  # PixelData (re-encoded below)
    0xFFFCFFFC,  # DataSetTrailingPadding
)

#: Transfer syntaxes that are always lossy (C.7.6.1.1.5: once lossy, Lossy Image Compression "01").
_LOSSY_TRANSFER_SYNTAXES: dict[str, str] = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
}

_MAX_IS = 2**31 - 1
#: Series Number of a derived series = the source's + this; the QA report's = the source's + this + 1.
DEFAULT_SERIES_NUMBER_OFFSET = 1000


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def _check_text(name: str, value: str, max_len: int, *, multiline: bool = False, empty_ok: bool = False) -> None:
    """Validate a text value for its VR (PS3.5 6.2): length, no backslash for LO/SH, ASCII only.

    ASCII keeps the value representable in whatever Specific Character Set (0008,0005) the copied
    source uses.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip() and not empty_ok:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{name} is {len(value)} characters long; DICOM allows at most {max_len}")
    allowed = r"[\x20-\x7e\r\n\t\f]*" if multiline else r"[\x20-\x5b\x5d-\x7e]*"
    if not re.fullmatch(allowed, value):
        what = "printable ASCII" if multiline else "printable ASCII without backslash"
        raise ValueError(f"{name} must be {what}: {value!r}")


def check_series_description(value: str) -> None:
    """Series Description (0008,103E) is LO: 1 to 64 printable ASCII characters, no backslash (PS3.5 6.2).

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: it breaks the rule; the message says how.
    """
    _check_text("series_description", value, 64)


def _check_series_number(value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"series_number must be an int or None, got {type(value).__name__}")
    if not 0 <= int(value) <= _MAX_IS:
        raise ValueError(f"series_number {value} is outside 0..{_MAX_IS} (IS value range)")


def _check_uid_prefix(value: str | None) -> None:
    if value is None:
        return
    if not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.", value) or len(value) > 40:
        raise ValueError(f"uid_prefix {value!r} must be a UID root ending with '.' (at most 40 characters)")


class _SoftwareIdentity(Protocol):
    manufacturer: str
    manufacturer_model_name: str
    software_version: str
    uid_prefix: str | None


def _check_software(options: _SoftwareIdentity) -> None:
    _check_text("manufacturer", options.manufacturer, 64)
    _check_text("manufacturer_model_name", options.manufacturer_model_name, 64)
    _check_text("software_version", options.software_version, 64)
    _check_uid_prefix(options.uid_prefix)


@dataclass(frozen=True)
class DerivedSeriesOptions:
    """How the derived (denoised) series describes itself.

    Attributes:
        series_description: Series Description (0008,103E), LO: at most 64 characters.
        series_number: Series Number (0020,0011), IS. ``None``: :func:`derived_series_number` with
            ``DEFAULT_SERIES_NUMBER_OFFSET`` (left empty, as Type 2 allows, when the source has none).
        software_version: Software Versions (0018,1020) of the Contributing Equipment item.
        manufacturer: Manufacturer (0008,0070) of the Contributing Equipment item (C.12.1.1.5). The acquisition
            equipment (General Equipment module) is kept.
        derivation_description: Derivation Description (0008,2111), ST: at most 1024 characters.
        manufacturer_model_name: Manufacturer's Model Name (0008,1090) of the Contributing Equipment item.
        contribution_description: Contribution Description (0018,A003) of the Contributing Equipment item.
        derivation_code: Derivation Code Sequence (0008,9215) item, CID 7203. DICOM has no "denoising" code; the
            default is (113087, DCM, "Smoothing").
        uid_prefix: Root for new UIDs; ``None`` gives UUID-derived ``2.25.`` UIDs (PS3.5 B.2).
        remove_private_tags: Drop private attributes copied from the source (a site decision; default keep).
    """

    series_description: str
    series_number: int | None
    software_version: str
    manufacturer: str = SOFTWARE_NAME
    derivation_description: str = DEFAULT_DERIVATION_DESCRIPTION
    manufacturer_model_name: str = SOFTWARE_NAME
    contribution_description: str = "Self-supervised image denoising"
    derivation_code: Code = codes.DCM.Smoothing
    uid_prefix: str | None = None
    remove_private_tags: bool = False

    def __post_init__(self) -> None:
        check_series_description(self.series_description)
        _check_series_number(self.series_number)
        _check_software(self)
        _check_text("derivation_description", self.derivation_description, 1024, multiline=True)
        _check_text("contribution_description", self.contribution_description, 1024, multiline=True)
        if not isinstance(self.derivation_code, Code):
            raise TypeError("derivation_code must be a pydicom.sr.coding.Code")


@dataclass(frozen=True)
class EncapsulatedPdfOptions:
    """How the Encapsulated PDF instance (PS3.3 A.45.1) describes itself.

    Attributes:
        document_title: Document Title (0042,0010), ST.
        series_description: Series Description (0008,103E) of the new DOC series, LO.
        software_version, manufacturer, manufacturer_model_name: General Equipment module (C.7.5.1) of the PDF:
            this software created it.
        series_number: Series Number (0020,0011), Type 1 here (C.24.1). ``None``:
            :func:`derived_series_number` with ``DEFAULT_SERIES_NUMBER_OFFSET + 1``.
        concept_name: Concept Name Code Sequence (0040,A043) item, Type 2. ``None`` leaves it empty: no standard
            document-title code describes a denoising QA report.
        burned_in_annotation: Burned In Annotation (0028,0301): whether the PDF shows enough to identify the
            patient.
        uid_prefix: Root for new UIDs; ``None`` gives ``2.25.`` UIDs.
    """

    document_title: str
    series_description: str
    software_version: str
    series_number: int | None = None
    manufacturer: str = SOFTWARE_NAME
    manufacturer_model_name: str = SOFTWARE_NAME
    concept_name: Code | None = None
    burned_in_annotation: bool = False
    uid_prefix: str | None = None

    def __post_init__(self) -> None:
        _check_text("document_title", self.document_title, 1024)
        check_series_description(self.series_description)
        _check_series_number(self.series_number)
        _check_software(self)
        if self.concept_name is not None and not isinstance(self.concept_name, Code):
            raise TypeError("concept_name must be a pydicom.sr.coding.Code or None")


# --------------------------------------------------------------------------------------------------
# Shared helpers (one place for each fact)
# --------------------------------------------------------------------------------------------------


def _new_uid(prefix: str | None, avoid: set[str]) -> UID:
    """A fresh UID (pydicom ``generate_uid``), never one of ``avoid``."""
    while True:
        uid = generate_uid(prefix=prefix)
        if uid not in avoid:
            avoid.add(uid)
            return uid


def _creation_time(source_ds: Dataset, now: datetime | None) -> datetime:
    """Now, in the source's Timezone Offset From UTC (0008,0201) when it has one, else local time."""
    if now is not None:
        return now
    offset = str(source_ds.get("TimezoneOffsetFromUTC", "") or "")
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})", offset)
    if match:
        sign = 1 if match.group(1) == "+" else -1
        tz = timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
        return datetime.now(tz)
    return datetime.now().astimezone()


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f") + (t.strftime("%z") if t.tzinfo else "")


def _code_item(code: Code) -> Dataset:
    """A Code Sequence Macro item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    if code.scheme_version:
        item.CodingSchemeVersion = code.scheme_version
    item.CodeMeaning = code.meaning
    return item


def _sop_reference(sop_class_uid: str, sop_instance_uid: str, purpose: Code | None = None) -> Dataset:
    """An SOP Instance Reference Macro item (Table 10-11), optionally with a purpose of reference."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    if purpose is not None:
        item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(purpose)])
    return item


def _set_instance_creation(ds: Dataset, t: datetime) -> None:
    """Instance Creation Date/Time (0008,0012/0013), SOP Common module (C.12.1)."""
    ds.InstanceCreationDate = _da(t)
    ds.InstanceCreationTime = _tm(t)


def _set_new_series(ds: Dataset, series_uid: str, series_number: int | None, description: str, t: datetime) -> None:
    """Identity of a new series: General Series module (C.7.3.1) / Encapsulated Document Series."""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number  # None: zero-length (Type 2)
    ds.SeriesDescription = description
    ds.SeriesDate = _da(t)
    ds.SeriesTime = _tm(t)


def derived_series_number(source: SourceSeries, offset: int, *, required: bool = False) -> int | None:
    """Series Number (0020,0011) of a new series made from ``source``: the source's Series Number + ``offset``.

    A readers' convention: the derived series sorts right after its source in a viewer's series list. A
    source without Series Number gives ``None`` (left empty, as Type 2 allows in the General Series
    module), or, where the attribute is Type 1 (``required``: the Encapsulated Document Series, C.24.1),
    ``offset`` as if the source's number were 0.

    Raises:
        ValueError: the number is outside 0..2**31-1, the range of an IS value (PS3.5 6.2).
    """
    value = source.datasets[0].get("SeriesNumber")
    if value is None or value == "":
        if not required:
            return None
        value = 0
    number = int(value) + offset
    if not 0 <= number <= _MAX_IS:
        raise ValueError(
            f"Series Number {int(value)} + {offset} = {number} is outside 0..{_MAX_IS} (IS value range); "
            "choose a smaller series_number_offset"
        )
    return number


def _set_software_equipment(ds: Dataset, options: _SoftwareIdentity) -> None:
    """This software as General Equipment (C.7.5.1), for objects it creates from scratch."""
    ds.Manufacturer = options.manufacturer
    ds.ManufacturerModelName = options.manufacturer_model_name
    ds.SoftwareVersions = options.software_version


def _contributing_equipment_item(options: _SoftwareIdentity, description: str, t: datetime) -> Dataset:
    """This software as a Contributing Equipment Sequence (0018,A001) item (C.12.1.1.5), with
    Purpose of Reference (109102, DCM, "Processing Equipment") (CID 7005)."""
    item = Dataset()
    _set_software_equipment(item, options)
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(codes.DCM.ProcessingEquipment)])
    item.ContributionDateTime = _dt(t)
    item.ContributionDescription = description
    return item


def _copy_patient_study(source_ds: Dataset, ds: Dataset) -> None:
    """Copy :data:`PATIENT_STUDY_KEYWORDS` present in ``source_ds`` (deep copies)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source_ds:
            ds[keyword] = copy.deepcopy(source_ds[keyword])


def _file_meta(ds: Dataset, options: _SoftwareIdentity) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1): Explicit VR Little Endian, this implementation."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = re.sub(r"[^A-Za-z0-9._-]", "_", f"NSN2N_{options.software_version}")[:16]
    return meta


# --------------------------------------------------------------------------------------------------
# Derived image series
# --------------------------------------------------------------------------------------------------


def _encode_slice(src: Dataset, values: np.ndarray, padding: np.ndarray, padding_values: np.ndarray) -> np.ndarray:
    """Modality values -> stored values of ``src``'s pixel format (inverse of C.11.1.1.2).

    ``round((value - intercept) / slope)`` clipped to the Bits Stored range. Source padding pixels get
    their original stored value back; other pixels are moved off the padding range so they do not
    turn into padding (C.7.5.1.1.2).
    """
    slope, intercept = rescale_parameters(src)
    lo, hi = stored_value_range(src)
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    np.clip(stored, lo, hi, out=stored)
    bounds = padding_bounds(src)
    if bounds is not None:
        p_lo, p_hi = bounds
        hit = (stored >= p_lo) & (stored <= p_hi) & ~padding
        if hit.any():
            below, above = p_lo - 1, p_hi + 1
            if below < lo:
                stored[hit] = above
            elif above > hi:
                stored[hit] = below
            else:
                stored[hit] = np.where(stored[hit] - below <= above - stored[hit], below, above)
    out = stored.astype(stored_dtype(src))
    if padding_values.size:
        out[padding] = padding_values
    return out


def _referenced_series_item(series_uid: str, refs: Sequence[Dataset]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    item.ReferencedInstanceSequence = DicomSequence(list(refs))
    return item


def _drop_invalid_window(ds: Dataset) -> None:
    """Remove Window Center/Width (C.11.2.1.2) when a width is < 1: invalid for a LINEAR function,
    and viewers differ on what to do with it. Valid windows are kept unchanged."""
    width = ds.get("WindowWidth")
    if width is None:
        return
    widths = list(width) if ds["WindowWidth"].VM > 1 else [width]
    try:
        invalid = any(float(w) < 1 for w in widths) and str(ds.get("VOILUTFunction", "LINEAR")) == "LINEAR"
    except (TypeError, ValueError):
        invalid = True
    if invalid:
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction"):
            if keyword in ds:
                del ds[keyword]


def build_derived_series(
    source: SourceSeries,
    denoised: np.ndarray,
    options: DerivedSeriesOptions,
    *,
    now: datetime | None = None,
) -> list[Dataset]:
    """One derived instance per source slice, in spatial order, ready for ``save_as``.

    Follows PS3.3 for a derived image of the same SOP class:

    * whole source instance deep-copied: Patient/Study modules, Study Instance UID, Frame of Reference
      UID, per-slice Image Plane geometry, acquisition attributes and equipment are unchanged;
    * new Series Instance UID (one) and SOP Instance UIDs (one each, also in the file meta);
      Series Number/Description from ``options``; Instance Number 1..N along the slice normal;
      Series/Content/Instance Creation Date/Time = now (Acquisition Date/Time kept);
    * Image Type ``DERIVED\\SECONDARY\\<source values 3..n>`` (C.7.6.1.1.2), Derivation Description
      and Derivation Code Sequence, Source Image Sequence with purpose (121322, DCM) per slice
      (C.12.4), Referenced Series Sequence (C.12.2) listing the referenced source instance, and a
      Contributing Equipment item for this software (C.12.1.1.5);
    * same pixel format and Rescale Slope/Intercept/Type; stored values recomputed from
      ``denoised`` (modality units), clipped to the Bits Stored range; source padding restored
      exactly; Smallest/Largest Pixel Value and Icon Image Sequence removed; Lossy Image Compression
      kept (and set to "01" when the source transfer syntax was lossy);
    * Explicit VR Little Endian file meta (compressed sources are written uncompressed).

    Args:
        source: the source series.
        denoised: values in modality units, ``source.shape``, finite.
        options: how the new series describes itself.
        now: the creation time (for reproducible tests); by default the current time in the source's
            timezone offset.

    Raises:
        ValueError: ``denoised`` has the wrong shape or non-finite values.
    """
    if not isinstance(options, DerivedSeriesOptions):
        raise TypeError("options must be a DerivedSeriesOptions")
    denoised = _checked_values(source, denoised)
    t = _creation_time(source.datasets[0], now)
    used: set[str] = set()
    for src in source.datasets:
        used.update(str(src.get(k, "")) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"))
    series = _NewSeries(
        uid=_new_uid(options.uid_prefix, used),
        number=options.series_number
        if options.series_number is not None
        else derived_series_number(source, DEFAULT_SERIES_NUMBER_OFFSET),
        contribution=_contributing_equipment_item(options, options.contribution_description, t),
        time=t,
    )
    return [_derived_instance(source, z, denoised[z], options, series, used) for z in range(len(source))]


@dataclass(frozen=True)
class _NewSeries:
    """What every instance of one new series shares."""

    uid: str
    number: int | None
    contribution: Dataset
    time: datetime


def _derived_instance(
    source: SourceSeries, z: int, values: np.ndarray, options: DerivedSeriesOptions, series: _NewSeries, used: set[str]
) -> Dataset:
    """The derived instance of slice ``z`` with pixel ``values`` (modality units)."""
    src = source.datasets[z]
    t = series.time
    ds = _copy_for_derivation(src, options.remove_private_tags)
    # SOP Common (C.12.1) and General Series (C.7.3.1)
    ds.SOPInstanceUID = _new_uid(options.uid_prefix, used)
    _set_instance_creation(ds, t)
    _set_new_series(ds, series.uid, series.number, options.series_description, t)
    equipment = DicomSequence(list(copy.deepcopy(src.get("ContributingEquipmentSequence", []))))
    equipment.append(copy.deepcopy(series.contribution))
    ds.ContributingEquipmentSequence = equipment
    _set_derivation(ds, src, z, source.series_instance_uid, options, t)
    # Image Pixel (C.7.6.3) and VOI LUT (C.11.2)
    pixels = _encode_slice(src, values, source.padding_mask[z], source.padding_stored_values[z])
    ds.add_new(0x7FE00010, "OB" if pixels.dtype.itemsize == 1 else "OW", pixels.tobytes())
    _drop_invalid_window(ds)
    ds.file_meta = _file_meta(ds, options)
    return ds


def _checked_values(source: SourceSeries, denoised: np.ndarray) -> np.ndarray:
    denoised = np.asarray(denoised)
    if denoised.shape != source.shape:
        raise ValueError(f"denoised volume has shape {denoised.shape}, the source series {source.shape}")
    if denoised.dtype.kind not in "fiu":
        raise ValueError(f"denoised volume must be numeric, got {denoised.dtype}")
    if denoised.dtype.kind == "f" and not np.all(np.isfinite(denoised)):
        raise ValueError(f"denoised volume of series {source.series_instance_uid} contains NaN or Inf")
    return denoised


def _copy_for_derivation(src: Dataset, remove_private_tags: bool) -> Dataset:
    """A deep copy of ``src`` without the attributes a derived instance must not carry over."""
    ds = Dataset()
    for elem in src:
        if elem.tag.group == 0x0000 or elem.tag in _DROP_FROM_DERIVED:
            continue
        ds.add(copy.deepcopy(elem))
    if remove_private_tags:
        ds.remove_private_tags()
    return ds


def _set_derivation(
    ds: Dataset, src: Dataset, z: int, source_series_uid: str, options: DerivedSeriesOptions, t: datetime
) -> None:
    """General Image (C.7.6.1), General Reference (C.12.4), Common Instance Reference (C.12.2) and the
    lossy-compression history (C.7.6.1.1.5) of the derived instance made from ``src``."""
    ds.InstanceNumber = z + 1
    ds.ContentDate = _da(t)
    ds.ContentTime = _tm(t)
    ds.ImageType = ["DERIVED", "SECONDARY", *list(src.get("ImageType", []))[2:]]
    ds.DerivationDescription = options.derivation_description
    ds.DerivationCodeSequence = DicomSequence([_code_item(options.derivation_code)])
    ds.SourceImageSequence = DicomSequence(
        [_sop_reference(src.SOPClassUID, src.SOPInstanceUID, codes.DCM.SourceImageForImageProcessingOperation)]
    )
    # The instances this instance references, i.e. its source slice (listing the whole series in every
    # slice would cost N^2 items).
    referenced = DicomSequence(list(copy.deepcopy(src.get("ReferencedSeriesSequence", []))))
    referenced.append(_referenced_series_item(source_series_uid, [_sop_reference(src.SOPClassUID, src.SOPInstanceUID)]))
    ds.ReferencedSeriesSequence = referenced
    ts = src.file_meta.get("TransferSyntaxUID") if getattr(src, "file_meta", None) else None
    if ts in _LOSSY_TRANSFER_SYNTAXES and str(src.get("LossyImageCompression", "")) != "01":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = _LOSSY_TRANSFER_SYNTAXES[ts]


# --------------------------------------------------------------------------------------------------
# Encapsulated PDF
# --------------------------------------------------------------------------------------------------


def build_encapsulated_pdf(
    source: SourceSeries,
    pdf_bytes: bytes,
    options: EncapsulatedPdfOptions,
    *,
    derived: Sequence[Dataset] = (),
    now: datetime | None = None,
) -> Dataset:
    """An Encapsulated PDF Storage instance (1.2.840.10008.5.1.4.1.1.104.1, PS3.3 A.45.1).

    Same patient and study as ``source``; a new series (Modality DOC) holding one instance. Source
    Instance Sequence (0042,0013) references every source instance and, when given, the ``derived``
    instances the report describes. General Equipment names this software; SC Equipment Conversion
    Type is WSD (workstation).

    Args:
        source: the series the report is about.
        pdf_bytes: the PDF document.
        options: how the new series describes itself.
        derived: the derived instances the report describes.
        now: the creation time (for reproducible tests); by default now.

    Raises:
        ValueError: ``pdf_bytes`` is not a PDF or too large for an Encapsulated Document.
    """
    if not isinstance(options, EncapsulatedPdfOptions):
        raise TypeError("options must be an EncapsulatedPdfOptions")
    pdf_bytes = _checked_pdf(pdf_bytes)
    first = source.datasets[0]
    t = _creation_time(first, now)
    used: set[str] = {str(ds.get("SOPInstanceUID", "")) for ds in source.datasets}
    used |= {source.series_instance_uid, source.study_instance_uid}
    used |= {str(ds.get("SeriesInstanceUID", "")) for ds in derived}

    ds = Dataset()
    _copy_patient_study(first, ds)  # Patient, General Study, Patient Study, Clinical Trial modules

    # Encapsulated Document Series (C.24.1)
    ds.Modality = "DOC"
    number = options.series_number
    if number is None:
        number = derived_series_number(source, DEFAULT_SERIES_NUMBER_OFFSET + 1, required=True)
    _set_new_series(ds, _new_uid(options.uid_prefix, used), number, options.series_description, t)

    # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
    _set_software_equipment(ds, options)
    ds.ConversionType = "WSD"

    _set_encapsulated_document(ds, pdf_bytes, options, [*source.datasets, *derived], t)
    # SOP Common (C.12.1)
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = _new_uid(options.uid_prefix, used)
    _set_instance_creation(ds, t)

    ds.file_meta = _file_meta(ds, options)
    return ds


def _checked_pdf(pdf_bytes: bytes) -> bytes:
    pdf_bytes = bytes(pdf_bytes)
    if not pdf_bytes.startswith(b"%PDF-"):
        raise ValueError("pdf_bytes is not a PDF document (it does not start with '%PDF-')")
    if len(pdf_bytes) >= 2**32 - 2:
        raise ValueError("PDF document too large for an Encapsulated Document (0042,0011)")
    return pdf_bytes


def _set_encapsulated_document(
    ds: Dataset, pdf_bytes: bytes, options: EncapsulatedPdfOptions, sources: Sequence[Dataset], t: datetime
) -> None:
    """Encapsulated Document module (C.24.2): the PDF, its title and the instances it describes."""
    ds.InstanceNumber = 1
    ds.ContentDate = _da(t)
    ds.ContentTime = _tm(t)
    ds.AcquisitionDateTime = _dt(t)
    ds.BurnedInAnnotation = "YES" if options.burned_in_annotation else "NO"
    ds.SourceInstanceSequence = DicomSequence([_sop_reference(s.SOPClassUID, s.SOPInstanceUID) for s in sources])
    ds.DocumentTitle = options.document_title
    ds.ConceptNameCodeSequence = DicomSequence(
        [_code_item(options.concept_name)] if options.concept_name is not None else []
    )
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf_bytes + (b"\x00" if len(pdf_bytes) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
