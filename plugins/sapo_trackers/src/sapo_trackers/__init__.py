"""sapo runs in experiment trackers (`run.report_to`): see docs/trackers.md."""
