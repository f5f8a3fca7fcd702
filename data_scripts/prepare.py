"""Prepare titles once for fast random snippets: video at the snippet rate and training size with a keyframe
at every snippet start, audio as a memory-mapped log-mel spectrogram (see `avss.segment.prepare`).

    # a catalog CSV (from data_scripts/catalog.py, avss.synth, or your own)
    python data_scripts/prepare.py --catalog media/catalog.csv --out data/prepared
    # or probe a folder of media first (titles are movies in their own group unless --meta says otherwise)
    python data_scripts/prepare.py --media /films --meta meta.csv --out data/prepared
    # thousands of titles over 4 machines sharing data/prepared, then join the shards
    python data_scripts/prepare.py --catalog c.csv --out data/prepared --shard 0 --num-shards 4   # ... 1, 2, 3
    python data_scripts/prepare.py --out data/prepared --merge

Resumable: run the same command again after an interruption and finished titles are skipped. Writes
`OUT/catalog.csv` (the prepared titles, for training) and `OUT/rejected.csv` (every title left out, with the
reason); with shards, `OUT/catalog-shardIII-of-NNN.csv` and the like until `--merge`.
"""
import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument('--catalog', type=Path, help='catalog CSV of the source titles')
    src.add_argument('--media', type=Path, nargs='+', help='media files or folders to probe into a catalog first')
    ap.add_argument('--meta', type=Path, help='with --media: CSV with a path or title_id column and group_id, kind, genre')
    ap.add_argument('--out', type=Path, required=True, help='output folder (shared by all shards)')
    ap.add_argument('--short-side', type=int, default=190, help='shorter side of the prepared video (paper: 190; tiny: 76)')
    ap.add_argument('--frames', type=int, default=16, help='frames per snippet (keyframe interval)')
    ap.add_argument('--fps', type=float, default=5.0, help='snippet frame rate')
    ap.add_argument('--workers', type=int, default=None, help='processes (default: one per CPU core)')
    ap.add_argument('--shard', type=int, default=0)
    ap.add_argument('--num-shards', type=int, default=1)
    ap.add_argument('--crf', type=int, default=23, help='x264 quality (lower is better and larger; 26 makes files about 20%% smaller '
                    'and snippets about 19%% faster to read, see docs/benchmarks.md)')
    ap.add_argument('--preset', default='veryfast', help='x264 preset')
    ap.add_argument('--retry-rejected', action='store_true', help='try again titles rejected by an earlier run')
    ap.add_argument('--merge', action='store_true', help='only join the prepared titles of every shard under --out')
    ap.add_argument('--no-progress', action='store_true')
    args = ap.parse_args(argv)
    if not (args.merge or args.catalog or args.media): ap.error('give --catalog or --media (or --merge)')
    if args.meta and not args.media: ap.error('--meta goes with --media')
    return args


def source_catalog(args):
    import pandas as pd
    from avss.catalog import Catalog
    if args.catalog: return Catalog.read(args.catalog)
    meta = pd.read_csv(args.meta, dtype=str, keep_default_na=False) if args.meta else None
    cat = Catalog.from_media(args.media, meta=meta, progress=not args.no_progress)
    cat.write(args.out/'source_catalog.csv')
    if len(cat.rejected):
        cat.rejected.to_csv(args.out/'probe_rejected.csv', index=False)
        print(f'{len(cat.rejected)} files could not be read: {args.out/"probe_rejected.csv"}')
    return cat


def summary(prepared, report, out: Path) -> str:
    lines = [f'prepared {len(prepared)} titles ({prepared.df["duration_s"].sum() / 3600:.2f} h) under {out}']
    if len(report):
        reasons = report['reason'].str.split(':').str[0].str.split(';').str[0].value_counts()
        lines.append(f'rejected {len(report)}: ' + ', '.join(f'{k} ({v})' for k, v in reasons.items()))
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    from avss.segment import merge_prepared, prepare
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        prepared, report = merge_prepared(args.out)
    else:
        prepared, report = prepare(source_catalog(args), args.out, short_side=args.short_side, frames=args.frames,
                                   fps=args.fps, workers=args.workers, shard=args.shard, num_shards=args.num_shards,
                                   crf=args.crf, preset=args.preset, retry_rejected=args.retry_rejected,
                                   progress=not args.no_progress)
    print(summary(prepared, report, args.out))
    return 0 if len(prepared) else 1


if __name__ == '__main__':
    sys.exit(main())
