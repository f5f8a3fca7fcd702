"""Probe media files into a catalog CSV (the columns of `avss.catalog.COLUMNS`), and say which titles are usable.

    python data_scripts/catalog.py /films /shows --meta meta.csv --out /films/catalog.csv

Folders are searched recursively; a title's id is its path below the folder without the extension. `--meta` is a
CSV with a `path` (full path or file name) or `title_id` column and any of `group_id` (the show of an episode),
`kind` (movie or episode), `genre`; titles it does not name are movies in their own group. Files that cannot be
read are listed next to the catalog in `<name>_unreadable.csv`.
"""
import argparse
import sys
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('media', type=Path, nargs='+', help='media files or folders')
    ap.add_argument('--meta', type=Path, help='per-title group_id, kind, genre')
    ap.add_argument('--out', type=Path, required=True, help='catalog CSV to write')
    ap.add_argument('--frames', type=int, default=16, help='frames per snippet (for the usability report)')
    ap.add_argument('--fps', type=float, default=5.0, help='snippet frame rate (for the usability report)')
    ap.add_argument('--no-check-end', action='store_true', help='skip decoding each file near its end (faster, '
                    'but a truncated file is found only when it is prepared)')
    args = ap.parse_args(argv)

    import pandas as pd
    from avss.catalog import Catalog
    meta = pd.read_csv(args.meta, dtype=str, keep_default_na=False) if args.meta else None
    cat = Catalog.from_media(args.media, meta=meta, check_end=not args.no_check_end)
    cat.write(args.out)
    print(f'{cat} → {args.out}')
    if len(cat.rejected):
        bad = args.out.with_name(args.out.stem + '_unreadable.csv')
        cat.rejected.to_csv(bad, index=False)
        print(f'{len(cat.rejected)} files could not be read → {bad}')
    usable, report = cat.usable(args.frames, args.fps)
    print(f'{len(usable)} titles usable for training; {len(report)} left out')
    if len(report): print(report[['title_id', 'reason']].to_string(index=False))
    return 0 if len(cat) else 1


if __name__ == '__main__':
    sys.exit(main())
