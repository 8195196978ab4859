"""What differs per task: loss, metrics, batch layout."""
