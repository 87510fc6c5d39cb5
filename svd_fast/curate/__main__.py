"""python -m svd_fast.curate INPUT_DIR --out OUT_DIR [--address RAY] [--limit N] [--config F] ..."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from .config import STAGES, CurateConfig, load_config_file, parse_assignment, update_config

EPILOG = """examples:
  python -m svd_fast.curate videos/ --out curated/ --set clip.model_path=models/clip-vit-l-14
  python -m svd_fast.curate videos/ --out curated/ --disable clip --limit 10
  python -m svd_fast.curate videos/ --out curated/ --config curate.toml --set filters.max_text_area=0.05
An interrupted run started again with the same arguments resumes where it stopped."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m svd_fast.curate", epilog=EPILOG,
                                     description="Curate a folder of videos into scored, filtered clips "
                                                 "(the SVD paper's LVD pipeline) on Ray Data.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", help="folder of source videos (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder: manifest.parquet, errors.parquet, shards/, summary")
    parser.add_argument("--address", default=None, help="address of a running Ray cluster (default: start one locally)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sources (sorted by path)")
    parser.add_argument("--config", default=None, help="JSON or TOML file of settings ({section: {field: value}})")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one setting, e.g. filters.motion_drop_lowest=0.3 (repeatable)")
    parser.add_argument("--disable", action="append", default=[], choices=STAGES,
                        help="switch a stage off (repeatable)")
    parser.add_argument("--no-ray", action="store_true", help="run every stage in this process, without Ray")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> CurateConfig:
    config = CurateConfig()
    if args.config:
        update_config(config, load_config_file(args.config), args.config)
    for assignment in args.set:
        update_config(config, parse_assignment(assignment), f"--set {assignment}")
    for stage in args.disable:
        getattr(config, stage).enabled = False
    if args.address:
        config.ray.address = args.address
    return config


def check_output_dir(out_dir: str) -> None:
    """Fail early, naming the folder, when the output cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"--out {out_dir} is not writable: {error.strerror or error}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        if not os.path.isdir(args.input_dir):
            raise ValueError(f"INPUT_DIR {args.input_dir} does not exist or is not a folder")
        check_output_dir(args.out)
        config = build_config(args)
        config.validate()
        from .pipeline import run

        run(args.input_dir, args.out, config, limit=args.limit, use_ray=not args.no_ray)
    except ValueError as error:
        print(f"svd_fast.curate: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
