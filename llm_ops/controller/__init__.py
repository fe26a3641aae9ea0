"""The controller: which workers serve which models, kept current by their heartbeats."""
