"""``proxyano-prepare``: medical volumes (NIfTI, DICOM series) -> an anomalib Folder tree of 2-D slices,
and per-lesion mask folders -> one mask per image (:func:`merge_masks`).

See ``proxyano_plugin/prepare/README.md``. nibabel and pydicom are needed only for the format read
(``pip install 'proxyano-plugin[medical]'``).
"""

from proxyano_plugin.prepare.masks import MaskSummary, merge_masks
from proxyano_plugin.prepare.pipeline import FOLDERS, SliceOptions, Summary, prepare_dicom, prepare_nifti
from proxyano_plugin.prepare.readers import PrepareError

__all__ = [
    "FOLDERS",
    "MaskSummary",
    "PrepareError",
    "SliceOptions",
    "Summary",
    "merge_masks",
    "prepare_dicom",
    "prepare_nifti",
]
