"""One adapter per external service, each over luna.channels.http.HttpAdapter (the Graph API's is luna/channels/graph.py)."""
