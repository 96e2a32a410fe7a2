"""Batch ranking evaluation: finished CTR runs scored on one day, compared with a bootstrap, reported as JSON and HTML."""
