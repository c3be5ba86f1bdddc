#!/usr/bin/env python
"""Run the test suite with pytest; an empty run (pytest exit code 5) counts as a failure."""

import sys

import pytest

NO_TESTS_COLLECTED = 5


def main(argv: list[str]) -> int:
    code = pytest.main(argv)
    if code == NO_TESTS_COLLECTED:
        print('runtests.py: no tests were collected; failing on purpose.', file=sys.stderr)
        return 1
    return int(code)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
