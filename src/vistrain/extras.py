"""How to install an optional extra, said the same way by every message that needs one.

vistrain installs from its own folder (``./scripts/setup.sh``, or ``pip install .``), not from PyPI,
so ``pip install 'vistrain[x]'`` would find nothing to install.
"""

EXTRA_HINT = "pip install -e '.[{}]' in vistrain's folder (./scripts/setup.sh installs every extra)"
