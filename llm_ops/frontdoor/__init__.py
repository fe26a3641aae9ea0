"""Traefik, the HTTPS front door: its configuration and its certificate."""
