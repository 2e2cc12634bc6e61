"""The channel layer's shared core (edge and the worker both use it; it imports neither).

- http.py: HttpAdapter, the base of every provider adapter (retries, Retry-After, JSON checks, breaker);
- graph.py: the one Meta Graph API adapter (WhatsApp, Messenger / Instagram, Marketing, Conversions,
  Lead Ads; the Graph version in one place);
- twilio.py, telegram.py: pure parsers of those providers' webhooks (signature, payload -> the inbox's
  normalised event).

How a channel plugs in (webhook -> raw event stored -> parse -> send step): docs/HACKING.md, "Channels".
"""
