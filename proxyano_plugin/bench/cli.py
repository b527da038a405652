"""``proxyano-bench``: run a benchmark suite, or report on a results directory.

    proxyano-bench run SUITE [--output DIR] [--resume] [--only PATTERN ...] [--dry-run] [--set KEY=VALUE ...]
                             [--print-config]
    proxyano-bench report DIR
    proxyano-bench curves DIR [--only PATTERN ...] [--metric NAME ...] [--output PNG]
    proxyano-bench list

Exit codes: 0 all runs ok (or skipped), 1 some run failed, 2 the suite or the command is invalid, or the
results folder cannot be written (read-only, full), 130 interrupted (finished runs are kept; continue with
``--resume``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from proxyano_plugin.bench.records import ResultsError
from proxyano_plugin.bench.runner import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_suite
from proxyano_plugin.bench.spec import SuiteError
from proxyano_plugin.bench.suite import read_suite, resolved_config, shipped_suites
from proxyano_plugin.bench.validation import validate_suite

DEFAULT_RESULTS = Path("benchmarks") / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyano-bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a suite (models x datasets x seeds), one record per run")
    run.add_argument("suite", help=f"a suite YAML file, or a shipped suite: {', '.join(shipped_suites())}")
    run.add_argument("--output", type=Path, help=f"results directory (default: {DEFAULT_RESULTS}/<suite name>)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip runs recorded as ok, continue unfinished ones from their checkpoint, append the rest",
    )
    run.add_argument(
        "--only",
        metavar="PATTERN",
        action="append",
        help="glob on run names model/dataset/seedN, or a run id; repeat to select the union",
    )
    run.add_argument("--dry-run", action="store_true", help="validate and list the runs, train nothing")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite value, e.g. --set max_epochs=1 --set datasets.BraTS.folder.root=/data/brats",
    )
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the suite as it would run (--set and environment variables applied), validated, and exit",
    )

    report = commands.add_parser("report", help="write report.md, summary.csv and plots from DIR/records.jsonl")
    report.add_argument("directory", type=Path)

    curves = commands.add_parser("curves", help="plot the training curves (losses, validation scores) of runs")
    curves.add_argument("directory", type=Path)
    curves.add_argument("--only", metavar="PATTERN", action="append", help="glob on run names, or a run id")
    curves.add_argument(
        "--metric", action="append", help="a logged value to plot, e.g. val_image_auroc (default: all of them)"
    )
    curves.add_argument("--output", type=Path, help="PNG to write (default: DIR/curves.png)")

    commands.add_parser("list", help="list the shipped suites")
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    # A plain ``kill`` ends the suite like Ctrl-C: runs in flight are stopped, the session is logged.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.command == "list":
            for name in shipped_suites():
                print(name)
            return EXIT_OK
        if args.command == "report":
            return _report(args.directory)
        if args.command == "curves":
            return _curves(args.directory, args.only, args.metric, args.output or args.directory / "curves.png")
        raw = read_suite(args.suite, args.overrides)
        suite = validate_suite(raw)
        if args.print_config:
            print(resolved_config(raw), end="")
            return EXIT_OK
        output = args.output or DEFAULT_RESULTS / suite.name
        code = run_suite(
            suite,
            output,
            resume=args.resume,
            only=args.only,
            dry_run=args.dry_run,
            startup_s=time.perf_counter() - started,
            log=_progress,
        )
        if not args.dry_run and not args.no_report and (output / "records.jsonl").exists():
            # The suite's subsets and no-model scores as it is now: ones added since the runs are reported too.
            datasets = {run.dataset.name: run.dataset for run in suite.runs if not run.dataset.skip_reason}
            subsets = {name: dataset.subsets for name, dataset in datasets.items()}
            shortcuts = {name: dataset.shortcuts for name, dataset in datasets.items() if dataset.shortcuts}
            _report(output, subsets, shortcuts)
        return code
    except (SuiteError, ResultsError) as error:
        print(f"proxyano-bench: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("proxyano-bench: interrupted; finished runs are recorded, continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _report(
    directory: Path,
    subsets: dict[str, list[dict[str, str]]] | None = None,
    shortcuts: dict[str, str] | None = None,
) -> int:
    from proxyano_plugin.bench.records import RECORDS_NAME, check_writable, write_failed
    from proxyano_plugin.bench.report import write_report

    if (directory / RECORDS_NAME).is_file():  # else write_report says there is nothing to report
        fix = f"make it writable, or report on a writable copy (cp -r {directory} /tmp/report)"
        check_writable(directory, fix)
    try:
        paths = write_report(directory, subsets, shortcuts, warn=_warn)
    except OSError as error:
        target = Path(error.filename) if error.filename else directory / "report.md"
        raise write_failed(target, error, f"run proxyano-bench report {directory}") from None
    for path in paths:
        print(f"wrote {path}")
    return EXIT_OK


def _curves(directory: Path, only: list[str] | None, metrics: list[str] | None, output: Path) -> int:
    from proxyano_plugin.bench.curves import FIXED_COLUMNS, curve_files, plot_curves, read_curve
    from proxyano_plugin.bench.runner import run_matches

    found = curve_files(directory)
    found = [c for c in found if not only or any(run_matches(c.name, c.run_id, p) for p in only)]
    curves = [(c.label, read_curve(c.path)) for c in found]
    if not curves:
        print(f"proxyano-bench: error: no run in {directory} has a training curve", file=sys.stderr)
        return EXIT_USAGE
    available = sorted({key for _, rows in curves for row in rows for key in row} - set(FIXED_COLUMNS))
    if not available:
        print(f"proxyano-bench: error: the runs' curves in {directory} hold no logged values", file=sys.stderr)
        return EXIT_USAGE
    unknown = sorted(set(metrics or ()) - set(available))
    if unknown:
        have = ", ".join(available)
        print(f"proxyano-bench: error: not in these curves: {', '.join(unknown)}; they have {have}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {plot_curves(curves, metrics or available, output)} ({len(curves)} runs)")
    return EXIT_OK


def _warn(message: str) -> None:
    print(f"proxyano-bench: warning: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
