"""Sources of the Python-backend models; :mod:`serving.export` copies each into ``<model>/1/model.py``.

The encoder's files are self-contained (numpy, torch, open_clip; no import
of this project) so that a production Triton container runs them with only
those packages installed; ``ranker.py`` imports the project (it serves a CTR
run through ``serving.ranker``), so its container needs mmctr installed. Every name and size it needs comes from its own
``config.pbtxt``, which :mod:`serving.export` generates from
:mod:`serving.constants`.
"""
