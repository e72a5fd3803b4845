"""One module per account type; importing a module registers its type.

``load_all`` imports every module in this package, so adding a type is adding
a module here.
"""

import importlib
import pkgutil


def load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
