"""Packaging for avss. Everything is read from settings.ini (nbdev's single source of metadata)."""
import shlex
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent / 'settings.ini')
cfg = cfg['DEFAULT']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=(Path(__file__).parent / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=cfg['license'],
    url=cfg['git_url'],
    python_requires='>=' + cfg['min_python'],
    packages=setuptools.find_packages(include=['avss', 'avss.*']),
    include_package_data=True,
    install_requires=shlex.split(cfg.get('requirements', '')),          # quoted where an environment marker has spaces
    extras_require={'dev': shlex.split(cfg.get('dev_requirements', ''))},
    entry_points={'console_scripts': cfg.get('console_scripts', '').split()},
    zip_safe=False,
)
