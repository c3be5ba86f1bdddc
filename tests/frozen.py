"""The frozen instant of the tests that plan moves on fakeredis (the ``clock`` and ``scheduler`` fixtures of
conftest.py): a minute before ``T0``, so that ``T0`` is in the near future."""

from datetime import datetime, timezone

UTC = timezone.utc
T0 = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
