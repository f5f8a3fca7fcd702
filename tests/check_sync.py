"""Check that the notebooks are the source of the package and are clean.

1. `nbdev_export` on a copy of the repository must leave `avss/` byte for byte as committed.
2. `nbdev_clean` on a copy must leave every notebook in `nbs/` unchanged.

Works on a copy so that a failing check changes nothing in the working tree. Exit status 1 names the
files that differ and the command that fixes them.
"""
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _copy(dst: Path):
    shutil.copy(ROOT/'settings.ini', dst/'settings.ini')
    ignore = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints')
    shutil.copytree(ROOT/'nbs', dst/'nbs', ignore=ignore)
    shutil.copytree(ROOT/'avss', dst/'avss', ignore=ignore)


def _files(d: Path, pattern: str):
    return {p.relative_to(d) for p in d.rglob(pattern) if '.ipynb_checkpoints' not in p.parts}


def _diff(a: Path, b: Path, pattern: str):
    fa, fb = _files(a, pattern), _files(b, pattern)
    changed = [p for p in sorted(fa & fb) if not filecmp.cmp(a/p, b/p, shallow=False)]
    return sorted(map(str, fa ^ fb)) + list(map(str, changed))


def _run(cmd, cwd):
    r = subprocess.run([str(BIN/cmd)], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f'{cmd} failed:\n{r.stdout}\n{r.stderr}')


def main():
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _copy(tmp)
        _run('nbdev_export', tmp)
        stale = _diff(ROOT/'avss', tmp/'avss', '*.py')
        if stale:
            problems.append('avss/ is out of sync with nbs/ (the package is generated from the notebooks).\n'
                            '  Run `nbdev_export` (.venv/bin/nbdev_export, or `make export`) and commit nbs/ and avss/ together.\n'
                            '  Differs: ' + ', '.join(f'avss/{p}' for p in stale))
        _run('nbdev_clean', tmp)
        dirty = _diff(ROOT/'nbs', tmp/'nbs', '*.ipynb')
        if dirty:
            problems.append('notebooks are not clean (metadata or execution counts left in).\n'
                            '  Run `nbdev_clean` (.venv/bin/nbdev_clean, or `make clean-nbs`) and commit the result.\n'
                            '  Differs: ' + ', '.join(f'nbs/{p}' for p in dirty))
    if problems:
        print('\n\n'.join(problems), file=sys.stderr)
        sys.exit(1)
    print('nbs/ and avss/ are in sync; notebooks are clean')


if __name__ == '__main__':
    main()
