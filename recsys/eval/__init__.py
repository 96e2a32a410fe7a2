"""Batch ranking evaluation: finished CTR runs scored on one day, compared with a bootstrap, reported as JSON and HTML."""

# The evaluation's default number of bootstrap resamples of users (here, not in bootstrap.py,
# so that light modules such as the pipeline's config name it without importing torch).
RESAMPLES = 1000
