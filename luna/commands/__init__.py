"""Area commands: each module here exposes register(app) to add its typer commands."""
