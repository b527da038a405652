"""``proxyano-prepare``: medical volumes (NIfTI, DICOM series) -> an anomalib Folder tree of 2-D slices,
per-lesion mask folders -> one mask per image (:func:`merge_masks`), and a split's normal images -> a test
set with synthetic lesions from the same source (:func:`paint_lesions`).

See ``proxyano_plugin/prepare/README.md``. nibabel and pydicom are needed only for the format read
(``pip install 'proxyano-plugin[medical]'``).
"""

from proxyano_plugin.prepare.lesions import LesionOptions, LesionSummary, paint_lesions
from proxyano_plugin.prepare.masks import MaskSummary, merge_masks
from proxyano_plugin.prepare.pipeline import FOLDERS, SliceOptions, Summary, prepare_dicom, prepare_nifti
from proxyano_plugin.prepare.readers import PrepareError

__all__ = [
    "FOLDERS",
    "LesionOptions",
    "LesionSummary",
    "MaskSummary",
    "PrepareError",
    "SliceOptions",
    "Summary",
    "merge_masks",
    "paint_lesions",
    "prepare_dicom",
    "prepare_nifti",
]
