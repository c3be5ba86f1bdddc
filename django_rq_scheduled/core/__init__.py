"""The scheduler core: Redis and RQ, never the ORM; it reads Django settings only through ``_django``.

Read top-down: ``scheduler`` (the rq-scheduler-compatible API) hands work to ``jobs`` and ``queues`` (building
job hashes, finding queues), ``mover`` (batches of due jobs, applied by ``scripts``) which asks ``moves`` (pure
planning) what each due entry needs, ``lease`` and ``instances`` (leadership and the registry) and ``loop`` (the
ticks of ``run()``). Below them: ``keys``, ``scores``, ``limits``, ``clock``, ``cron``, ``payloads``, ``allowlist``,
``retries`` (RQ's retry fields, and moving due retries back). On the worker's side: ``capture`` (outcomes) and
``fire_time`` (``current_fire_time()``).
"""
