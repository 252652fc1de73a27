"""The Lambda layer recipe of the planner and commit functions (see build.py)."""
