from . import LEADS  # noqa
