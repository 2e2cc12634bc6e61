"""LUNA: shared core (settings, database, migrations, embedded Postgres, CLI, benchmarks)."""

from pathlib import Path

__version__ = "0.1.0"

# The project root holds migrations/, functions/, sql/, seed/ and supabase/shim/.
ROOT = Path(__file__).resolve().parent.parent
