"""What the admin's forms post for the scheduling policies when a user leaves them as they are."""

POLICY_DEFAULTS = {'retries': '0', 'retry_delays': '[]', 'jitter': '0', 'catchup': 'latest', 'catchup_limit': '100'}
"""A form of a kind without some of these fields ignores them, as Django does with any unknown field."""
