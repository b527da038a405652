"""Datasets: the embedded BrainMRIDemo, and adapters for your own data.

- :class:`BrainMRIDemo`: offline, semi-synthetic brain MRI with tumour-like lesions and exact masks
  (real ICBM152 template anatomy; generated into a cache on first use).
- :class:`SplitCSV`: an image folder plus a CSV file giving labels and the train/test split.
- :class:`CheckedFolder`: anomalib's ``Folder`` with the dataset checked up front
  (:func:`check_folder_dataset` does the checking and is usable on its own).

The datamodules import anomalib, so they load lazily, on first access; the generator and the checks
(:mod:`.demo_generator`, :mod:`.validation`) work without it.
"""

from typing import TYPE_CHECKING

from proxyano_plugin.lazy import lazy_exports

_LAZY_EXPORTS = {
    "BrainMRIDemo": "proxyano_plugin.data.brain_mri_demo",
    "CheckedFolder": "proxyano_plugin.data.checked_folder",
    "SplitCSV": "proxyano_plugin.data.split_csv",
    "read_split_csv": "proxyano_plugin.data.split_csv",
    "DemoSpec": "proxyano_plugin.data.demo_generator",
    "generate_demo": "proxyano_plugin.data.demo_generator",
    "materialise_demo": "proxyano_plugin.data.demo_generator",
    "DataProblem": "proxyano_plugin.data.validation",
    "DatasetError": "proxyano_plugin.data.validation",
    "DatasetSummary": "proxyano_plugin.data.validation",
    "check_folder_dataset": "proxyano_plugin.data.validation",
    "inspect_folder_dataset": "proxyano_plugin.data.validation",
    "report_problems": "proxyano_plugin.data.validation",
}

__all__ = [
    "BrainMRIDemo",
    "CheckedFolder",
    "DataProblem",
    "DatasetError",
    "DatasetSummary",
    "DemoSpec",
    "SplitCSV",
    "check_folder_dataset",
    "generate_demo",
    "inspect_folder_dataset",
    "materialise_demo",
    "read_split_csv",
    "report_problems",
]

if TYPE_CHECKING:
    from proxyano_plugin.data.brain_mri_demo import BrainMRIDemo
    from proxyano_plugin.data.checked_folder import CheckedFolder
    from proxyano_plugin.data.demo_generator import DemoSpec, generate_demo, materialise_demo
    from proxyano_plugin.data.split_csv import SplitCSV, read_split_csv
    from proxyano_plugin.data.validation import (
        DataProblem,
        DatasetError,
        DatasetSummary,
        check_folder_dataset,
        inspect_folder_dataset,
        report_problems,
    )


__getattr__ = lazy_exports(__name__, _LAZY_EXPORTS)
