"""Importing this module leaves a mark: a test checks that a refused path never gets imported."""

from __future__ import annotations

import os

os.environ['DRQS_TEST_IMPORTED_SIDE_EFFECT'] = '1'


def run() -> None:
    pass
