"""Integrations with other training frameworks, each behind its own extra (``gainx.integrations.lightning``:
``pip install "gainx[lightning]"``)."""
