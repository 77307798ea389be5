"""The research-use notice every QA output carries (montage footer, PDF header, box and footer)."""

__all__ = ["NOTICE", "NOTICE_DETAIL"]

#: One line, on every page and image a person may look at.
NOTICE = "NOT FOR DIAGNOSTIC USE - research software"
#: Why, in the PDF's notice box.
NOTICE_DETAIL = (
    "The derived series was produced by an experimental self-supervised denoising algorithm. It may remove "
    "or alter fine structures and must not be used for diagnosis or treatment decisions. Always refer to "
    "the original series."
)
