"""Built-in handlers. Each module registers its handler; importing a framework happens lazily."""

from neve.models.frameworks import sklearn  # noqa: F401
