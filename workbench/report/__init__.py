"""What a run shows: metrics, the report and its pictures."""
