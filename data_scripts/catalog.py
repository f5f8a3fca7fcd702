"""Probe media files into a catalog CSV (the columns of `avss.catalog.COLUMNS`), and say which titles are usable.

    avss catalog /films /shows --meta meta.csv --out /films/catalog.csv
    python data_scripts/catalog.py /films /shows --meta meta.csv --out /films/catalog.csv     # the same

Folders are searched recursively; a title's id is its path below the folder without the extension. `--meta` is a
CSV with a `path` (full path or file name) or `title_id` column and any of `group_id` (the show of an episode),
`kind` (movie or episode), `genre`; titles it does not name are movies in their own group. Files that cannot be
read are listed next to the catalog in `<name>_unreadable.csv`.

This script is `avss catalog` (its options are defined in `avss.cli`, nbs/16_cli.ipynb): `--help` lists them.
"""
import sys

from avss.cli import main as avss


def main(argv=None) -> int:
    "`avss catalog` with `argv` (default: this script's arguments); returns the exit status."
    return avss(['catalog', *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    sys.exit(main())
