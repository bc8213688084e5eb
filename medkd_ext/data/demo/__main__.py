"""``python -m medkd_ext.data.demo``: see :mod:`medkd_ext.data.demo.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
