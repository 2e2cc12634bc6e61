"""One adapter per external service, each over worker.adapters.base.HttpAdapter."""
