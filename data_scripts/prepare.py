"""Prepare titles once for fast random snippets: video at the snippet rate and training size with a keyframe
at every snippet start, audio as a memory-mapped log-mel spectrogram (see `avss.prepare.prepare`).

    # a catalog CSV (from `avss catalog` / data_scripts/catalog.py, avss.synth, or your own)
    avss prepare --catalog media/catalog.csv --out data/prepared
    python data_scripts/prepare.py --catalog media/catalog.csv --out data/prepared     # the same
    # or probe a folder of media first (titles are movies in their own group unless --meta says otherwise)
    avss prepare --media /films --meta meta.csv --out data/prepared
    # thousands of titles over 4 machines sharing data/prepared, then join the shards
    avss prepare --catalog c.csv --out data/prepared --shard 0 --num-shards 4   # ... 1, 2, 3
    avss prepare --out data/prepared --merge
    # before a long job: check every prepared title's files (present, not empty, log-mel finite and of its shape)
    avss prepare --out data/prepared --verify

Resumable: run the same command again after an interruption and finished titles are skipped. Writes
`OUT/catalog.csv` (the prepared titles, for training) and `OUT/rejected.csv` (every title left out, with the
reason); with shards, `OUT/catalog-shardIII-of-NNN.csv` and the like until `--merge`. A full disk or a permission
error stops the pass with the path and the reason and records nothing against the title: run it again once fixed.

This script is `avss prepare` (its options are defined in `avss.cli`, nbs/16_cli.ipynb): `--help` lists them, and
`python data_scripts/prepare.py ARGS` takes the same arguments as `avss prepare ARGS`.
"""
import sys

from avss.cli import main as avss


def main(argv=None) -> int:
    "`avss prepare` with `argv` (default: this script's arguments); returns the exit status."
    return avss(['prepare', *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    sys.exit(main())
