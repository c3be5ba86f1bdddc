"""Hostile tests, one module per entry point, kept growing: every new way in gets its attacker's and its clumsy
user's tests here before it is called done.

- test_api.py: callers of the ``Scheduler`` API and producers writing into Redis (allow-list, payloads);
- test_model_input.py: hostile values through every way a row is written (ORM, bulk paths, fixtures, admin forms);
- test_sync.py: rows racing the loop, and rows and run records changed behind the models' back;
- test_admin_actions.py: the admin's actions;
- test_status_page.py: foreign Redis data and hostile POSTs on the status page;
- test_loop.py: the loop reading a hostile Redis (foreign members and hashes, deleted keys, out of memory);
- test_redis_errors.py: every class of Redis error at every entry point.
"""
