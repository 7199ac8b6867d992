"""``python -m bce_audit``: the same as the ``bce-audit`` command."""

from bce_audit.cli import main

if __name__ == "__main__":
    main()
