"""LUNA worker: claims work from Postgres, calls AI and external APIs, runs scheduled jobs."""
