"""The long fuzz run behind `make fuzz` (see run.py)."""
