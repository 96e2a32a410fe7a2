"""Sources of the Python-backend models; :mod:`serving.export` copies each into ``<model>/1/model.py``.

Each file is self-contained (numpy, torch, open_clip; no import of this
project) so that a production Triton container runs it with only those
packages installed. Every name and size it needs comes from its own
``config.pbtxt``, which :mod:`serving.export` generates from
:mod:`serving.constants`.
"""
