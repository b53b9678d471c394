"""The Optuna study: storage URLs, read-only opening, opening/creating, leases of several drivers and
the schema of everything the search stores in it."""
