"""Serving the trained bundles through MONAI Label: ``python -m medkd_ext.label serve --port PORT``.

* :mod:`medkd_ext.label.bundles`: a trained bundle as a served model (task type from its metadata, network loaded
  strictly once, one image through its own ``inference.json``); no MONAI Label import.
* :mod:`medkd_ext.label.environment`: MONAI Label's own virtual environment, created on first use.
* :mod:`medkd_ext.label.app`: the MONAI Label app (imported by the server, in that environment).
"""
