"""LUNA edge: thin FastAPI layer. Verifies the caller, persists what came in, answers fast."""
