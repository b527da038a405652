"""``proxyano-prepare``: turn medical volumes into an anomalib Folder tree of 2-D slices.

    proxyano-prepare nifti --images 'DIR or glob' [--labels 'DIR or glob'] --output OUT [options]
    proxyano-prepare dicom --series DIR --output OUT [options]
    proxyano-prepare masks --images DIR --masks DIR [DIR ...] --output OUT [--overwrite]
    proxyano-prepare lesions --root DIR --split-csv CSV --output OUT [options]

Exit codes: 0 written, 2 bad input or options (the message names the file), 130 interrupted (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxyano_plugin.prepare.lesions import LesionOptions, paint_lesions
from proxyano_plugin.prepare.masks import merge_masks
from proxyano_plugin.prepare.pipeline import FORMATS, NORMALISATIONS, SliceOptions, prepare_dicom, prepare_nifti
from proxyano_plugin.prepare.readers import DEFAULT_SUBJECT_REGEX, PrepareError

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


def _output_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    parser.add_argument("--output", required=True, help=f"{what} to write (refused if it exists)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists (only on success)")


def _slice_options(parser: argparse.ArgumentParser, test_fraction: float) -> None:
    defaults = SliceOptions()
    group = parser.add_argument_group("slices")
    _output_arguments(group, "the Folder tree")
    group.add_argument("--axis", type=int, default=defaults.axis, choices=(0, 1, 2), help="slice axis (default: 2)")
    group.add_argument("--slice-range", metavar="A:B", help="keep slices A..B-1 along the axis (Python bounds)")
    group.add_argument(
        "--foreground-fraction",
        type=float,
        default=defaults.foreground_fraction,
        help="drop slices whose foreground covers less than this fraction (default: %(default)s)",
    )
    group.add_argument(
        "--foreground-threshold",
        type=float,
        default=defaults.foreground_threshold,
        help="foreground = normalised intensity above this (default: %(default)s)",
    )
    group.add_argument(
        "--min-lesion-area",
        type=int,
        default=defaults.min_lesion_area,
        help="abnormal if at least this many lesion pixels; fewer (but some) is ambiguous and dropped "
        "(source pixels, default: %(default)s)",
    )
    group.add_argument("--normalise", "--normalize", choices=NORMALISATIONS, default=defaults.normalise)
    group.add_argument("--low", type=float, default=defaults.low, help="percentile mapped to 0 (%(default)s)")
    group.add_argument("--high", type=float, default=defaults.high, help="percentile mapped to 1 (%(default)s)")
    group.add_argument("--window-min", type=float, help="--normalise window: value mapped to 0 (e.g. -160 HU)")
    group.add_argument("--window-max", type=float, help="--normalise window: value mapped to 1 (e.g. 240 HU)")
    group.add_argument("--size", type=int, default=defaults.size, help="output side in pixels, 0 keeps the slice size")
    group.add_argument(
        "--test-fraction",
        type=float,
        default=test_fraction,
        help="fraction of subjects in the test split (default: %(default)s)",
    )
    group.add_argument("--seed", type=int, default=defaults.seed, help="seed of the subject split")
    group.add_argument("--format", choices=FORMATS, default=defaults.format, help="png8 (default) or png16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyano-prepare", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    nifti = commands.add_parser("nifti", help="NIfTI volumes (one modality per run) and optional label volumes")
    nifti.add_argument(
        "--images", required=True, help="a folder of .nii/.nii.gz files or a glob, e.g. '*/*_flair.nii.gz'"
    )
    nifti.add_argument("--labels", help="label volumes (folder or glob), matched to the images by subject id")
    nifti.add_argument(
        "--subject-regex",
        default=DEFAULT_SUBJECT_REGEX,
        help="regex on the file name whose 'subject' group is the subject id "
        "(default: the name less its extension and a trailing _flair/_t1/_seg/... word)",
    )
    nifti.add_argument(
        "--spacing",
        type=float,
        help="resample each slice in-plane to this pixel size in mm (from the NIfTI header) before --size; "
        "default: keep the volume's grid",
    )
    _slice_options(nifti, SliceOptions().test_fraction)

    dicom = commands.add_parser("dicom", help="DICOM series, one subfolder per subject (no labels: normal only)")
    dicom.add_argument("--series", required=True, help="folder with one subfolder of DICOM files per subject")
    _slice_options(dicom, 0.0)

    masks = commands.add_parser(
        "masks", help="merge per-lesion mask folders (IDRiD style) into one binary mask per image"
    )
    masks.add_argument("--images", required=True, help="the folder of abnormal images the masks belong to")
    masks.add_argument(
        "--masks",
        required=True,
        nargs="+",
        help="mask folders, e.g. one per lesion type; a mask belongs to the image whose name it contains",
    )
    _output_arguments(masks, "the mask folder")

    defaults = LesionOptions()
    lesions = commands.add_parser(
        "lesions",
        help="paint synthetic lesions (with masks) into part of a split's normal test images: "
        "a test set whose classes come from one source",
    )
    lesions.add_argument("--root", required=True, help="the folder the split CSV's paths start from")
    lesions.add_argument("--split-csv", required=True, help="split CSV (file,label,split), as SplitCSV reads it")
    _output_arguments(lesions, "the Folder tree")
    lesions.add_argument(
        "--lesion-fraction",
        type=float,
        default=defaults.lesion_fraction,
        help="share of the normal test images that get a lesion (default: %(default)s)",
    )
    lesions.add_argument(
        "--lesion-area",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=defaults.lesion_area,
        help="lesion area range as a share of the head area (default: %(default)s)",
    )
    lesions.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random choice")
    return parser


def _run(args: argparse.Namespace) -> str:
    """Run the chosen command; return its summary."""
    if args.command == "masks":
        return merge_masks(args.images, args.masks, args.output, overwrite=args.overwrite).text()
    if args.command == "lesions":
        options = LesionOptions(lesion_fraction=args.lesion_fraction, lesion_area=args.lesion_area, seed=args.seed)
        return paint_lesions(args.root, args.split_csv, args.output, options, overwrite=args.overwrite).text()
    options = SliceOptions(
        axis=args.axis,
        slice_range=args.slice_range,
        foreground_fraction=args.foreground_fraction,
        foreground_threshold=args.foreground_threshold,
        min_lesion_area=args.min_lesion_area,
        normalise=args.normalise,
        low=args.low,
        high=args.high,
        window_min=args.window_min,
        window_max=args.window_max,
        size=args.size,
        test_fraction=args.test_fraction,
        seed=args.seed,
        format=args.format,
        spacing=getattr(args, "spacing", None),  # nifti only
    )
    if args.command == "nifti":
        summary = prepare_nifti(
            args.images,
            args.output,
            labels=args.labels,
            options=options,
            subject_regex=args.subject_regex,
            overwrite=args.overwrite,
        )
    else:
        summary = prepare_dicom(args.series, args.output, options=options, overwrite=args.overwrite)
    return summary.text()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        text = _run(args)
    except PrepareError as error:
        print(f"proxyano-prepare: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("proxyano-prepare: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
