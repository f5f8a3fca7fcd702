"""The repository's own contracts: notebooks are the source of avss/, and the pins agree with the ranges."""
import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _settings():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']


def _pins() -> dict:
    "{name: (pinned version, environment marker or None)} from requirements.txt."
    pins = {}
    for line in (ROOT/'requirements.txt').read_text().splitlines():
        line = line.split('#')[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == '==', f'requirements.txt: {line} is not an exact pin'
            pins[req.name.lower()] = spec.version, req.marker
    return pins


def _requirements(field: str) -> list:
    "A settings.ini requirements field as setup.py reads it: split as a shell would, so a marker can be quoted."
    return [Requirement(spec) for spec in shlex.split(_settings()[field])]


def test_settings_keep_papermill_tags_and_declare_test_flags():
    cfg = _settings()
    assert cfg['allowed_cell_metadata_keys'].split() == ['tags']
    assert {'slow', 'gpu'} <= set(cfg['tst_flags'].split())


def test_every_declared_requirement_is_pinned_within_its_range():
    pins = _pins()
    for req in _requirements('requirements') + _requirements('dev_requirements'):
        assert req.name.lower() in pins, f'{req.name} is declared in settings.ini but not pinned in requirements.txt'
        version, marker = pins[req.name.lower()]
        assert req.specifier.contains(version), \
            f'requirements.txt pins {req.name}=={version}, outside settings.ini range {req.specifier}'
        assert str(req.marker) == str(marker), f'{req.name}: installed where "{marker}" (requirements.txt), ' \
                                               f'declared where "{req.marker}" (settings.ini)'


def test_decord_only_where_it_has_wheels():
    "decord 0.6.0's wheels: Linux x86_64, Windows AMD64, and macOS x86_64 for Python 3.6-3.8 only; PyAV elsewhere."
    (decord,) = [r for r in _requirements('requirements') if r.name == 'decord']
    wheels = {('linux', 'x86_64'): True, ('win32', 'AMD64'): True, ('linux', 'aarch64'): False,
              ('darwin', 'arm64'): False, ('darwin', 'x86_64'): False}
    for (platform, machine), has in wheels.items():
        assert decord.marker.evaluate({'sys_platform': platform, 'platform_machine': machine}) == has, (platform, machine)


def test_setup_py_declares_the_settings_requirements(tmp_path):
    "What setuptools makes of setup.py: settings.ini's requirements, each with its marker."
    r = subprocess.run([sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    declared, section = {'': []}, ''
    for line in (tmp_path/'avss.egg-info'/'requires.txt').read_text().splitlines():
        if line.startswith('['): section = line[1:-1]; declared.setdefault(section, [])   # [extra], [:marker]
        elif line: declared[section].append(line)
    runtime = [str(Requirement(f'{spec}; {section[1:]}' if section.startswith(':') else spec))
               for section, specs in declared.items() if section == '' or section.startswith(':') for spec in specs]
    assert sorted(runtime) == sorted(map(str, _requirements('requirements')))
    assert sorted(declared['dev']) == sorted(str(r) for r in _requirements('dev_requirements'))


def test_environment_yml_installs_the_pins():
    text = (ROOT/'environment.yml').read_text()
    assert re.search(r'python=3\.11', text)
    assert '-r requirements.txt' in text


def _copy_repo(dst: Path):
    shutil.copy(ROOT/'settings.ini', dst)
    (dst/'tests').mkdir()
    shutil.copy(ROOT/'tests'/'check_sync.py', dst/'tests')
    ignore = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints')
    shutil.copytree(ROOT/'nbs', dst/'nbs', ignore=ignore)
    shutil.copytree(ROOT/'avss', dst/'avss', ignore=ignore)


def _check(dst: Path):
    return subprocess.run([sys.executable, str(dst/'tests'/'check_sync.py')], capture_output=True, text=True)


def test_sync_check_passes_on_the_repository():
    r = subprocess.run([sys.executable, str(ROOT/'tests'/'check_sync.py')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_editing_a_notebook_without_exporting_fails_with_advice(tmp_path):
    _copy_repo(tmp_path)
    assert _check(tmp_path).returncode == 0
    nb_path = tmp_path/'nbs'/'00_core.ipynb'
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb['cells'] if c['cell_type'] == 'code' and ''.join(c['source']).startswith('#| export'))
    cell['source'] = cell['source'] + ['\n', 'def added_in_notebook_only(): return 1\n']
    nb_path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + '\n')
    r = _check(tmp_path)
    assert r.returncode == 1
    assert 'nbdev_export' in r.stderr and 'avss/core.py' in r.stderr
    assert 'added_in_notebook_only' not in (tmp_path/'avss'/'core.py').read_text()  # the check changed nothing


def test_unclean_notebook_fails_with_advice(tmp_path):
    _copy_repo(tmp_path)
    nb_path = tmp_path/'nbs'/'00_core.ipynb'
    nb = json.loads(nb_path.read_text())
    next(c for c in nb['cells'] if c['cell_type'] == 'code')['execution_count'] = 7
    nb_path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + '\n')
    r = _check(tmp_path)
    assert r.returncode == 1 and 'nbdev_clean' in r.stderr and 'nbs/00_core.ipynb' in r.stderr


def test_readme_lists_every_parameter_of_every_run_config():
    "The README's parameter tables are what the config classes declare (python -m avss.config README.md rewrites them)."
    from avss.config import RUN_CONFIGS, config_class, parameters_markdown, readme_parameters
    readme = (ROOT/'README.md').read_text()
    for where in RUN_CONFIGS.values():
        cls = config_class(where)
        table = readme_parameters(readme, cls)
        assert table is not None, f'README.md has no parameter table of {cls.__name__}'
        listed = [row.split('`')[1] for row in table.splitlines()[2:]]
        missing = [name for name in cls.spec() if name not in listed]
        assert not missing, f'README.md lacks {cls.__name__} parameters {missing}: run python -m avss.config README.md'
        assert table == parameters_markdown(cls), f'README.md: the {cls.__name__} table is stale: run python -m avss.config README.md'
