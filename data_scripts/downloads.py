#!/usr/bin/env python
"""Download, extract and verify the downstream data sets (UCF101, HMDB51, ESC-50) from their official sources.

  python data_scripts/downloads.py download ucf101 /data/ucf101     # fetch (resumable), checksum, extract
  python data_scripts/downloads.py download hmdb51 /data/hmdb51
  python data_scripts/downloads.py download esc50 /data/esc50
  python data_scripts/downloads.py verify ucf101 /data/ucf101       # classes, counts per class, split files, listed files
  python data_scripts/downloads.py verify esc50 /data/esc50/ESC-50-master --any-size   # a subset: skip the official counts

Downloads resume where they stopped (HTTP Range requests on DEST/<file>.part); run the same command again after an
interruption. Checksums: the sources publish none that this script could hold, and ESC-50's archive is GitHub's
snapshot of its master branch, which changes with the repository. So the first download of a file defines its SHA-256: it is
printed and recorded in DEST/checksums.json, and every later download or `verify --checksums` into that folder is
compared with it. A sha256 written into SOURCES below is checked on every download.

RAR archives (UCF101, HMDB51) need an external tool: unrar, 7z (p7zip), bsdtar (libarchive) or unar.
The `root` to pass to the downstream notebook is printed at the end (ESC-50: DEST/ESC-50-master).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

try:
    import avss  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avss.downstream_data import HMDB_SPLITS, esc50_split, hmdb51_split, resolve_case, ucf101_split


@dataclass(frozen=True)
class Source:
    name: str                 # file name under DEST
    url: str
    sha256: str | None = None  # None: not published; the first download defines it (DEST/checksums.json)


SOURCES = {
    'ucf101': [Source('UCF101.rar', 'https://www.crcv.ucf.edu/data/UCF101/UCF101.rar'),
               Source('UCF101TrainTestSplits-RecognitionTask.zip',
                      'https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip')],
    'hmdb51': [Source('hmdb51_org.rar', 'https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar'),
               Source('test_train_splits.rar', 'https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar')],
    'esc50': [Source('ESC-50-master.zip', 'https://github.com/karolpiczak/ESC-50/archive/master.zip')],
}

# The official sizes: videos (clips), classes, and (train, test) files of each split / fold.
OFFICIAL = {
    'ucf101': dict(files=13320, classes=101, splits={1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}),
    'hmdb51': dict(files=6766, classes=51, splits={s: (3570, 1530) for s in (1, 2, 3)}),
    'esc50': dict(files=2000, classes=50, splits={f: (1600, 400) for f in range(1, 6)}),
}


# ============ downloading ============

def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk): h.update(block)
    return h.hexdigest()


def _fetch(url: str, part: Path, chunk: int, timeout: float, progress: bool) -> None:
    "Append the rest of `url` to `part` (a Range request from its size); start over when the server ignores the range."
    pos = part.stat().st_size if part.exists() else 0
    headers = {'User-Agent': 'avss-downloads/1.0'} | ({'Range': f'bytes={pos}-'} if pos else {})
    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        total = e.headers.get('Content-Range', '').rpartition('/')[2]
        if e.code == 416 and pos and total.isdigit() and int(total) == pos: return   # the part is already whole
        if e.code == 416: part.unlink(missing_ok=True)                               # a stale part: start over next try
        raise
    with resp:
        if pos and resp.status == 206 and resp.headers.get('Content-Range', '').startswith(f'bytes {pos}-'):
            mode = 'ab'
        else:
            mode, pos = 'wb', 0
        length = resp.headers.get('Content-Length')
        total = pos + int(length) if length and length.isdigit() else None
        with open(part, mode) as f, _bar(total, pos, part.name, progress) as bar:
            while block := resp.read(chunk):
                f.write(block); bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f'{part.name}: got {part.stat().st_size} of {total} bytes')


def _bar(total, initial, desc, progress):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit='B', unit_scale=True, desc=desc, disable=not progress)


def download(url: str, dest, sha256: str | None = None, retries: int = 5, chunk: int = 1 << 20, timeout: float = 60,
             progress: bool = True, wait: float = 2.0) -> str:
    "Download `url` to `dest` through `dest`.part, resuming it (HTTP Range) after a failure; returns the file's sha256."
    dest = Path(dest)
    part = dest.with_name(dest.name + '.part')
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, chunk, timeout, progress)
                break
            except (OSError, HTTPException) as e:                    # URLError, HTTPError, timeouts, cut connections
                if isinstance(e, HTTPError) and e.code not in (408, 416, 429) and e.code < 500: raise
                if attempt == retries:
                    raise ConnectionError(f'{url}: download failed after {retries + 1} tries ({e}); '
                                          f'run again to resume from {part} ({part.stat().st_size if part.exists() else 0} bytes)') from None
                time.sleep(wait * (attempt + 1))
        os.replace(part, dest)
    digest = sha256_file(dest)
    if sha256 and digest != sha256:
        bad = dest.with_name(dest.name + '.bad')
        os.replace(dest, bad)
        raise ValueError(f'{dest.name}: sha256 {digest} differs from the expected {sha256}; the file is kept as {bad}')
    return digest


def record_checksum(dest_dir, name: str, digest: str) -> str:
    "Compare `digest` with DEST/checksums.json, or record it there when the file is new; returns a one-line note."
    path = Path(dest_dir)/'checksums.json'
    known = json.loads(path.read_text()) if path.exists() else {}
    if name in known:
        if known[name] != digest:
            raise ValueError(f'{name}: sha256 {digest} differs from {known[name]} recorded in {path} at its first download; '
                             'delete the file and download again, or remove the entry if the source changed on purpose')
        return f'{name}: sha256 {digest} matches {path.name}'
    known[name] = digest
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(known, indent=2, sort_keys=True) + '\n'); os.replace(tmp, path)
    return (f'{name}: sha256 {digest} (no published checksum; this first download defines it, recorded in {path})')


# ============ extracting ============

RAR_TOOLS = {'unrar': lambda f, d: ['unrar', 'x', '-o+', '-idq', str(f), f'{d}/'],
             '7z': lambda f, d: ['7z', 'x', '-y', '-bd', f'-o{d}', str(f)],
             'bsdtar': lambda f, d: ['bsdtar', '-xf', str(f), '-C', str(d)],
             'unar': lambda f, d: ['unar', '-q', '-f', '-o', str(d), str(f)]}


def extract(archive, out_dir) -> Path:
    "Extract a .zip (Python) or .rar (unrar, 7z, bsdtar or unar, whichever is installed) into `out_dir`."
    archive, out_dir = Path(archive), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if archive.suffix == '.zip':
        import zipfile
        with zipfile.ZipFile(archive) as z: z.extractall(out_dir)
        return out_dir
    tool = next((t for t in RAR_TOOLS if shutil.which(t)), None)
    if tool is None:
        raise RuntimeError(f'extracting {archive.name} needs a RAR tool, and none is installed: install unrar, 7z (p7zip), '
                           'bsdtar (libarchive) or unar, then run the same command again')
    r = subprocess.run(RAR_TOOLS[tool](archive, out_dir), capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'{tool} failed on {archive} (exit {r.returncode}): {(r.stderr or r.stdout)[-500:]}')
    return out_dir


def _extract_hmdb(dest: Path):
    inner = extract(dest/'hmdb51_org.rar', dest/'_hmdb51_rars')      # one .rar per class
    for rar in sorted(inner.rglob('*.rar')): extract(rar, dest)
    shutil.rmtree(inner)
    extract(dest/'test_train_splits.rar', dest)


def fetch(name: str, dest, progress: bool = True) -> Path:
    "Download (resumable), checksum and extract data set `name` into `dest`; returns the root for the readers."
    dest = Path(dest)
    for s in SOURCES[name]:
        digest = download(s.url, dest/s.name, s.sha256, progress=progress)
        print(record_checksum(dest, s.name, digest))
    done = dest/f'.extracted-{name}'
    if not done.exists():
        if name == 'hmdb51': _extract_hmdb(dest)
        else:
            for s in SOURCES[name]: extract(dest/s.name, dest)
        done.write_text(time.strftime('%Y-%m-%d %H:%M:%S\n'))
    return dest/'ESC-50-master' if name == 'esc50' else dest


# ============ verifying ============

def _split_lists(name: str, root: Path):
    "(split, train, samples, classes) of every split of the set; the lists as they are, files not looked up."
    for s in OFFICIAL[name]['splits']:
        for train in (True, False):
            if name == 'ucf101': samples, classes = ucf101_split(root, s, train, check=False)
            elif name == 'hmdb51': samples, classes = hmdb51_split(root, s, train, check=False)
            else: samples, classes = esc50_split(root, s, train, check=False)
            yield s, train, samples, classes


def verify(name: str, root, official: bool = True, checksums: bool = False) -> dict:
    "Check a local copy: classes, files per class, split files present, every listed file there; returns a report with `problems`."
    root, problems, splits, missing = Path(root), [], {}, {}
    on_disk = None
    if name == 'ucf101': on_disk = sorted((root/'UCF-101').glob('*/*.avi'))
    elif name == 'hmdb51': on_disk = sorted(p for p in root.glob('*/*.avi') if p.parent.name != HMDB_SPLITS)
    else: on_disk = sorted((root/'audio').glob('*.wav'))
    try:
        lists = list(_split_lists(name, root))
    except (FileNotFoundError, ValueError) as e:
        return dict(dataset=name, root=str(root), problems=[str(e)], files=len(on_disk))
    classes = lists[0][3]
    per_class = Counter()
    for s, train, samples, _ in lists:
        splits.setdefault(s, [0, 0])[0 if train else 1] = len(samples)
        for p, label in samples:
            if resolve_case(p) is None: missing.setdefault(str(p), s)
    for p, label in {p: l for _, _, samples, _ in lists for p, l in samples}.items(): per_class[classes[label]] += 1
    if missing:
        first = next(iter(missing))
        problems.append(f'{len(missing)} listed file(s) missing, e.g. {first} (split {missing[first]})')
    empty = [c for c in classes if per_class[c] == 0]
    if empty: problems.append(f'classes with no listed file: {empty[:5]}')
    if official:
        o = OFFICIAL[name]
        if len(classes) != o['classes']: problems.append(f'{len(classes)} classes, the official set has {o["classes"]}')
        if len(on_disk) != o['files']: problems.append(f'{len(on_disk)} files on disk, the official set has {o["files"]}')
        for s, (tr, te) in o['splits'].items():
            if tuple(splits.get(s, (0, 0))) != (tr, te):
                problems.append(f'split {s}: {tuple(splits.get(s, (0, 0)))} (train, test) files listed, '
                                f'the official lists hold {(tr, te)}')
    if checksums:
        dest = root.parent if name == 'esc50' else root
        for s in SOURCES[name]:
            if (dest/s.name).exists():
                try: record_checksum(dest, s.name, sha256_file(dest/s.name))
                except ValueError as e: problems.append(str(e))
    return dict(dataset=name, root=str(root), classes=len(classes), files=len(on_disk), listed=sum(per_class.values()),
                splits={s: tuple(v) for s, v in splits.items()}, per_class=dict(per_class), missing=len(missing),
                problems=problems)


def print_report(rep: dict, verbose: bool = False):
    print(f"{rep['dataset']} at {rep['root']}: {rep.get('classes', '?')} classes, {rep['files']} files on disk")
    if 'splits' in rep:
        for s, (tr, te) in rep['splits'].items(): print(f'  split {s}: {tr} train, {te} test')
        counts = rep['per_class']
        lo, hi = min(counts, key=counts.get), max(counts, key=counts.get)
        spread = f'{counts[lo]} each' if counts[lo] == counts[hi] else f'{counts[lo]} ({lo}) to {counts[hi]} ({hi})'
        print(f'  files per class: {spread}; {rep["listed"]} listed, {rep["missing"]} missing')
        if verbose:
            for c, n in counts.items(): print(f'    {c:32s} {n}')
    for p in rep['problems']: print(f'  PROBLEM: {p}')
    print('  OK' if not rep['problems'] else f'  {len(rep["problems"])} problem(s)')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='command', required=True)
    d = sub.add_parser('download', help='download (resumable), checksum, extract, then verify')
    v = sub.add_parser('verify', help='check a local copy')
    for p in (d, v):
        p.add_argument('dataset', choices=list(SOURCES))
        p.add_argument('dest', type=Path, help='download folder (download) or the data set root (verify)')
    v.add_argument('--any-size', action='store_true', help='a subset or fixture: skip the official counts')
    v.add_argument('--checksums', action='store_true', help='also compare the archives with DEST/checksums.json')
    v.add_argument('--verbose', action='store_true', help='print the count of every class')
    args = ap.parse_args(argv)
    try:
        root = fetch(args.dataset, args.dest) if args.command == 'download' else args.dest
        rep = verify(args.dataset, root, official=not getattr(args, 'any_size', False),
                     checksums=getattr(args, 'checksums', False))
    except (RuntimeError, ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print_report(rep, getattr(args, 'verbose', False))
    if args.command == 'download': print(f'root for the downstream notebook: {root}')
    return 1 if rep['problems'] else 0


if __name__ == '__main__':
    sys.exit(main())
